"""`train.py --config auto [--budget 30m]`: plan a config for `data.manifest` (pipeline/tools/plan.py), train it,
and keep the plan with the run: RUN/plan.json (fingerprint, speed probe, keys and reasons) and, once the run
ends, the time it took against the budget."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.runfolder import RunFolder


@dataclass(frozen=True)
class PlannedRun:
    path: str  # the planned YAML (a temporary file; config.yaml of the run is the resolved copy)
    record: dict

    def load(self, overrides: list[str]):
        """The planned config with the command line's --set overrides; the temporary YAML goes."""
        from pipeline.config import load_config

        try:
            return load_config(self.path, overrides)
        finally:
            Path(self.path).unlink(missing_ok=True)

    def write(self, run_dir: Path) -> None:
        RunFolder.write_json(RunFolder.of(run_dir).plan, self.record)

    def finish(self, run_dir: Path, seconds: float) -> str:
        """Record the run's wall time (planning included, as the budget covers it) against the budget; the line
        to print."""
        budget = self.record["budget_s"]
        took = {"took_s": round(seconds, 1), "took_over_budget": round(seconds / budget, 3),
                "predicted_over_budget": round(self.record["predicted_s"] / budget, 3)}
        RunFolder.write_json(RunFolder.of(run_dir).plan, {**self.record, **took})
        return (f"plan: took {seconds / 60:.1f} min of a {budget / 60:g}-minute budget "
                f"({100 * took['took_over_budget']:.0f}%; predicted {self.record['predicted_s'] / 60:.1f} min)")


def _override(overrides: list[str], key: str) -> str | None:
    found = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].strip() == key and "=" in o]
    return found[-1] if found else None


def auto_plan(args) -> PlannedRun | None:
    """None unless --config auto; --budget without it is an error (a hand-written config is not re-planned)."""
    if args.config != "auto":
        if args.budget:
            raise ConfigError(f"--budget {args.budget}: plans a config, so it needs --config auto "
                              "(or run `graystem plan MANIFEST --budget ...` and edit the result)")
        return None
    from pipeline.tools.plan import DEFAULT_BUDGET, make_plan

    manifest = _override(args.overrides, "data.manifest")
    if not manifest:
        raise ConfigError("--config auto: name the data with --set data.manifest=PATH (a CSV or class folders)")
    exclude = _override(args.overrides, "data.exclude")
    threads = _override(args.overrides, "train.threads")
    repeats = _override(args.overrides, "train.repeats")  # --seeds N: the budget covers every seed
    planned = make_plan(manifest, args.budget or DEFAULT_BUDGET, _override(args.overrides, "train.device") or "auto",
                        exclude=[] if not exclude else [e.strip() for e in exclude.strip("[]").split(",")],
                        threads=int(threads) if threads else None, repeats=int(repeats) if repeats else 1,
                        includes_planning=True)
    fh = tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="graystem-plan-", delete=False)
    with fh:
        fh.write(planned.yaml_text)
    return PlannedRun(fh.name, {**planned.record, "yaml": planned.yaml_text})
