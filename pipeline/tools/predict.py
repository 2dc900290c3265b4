"""Score new images with the fold models of a finished run (the fold ensemble, as for the test set).

    graystem predict RUN_DIR IMAGE [IMAGE ...] [--out predictions.csv]
    graystem predict RUN_DIR --manifest new.csv [--out predictions.csv]
    graystem predict RUN_DIR IMAGE ... --cam cams/ [--cam-class positive|predicted] [--cam-npy]

Each image is read with the run's reader options and resized as in training, and normalised with the
statistics stored in the checkpoint (the model factory's, never timm's 3-channel defaults).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import replace
from pathlib import Path

from pipeline.deploy.finished import FinishedRun, load_run
from pipeline.deploy.inference import score_files
from pipeline.errors import ConfigError, exits_on_error
from pipeline.model.outputs import probability_fields


def predict_files(run_dir: Path, images: list[tuple[str, int | None]], on_error: str = "raise",
                  progress: bool = False):
    """(rows for the CSV, skipped files, classes)."""
    return _predict(load_run(run_dir), images, on_error, progress)


def _predict(run: FinishedRun, images: list[tuple[str, int | None]], on_error: str, progress: bool):
    scores, skipped = score_files(run, images, on_error=on_error, progress=progress)
    fields = probability_fields(run.task)
    if run.deployment.hide_file_names:  # the run hides file names: outputs show the input position instead
        position = {path: f"row{k + 1}" for k, (path, _) in enumerate(images)}
        scores = [replace(s, image=position[s.image]) for s in scores]
        skipped = [{**s, "image": position[s["image"]]} for s in skipped]
    rows = [{"image": s.image, "frames": s.frames,
             **{f: round(float(v), 6) for f, v in zip(fields, s.probs, strict=True)},
             "predicted": s.predicted,
             **{f"sd_{c}": round(float(v), 6) for c, v in zip(run.task.classes, s.spread, strict=True)}}
            for s in scores]
    return rows, skipped, run.task.classes


def decision_rule(run: FinishedRun) -> str:
    """How `predicted` was decided, in words: the run's threshold on the class it applies to."""
    task, t = run.task, run.threshold
    if task.type == "binary":
        return f"{task.positive} when P({task.positive}) >= {t:.3f} (the run's threshold)"
    if task.type == "multiclass":
        return "the most probable class"
    return f"every finding with P >= {t:.3f} (the run's threshold)"


@exits_on_error
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("images", nargs="*")
    ap.add_argument("--manifest", type=Path, help="CSV with an 'image' column (and optional 'frame')")
    ap.add_argument("--out", type=Path, help="write a CSV here (default: print JSON lines)")
    ap.add_argument("--on-error", choices=["raise", "skip"], default="raise")
    ap.add_argument("--cam", type=Path, metavar="DIR",
                    help="also write a Grad-CAM overlay PNG per image here (fold-ensemble map on the pixels the "
                         "network saw)")
    ap.add_argument("--cam-class", choices=["positive", "predicted"], default="positive",
                    help="binary runs: map the positive class (default) or the class decided at the threshold")
    ap.add_argument("--cam-npy", action="store_true", help="with --cam: also save each raw map as .npy")
    args = ap.parse_args(argv)
    items = [(str(Path(p).resolve()), None) for p in args.images]
    if args.manifest:
        if not args.manifest.is_file():
            raise ConfigError(f"--manifest {args.manifest}: file not found")
        with args.manifest.open(newline="", encoding="utf-8-sig") as fh:
            for line, rec in enumerate(csv.DictReader(fh), start=2):
                if not rec.get("image"):
                    raise ConfigError(f"{args.manifest.name} row {line}: empty 'image'")
                path = Path(rec["image"])
                path = path if path.is_absolute() else args.manifest.parent / path
                frame = rec.get("frame") or None
                items.append((str(path), int(frame) if frame else None))
    if not items:
        raise ConfigError("no images given (pass paths or --manifest)")
    run = load_run(args.run_dir)
    rows, skipped, classes = _predict(run, items, args.on_error, progress=bool(args.out))
    if args.out:
        with args.out.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["image", "frames", *(f"prob_{c}" for c in classes), "predicted",
                                               *(f"sd_{c}" for c in classes)])  # sd: spread of the fold models
            w.writeheader()
            w.writerows(rows)
    else:
        for r in rows:
            print(json.dumps(r))
    for s in skipped:
        print(f"skipped: {s['image']}: {s['reason']}", file=sys.stderr)
    cams = ""
    if args.cam:
        from pipeline.deploy.cam import write_cams

        bad = {s["image"] for s in skipped}
        pngs = write_cams(run, [it for it in items if it[0] not in bad], args.cam,
                          save_npy=args.cam_npy, target=args.cam_class)
        cams = f"; {len(pngs)} Grad-CAM overlay(s) in {args.cam}"
    # the last line says what was done and where it went; stderr, so JSON lines on stdout stay parseable
    print(f"scored {len(rows)} file(s) ({len(skipped)} skipped) with {len(run.checkpoints)} fold model(s); "
          f"predicted = {decision_rule(run)}; "
          + (f"wrote {args.out}" if args.out else "printed as JSON lines") + cams, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
