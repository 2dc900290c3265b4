"""`graystem benchmark --suite plan [--budgets 2m,4m] [--manifest CSV]`: the planner's own error. For each budget,
`train.py --config auto --budget B` on the data (default: the ultrasound demo, generated when missing) in a
temporary run folder; prints ONE JSON object with, per budget, the time asked, predicted and taken.

Minutes per budget on purpose: not run by the tests."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from pipeline.tools.plan import parse_budget


def run_suite(budgets: list[str], manifest: str | None = None, threads: int | None = None) -> dict:
    from pipeline.cli import main as train_main
    from pipeline.demo import make_demo

    extra = []
    if manifest is None:
        manifest = str(make_demo(Path("data/demo"), which=("ultrasound",))["ultrasound"])
        # the synthetic patients are renders of one template: near copies by hash (as configs/smoke.yaml says)
        extra = ["--set", "data.near_duplicates=warn"]
    out = {"manifest": manifest, "cpu_count": os.cpu_count(), "runs": []}
    for budget in budgets:
        load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
        with tempfile.TemporaryDirectory(prefix="graystem-bench-plan-") as tmp:
            run = Path(tmp) / "run"
            argv = ["--config", "auto", "--set", f"data.manifest={manifest}", "--budget", budget, "--quiet",
                    "--output-dir", str(run)]  # the whole planned run, Grad-CAM panel included
            argv += extra
            if threads:
                argv += ["--set", f"train.threads={threads}"]
            # the run's console lines (warnings of a --quiet run) to stderr: stdout carries the JSON alone
            with contextlib.redirect_stdout(sys.stderr):
                code = train_main(argv)
            record = json.loads((run / "plan.json").read_text()) if (run / "plan.json").is_file() else {}
        out["runs"].append({
            "budget": budget, "budget_s": parse_budget(budget), "exit_code": code,
            "load_average_at_start": load, "predicted_s": record.get("predicted_s"), "took_s": record.get("took_s"),
            "took_over_budget": record.get("took_over_budget"),
            "image_size": record.get("keys", {}).get("data.image_size", {}).get("value"),
            "full_epochs": (record.get("keys", {}).get("train.stages", {}).get("value") or [{}, {}])[1].get("epochs"),
            "probe": record.get("probe")})
    return out


def main_plan(budgets: str, manifest: str | None, threads: int | None) -> int:
    print(json.dumps(run_suite([b.strip() for b in budgets.split(",") if b.strip()], manifest, threads)))
    return 0
