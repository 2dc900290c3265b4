"""Precision / recall of the near-duplicate check per Hamming threshold, as JSON, measured on near copies made from
real images (BUSI, NIH, pydicom-data CR, demo) against distinct images of one patient and of different patients.

    OMP_NUM_THREADS=1 python scripts/near_duplicate_threshold.py [--busi DIR] [--nih DIR] [--out FILE]

The measurement lives in pipeline/tools/near_copies.py; docs/data_checks.md has the figures it printed."""

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's pipeline, not an installed one

from pipeline.config import load_config  # noqa: E402
from pipeline.demo import make_demo  # noqa: E402
from pipeline.tools.near_copies import measure, real_sources  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(__file__).resolve().parents[3] / "shared" / "data"
    p.add_argument("--busi", type=Path, default=shared / "busi")
    p.add_argument("--nih", type=Path, default=shared / "nih_cxr")
    p.add_argument("--config", default="chest_xray", help="whose data.* settings decode the images")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="near-copies-") as tmp:
        tmp = Path(tmp)
        demo = make_demo(tmp / "demo", which=("chest_xray",), n_scale=0.25)["chest_xray"]
        cfg = load_config(args.config, ["data.demo=null"])
        result = measure(cfg, real_sources(args.busi, args.nih, demo), tmp / "copies")
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
