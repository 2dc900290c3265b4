"""`graystem compare` from a checkout; the code lives in pipeline/tools/compare.py."""

from pipeline.tools.compare import main

if __name__ == "__main__":
    raise SystemExit(main())
