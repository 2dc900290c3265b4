"""`graystem demo` from a checkout; the generator lives in pipeline/demo/."""

from pipeline.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
