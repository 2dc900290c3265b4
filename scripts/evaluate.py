"""`graystem evaluate` from a checkout; the code lives in pipeline/tools/evaluate.py."""

from pipeline.tools.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
