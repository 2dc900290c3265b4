"""`graystem export` from a checkout; the code lives in pipeline/tools/export.py."""

from pipeline.tools.export import main

if __name__ == "__main__":
    raise SystemExit(main())
