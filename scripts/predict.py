"""`graystem predict` from a checkout; the code lives in pipeline/tools/predict.py."""

from pipeline.tools.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
