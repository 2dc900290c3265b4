"""Score a labelled (external) manifest with a finished run: its fold ensemble, preprocessing and threshold.

    graystem evaluate RUN_DIR --manifest external.csv [--out DIR] [--on-error skip] [--tta none|flip]

The manifest has the training format (image, label, patient_id, optional frame; split and fold columns are
ignored: every row is scored) and is read with the run's own config, only data.manifest replaced, so labels
must be among the run's classes and files are read, framed and resized as in training. Frames of a cine are
scored one by one and averaged per file, as the run did. The operating point is the run's (summary.json
`threshold`) and is never re-tuned on the external data. Writes RUN_DIR/eval_<manifest name>/ (or --out):
predictions.csv, summary.json (a `test` block of the run's own shape: metrics, ci95 from a patient bootstrap,
n), roc.png, calibration.png and report.md. `--tta` scores with other test-time views than the run's
(a what-if; the run's own deployment is unchanged), under the training's rule: flips only where it flipped.
`graystem compare` reads evaluation folders as it reads runs (their predictions.csv), so two runs, or one run
with and without test-time views, compare pairwise on the same external images.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from pipeline.data.manifest import load_manifest
from pipeline.deploy.finished import load_run
from pipeline.deploy.inference import predicted_label, run_tta, score_files
from pipeline.errors import ConfigError, DataError, exits_on_error
from pipeline.logs import log, setup_logging
from pipeline.model.deployment import DEPLOYED_DATA
from pipeline.model.outputs import class_matrix
from pipeline.results.clinical import evaluate_blocks
from pipeline.results.report import _aggregate, _write_predictions, score_items
from pipeline.runfolder import RunFolder
from pipeline.tools.overlap import find_overlap
from pipeline.vocab import METRICS


def _per_sample_scores(samples, scores, skipped) -> tuple[list[int], list]:
    """Map score_files' kept items back to samples. Items of one file are consecutive; a file with any frame
    skipped is left out whole (a mean over the frames that happened to read would not be the training score)."""
    indices, probs = [], []
    si = ki = i = 0
    while i < len(samples):
        j = i
        while j < len(samples) and samples[j].image == samples[i].image:
            j += 1
        n_skip = 0
        while ki < len(skipped) and n_skip < j - i and skipped[ki]["image"] == samples[i].image:
            ki, n_skip = ki + 1, n_skip + 1
        group = scores[si:si + (j - i - n_skip)]
        si += j - i - n_skip
        if n_skip == 0:
            indices += list(range(i, j))
            probs += [s.probs for s in group]
        i = j
    return indices, probs


def with_tta(run, tta: str):
    """The run with other test-time views, refused where its training never saw them (no flips: chest films)."""
    if tta == "flip" and not run.cfg.augment.flip > 0:
        raise ConfigError(f"--tta flip: {run.run_dir.name} trained without flips (augment.flip 0), so a mirrored "
                          "image is not one it learned to read")
    return replace(run, deployment=replace(run.deployment, extra={**run.deployment.extra, "tta": tta}))


def evaluate(run_dir: Path, manifest: Path, out: Path | None = None, on_error: str | None = None,
             progress: bool = False, allow_overlap: bool = False, tta: str | None = None) -> dict:
    run = load_run(run_dir)
    if tta is not None:
        run = with_tta(run, tta)
    # the deployment's pixel and reader settings; the rest of data (columns, patient rules) as the run had it
    deployed = run.deployment.data.model_dump(include=set(DEPLOYED_DATA))
    data = run.cfg.data.model_copy(update={**deployed, "manifest": str(Path(manifest).resolve()), "root": None,
                                           "demo": None, **({"on_error": on_error} if on_error else {})})
    cfg = run.cfg.model_copy(update={"data": data})
    loaded = load_manifest(cfg)
    samples = list(loaded.samples)
    overlap = find_overlap(run.cfg, cfg, samples)  # the run's own images or patients: not an external set
    if overlap and not allow_overlap:
        raise DataError(overlap.line(Path(run_dir).name) + "; pass --allow-overlap to score it anyway (marked as such)")
    if overlap.not_checked:
        log.warning(f"warning: overlap with the run's data not checked: {overlap.not_checked}")
    if overlap:
        log.warning("warning: " + overlap.line(Path(run_dir).name) + " (scored anyway: --allow-overlap)")
    overlap = replace(overlap, allowed=bool(overlap))
    scores, skipped = score_files(run, [(s.image, s.frame) for s in samples], on_error=cfg.data.on_error,
                                  progress=progress)
    indices, probs = _per_sample_scores(samples, scores, skipped)
    if not indices:
        raise ConfigError(f"--manifest {manifest}: no image could be scored ({len(skipped)} skipped)")
    task = run.task
    if task.type == "binary":  # the run's own score form: p(positive) for binary, class vectors otherwise
        probs = [p[task.classes.index(task.positive)] for p in probs]
    items = _aggregate(samples, indices, probs)
    by_path = {sc.image: sc.spread for sc in scores}
    spread = {s.image_text: by_path[s.image] for s in samples if s.image in by_path}
    items = [{**it, "sd": spread[it["image"]]} for it in items]  # the fold models' spread per file
    block = score_items(cfg, items, run.threshold, len(run.checkpoints))

    out = Path(out) if out else Path(run_dir) / f"eval_{Path(manifest).stem}"
    out.mkdir(parents=True, exist_ok=True)
    decided = [predicted_label(task, row, run.threshold) for row in class_matrix(task, [it["prob"] for it in items])]
    _write_predictions(RunFolder(out).evaluated, items, task, with_fold=False, predicted=decided)
    all_skipped = [s.as_dict() for s in loaded.skipped] + skipped
    summary = {
        "run": str(Path(run_dir).resolve()), "manifest": str(Path(manifest).resolve()), "task": task.name,
        "type": task.type, "classes": task.classes, "positive_class": task.positive if task.type == "binary" else None,
        "threshold": run.threshold, "threshold_source": f"the run's {RunFolder.DEPLOYMENT} (not re-tuned on this set)",
        "unit": "image (frames averaged)" if len(items) < len(indices) else "image",
        "n_samples": len(indices), "n_images": len(items), "n_patients": len({it["patient_id"] for it in items}),
        "n_skipped": len(all_skipped), "skipped": all_skipped, "seeds": list(run.seeds), "tta": run_tta(run),
        "test": block,
        "overlap": overlap.to_json(),
        **evaluate_blocks(cfg, run, samples, items),
    }
    RunFolder.write_json(RunFolder(out).summary, summary)
    _write_report(out, summary, items, cfg)
    return summary


def _write_report(out: Path, summary: dict, items, cfg) -> None:
    t, fmt = summary["test"], (lambda v: "n/a" if v is None else f"{v:.3f}")  # noqa: E731
    ov = summary["overlap"]
    lines = [f"# {'External evaluation' if ov['external'] else 'Evaluation (NOT external: overlaps the run)'} of "
             f"{Path(summary['run']).name} on {Path(summary['manifest']).name}", "",
             *([f"**Not an external set**: {len(ov['by_path'])} images are files of the run's data, "
                f"{len(ov['by_pixels'])} repeat its pixels (exactly or nearly), {len(ov['by_patient'])} patient ids "
                "are the run's. These figures overstate performance on new patients.", ""]
               if not ov["external"] else []),
             f"{summary['n_images']} images from {summary['n_patients']} patients ({summary['n_skipped']} skipped); "
             f"ensemble of {t['n_models']} fold models; threshold {summary['threshold']:.3f} from the run "
             "(not re-tuned here). Unit of analysis: " + summary["unit"] + ".", "",
             "| metric | value | 95% CI |", "|---|---|---|"]
    for k in METRICS:
        c = t.get("ci95", {}).get(k)
        lines.append(f"| {k} | {fmt(t.get(k))} | {f'{c[0]:.3f} – {c[1]:.3f}' if c else ''} |")
    import matplotlib.pyplot as plt

    from pipeline.results import clinical_report
    from pipeline.results.report_plots import figures

    lines += clinical_report.markdown(summary)
    figs = {**figures(summary, [], items, cfg.report.calibration_bins, "external (fold ensemble)"),
            **clinical_report.figures(summary)}
    for name, fig in figs.items():
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        lines += ["", f"![{name}]({name}.png)"]
    lines += ["", f"Files: `{RunFolder.EVALUATED}`, `{RunFolder.SUMMARY}`.", ""]
    RunFolder.write_text(RunFolder(out).report, "\n".join(lines))


def _clinical_line(s: dict) -> str:
    """ECE (calibrated probabilities) and conformal coverage for the console line."""
    parts = []
    ece = ((s.get("calibration") or {}).get("external") or {}).get("after", {}).get("ece")
    if ece is not None:
        parts.append(f"ECE {ece:.3f}")
    conf = (s.get("conformal") or {}).get("external")
    if conf:
        parts.append(f"conformal coverage {conf['coverage']:.3f} at alpha {s['conformal']['alpha']}")
    return (", " + ", ".join(parts)) if parts else ""


@exits_on_error
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--manifest", type=Path, required=True, help="labelled CSV in the training manifest format")
    ap.add_argument("--out", type=Path, help="output folder (default RUN_DIR/eval_<manifest name>)")
    ap.add_argument("--on-error", choices=["raise", "skip"], help="unreadable files (default: the run's data.on_error)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--allow-overlap", action="store_true",
                    help="score a manifest that shares files, pixels or patients with the run's data (marked as such)")
    ap.add_argument("--tta", choices=["none", "flip"],
                    help="test-time views to score with (default: the run's inference.tta); flip needs a run that "
                    "trained with flips")
    args = ap.parse_args(argv)
    setup_logging(quiet=args.quiet)
    if not args.manifest.is_file():
        raise ConfigError(f"--manifest {args.manifest}: file not found")
    s = evaluate(args.run_dir, args.manifest, args.out, args.on_error, progress=not args.quiet,
                 allow_overlap=args.allow_overlap, tta=args.tta)
    t = s["test"]
    ci = t.get("ci95", {}).get("auroc")
    auroc = "n/a" if t.get("auroc") is None else f"{t['auroc']:.3f}"
    log.info(f"{s['n_images']} images, {s['n_patients']} patients: AUROC {auroc}"
             + (f" (95% CI {ci[0]:.3f} - {ci[1]:.3f})" if ci and t.get("auroc") is not None else "")
             + f" at threshold {s['threshold']:.3f}" + _clinical_line(s) + "; results in {args.out or args.run_dir / ('eval_' + args.manifest.stem)}")
    for sk in s["skipped"]:
        print(f"skipped: {sk['image']}: {sk['reason']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
