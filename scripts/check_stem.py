"""`graystem check-stem` from a checkout; the code lives in pipeline/tools/check_stem.py."""

from pipeline.tools.check_stem import main

if __name__ == "__main__":
    raise SystemExit(main())
