"""`graystem index` from a checkout; the code lives in pipeline/tools/index_dicom.py."""

from pipeline.tools.index_dicom import main

if __name__ == "__main__":
    raise SystemExit(main())
