"""`graystem preview` from a checkout; the code lives in pipeline/tools/preview.py."""

from pipeline.tools.preview import main

if __name__ == "__main__":
    raise SystemExit(main())
