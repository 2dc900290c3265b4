"""`graystem audit` from a checkout; the code lives in pipeline/tools/audit.py."""

from pipeline.tools.audit import main

if __name__ == "__main__":
    raise SystemExit(main())
