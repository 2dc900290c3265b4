"""`graystem benchmark` from a checkout; the code lives in pipeline/tools/benchmark.py."""

from pipeline.tools.benchmark import main

if __name__ == "__main__":
    raise SystemExit(main())
