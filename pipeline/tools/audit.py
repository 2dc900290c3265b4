"""Audit a data set before training: what is in it, what cannot be read, and whether the folds leak.

    graystem audit --config chest_xray [--set k=v ...] [--out DIR]

Reads the config's manifest the way training does (but with data.on_error=skip, so every problem is reported,
not just the first), reads every file's header and decodes every sample with the training reader options,
draws the same patient-grouped folds as training, and writes DIR/audit.md and DIR/audit.json
(default DIR: audit-<task name>/ beside the manifest CSV, or beside the folder when data.manifest is a folder
of class folders, so an audit never litters the working directory).
The markdown is also printed.

Duplicates are samples whose decoded image (read_gray output: pixels after modality/VOI LUT, the frame training
uses) is byte-identical, so a copy in another encoding or under another name is still found. A duplicate group
whose members sit in different folds (or in train and test), or a patient in more than one fold, is a leak.
A duplicate group whose members carry different labels is label noise. One patient with several labels is
listed but not flagged: a patient can have a benign and a malignant lesion, or a normal and an abnormal visit.

Exit codes: 0 nothing found, 1 a leak or identical pixels under different labels, 2 bad input (one line on
stderr).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.cliargs import add_config_arguments
from pipeline.config import load_config
from pipeline.data.checks import check_pixels, group_copies, pixel_digest
from pipeline.data.cv import make_splits
from pipeline.data.manifest import load_manifest
from pipeline.data.prepare import final_samples
from pipeline.data.shortcuts import shortcut_table
from pipeline.data.shortcuts import to_markdown as shortcuts_markdown
from pipeline.demo import ensure_demo_data
from pipeline.errors import DataError, ImageReadError, error_reason, exits_on_error
from pipeline.io import detect_format, read_gray
from pipeline.io.dicom import read_dicom_header
from pipeline.runfolder import RunFolder
from pipeline.schema import resolve_data_path


def _counts(values) -> dict:
    c = Counter("none" if v is None else str(v) for v in values)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def _file_facts(path: str) -> dict:
    """Format and header facts of one file; 'error' set when the header cannot be read."""
    facts = {"format": None, "modality": None, "photometric": None, "bits_stored": None, "size": None,
             "frames": None, "error": None}
    try:
        facts["format"] = detect_format(path)
        if facts["format"] == "dicom":
            ds = read_dicom_header(path)
            if "Rows" not in ds or "Columns" not in ds:
                raise ImageReadError(path, "no Rows/Columns: not a DICOM image")
            facts.update(modality=str(ds.get("Modality") or "").strip() or None,
                         photometric=str(ds.get("PhotometricInterpretation") or "").strip() or None,
                         bits_stored=ds.get("BitsStored"), size=f"{int(ds.Rows)}x{int(ds.Columns)}",
                         frames=max(int(ds.get("NumberOfFrames") or 1), 1))
    except ImageReadError as exc:
        facts["error"] = exc.reason
    except Exception as exc:  # a damaged header element parsed lazily
        facts["error"] = f"damaged header ({type(exc).__name__}: {exc})"
    return facts


def _decode(row, options, min_size: int = 1) -> tuple[str | None, dict | None, str | None]:
    """(md5 of the decoded image, reader info, error reason), with the pixel checks training applies."""
    try:
        image, info = read_gray(row.image, frame=row.frame, options=options)
        check_pixels(image, row.image, min_size)
    except Exception as exc:
        return None, None, error_reason(exc)
    return pixel_digest(image), info, None


def _spread(values: list[int]) -> dict:
    if not values:
        return {"min": None, "median": None, "max": None, "distribution": {}}
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "distribution": {str(k): v for k, v in sorted(Counter(values).items())}}


def audit(cfg) -> dict:
    scfg = cfg.model_copy(deep=True)
    scfg.data.on_error = "skip"  # collect every problem instead of stopping at the first
    manifest = load_manifest(scfg)
    rows, options = manifest.samples, cfg.data.reader_options()
    unreadable = [{"image": s.image, "row": s.row, "stage": "manifest", "reason": s.reason}
                  for s in manifest.skipped]

    files = list(dict.fromkeys(r.image for r in rows))
    workers = 2 if len(rows) > 8 else 1
    with ThreadPoolExecutor(workers) as pool:
        facts = dict(zip(files, pool.map(_file_facts, files), strict=True))
        decoded = list(pool.map(lambda r: _decode(r, options, cfg.data.min_size), rows))

    reported = set()
    for path, f in facts.items():
        if f["error"]:
            reported.add(path)
            unreadable.append({"image": path, "row": None, "stage": "header", "reason": f["error"]})
    ok, hashes = [], []
    for row, (digest, info, error) in zip(rows, decoded, strict=True):
        if error is not None:  # training skips (or stops at) this sample, not the file's other frames
            if row.image not in reported:
                unreadable.append({"image": row.image, "row": row.row, "stage": "decode", "reason": error})
            reported.add(row.image)
            continue
        f = facts[row.image]
        if f["format"] != "dicom" and f["size"] is None:  # NIfTI / raster: facts from the reader
            f.update(modality=info.modality, photometric=info.photometric, bits_stored=info.bits_stored,
                     frames=info.frames, size="x".join(str(s) for s in info.shape))
        ok.append(row)
        hashes.append(digest)
    good = [facts[p] for p in dict.fromkeys(r.image for r in ok)]

    report: dict = {
        "task": cfg.task.name, "manifest": str(manifest.path), "classes": list(cfg.task.classes),
        "n_manifest_samples": len(rows) + len(manifest.skipped), "n_samples": len(ok),
        "n_files": len({r.image for r in ok}), "n_patients": len({r.patient_id for r in ok}),
        "file_types": _counts(f["format"] for f in good),
        "modalities": _counts(f["modality"] for f in good),
        "photometric": _counts(f["photometric"] for f in good),
        "bits_stored": _counts(f["bits_stored"] for f in good),
        "sizes": _counts(f["size"] for f in good),
        "frames": _counts(f["frames"] for f in good),
        "unreadable": unreadable,
    }

    # patients: where their ids came from, how many images each, conflicting labels
    own = sum(not r.patient_known for r in ok)
    report["patient_source"] = {
        "source": manifest.patient_source, "images_as_own_patient": own,
        "note": ("every image is its own patient: images of one patient can land in different folds"
                 if ok and own == len(ok) else
                 f"{own} images have no patient id and count as their own patient" if own else
                 "patient ids from the manifest column" if manifest.patient_source == "column" else
                 "patient ids from the DICOM PatientID tag"),
    }
    per_patient = defaultdict(set)
    labels_of = defaultdict(set)
    for r in ok:
        per_patient[r.patient_id].add(r.image)
        labels_of[r.patient_id].add(r.label)
    report["images_per_patient"] = _spread([len(v) for v in per_patient.values()])
    report["conflicting_labels"] = {p: sorted(v) for p, v in sorted(labels_of.items()) if len(v) > 1}
    report["label_counts"] = _counts(r.label for r in ok)

    # folds, exactly as training draws them
    leaks = []
    both = sorted({r.patient_id for r in ok if r.split == "test"}
                  & {r.patient_id for r in ok if r.split == "train"})
    report["patients_in_train_and_test"] = both
    if both:
        leaks.append(f"{len(both)} patients have images in both the train and the test split of the manifest")
    place = {}  # patient -> 'test' or 'fold K' (the fold whose validation set holds the patient)
    grouped = ()
    try:
        # the audit hashes what the reader returns; identical files group as training groups them
        grouped = group_copies(cfg, ok, hashes, strict=False)[0] if ok else ()
        splits = make_splits(grouped, cfg) if ok else None
        report["folds_error"] = None if ok else "no readable samples"
    except DataError as exc:
        splits, report["folds_error"] = None, str(exc)
    report["splits"] = splits.to_json() if splits else None  # what training writes to splits.json
    multi = set()
    if splits:
        seen = defaultdict(list)
        for p in splits.test_patients:
            seen[p].append("test")
        for f in splits.folds:
            for p in f.val_patients:
                seen[p].append(f"fold {f.fold}")
            multi |= set(f.train_patients) & set(f.val_patients)
        multi |= {p for p, where in seen.items() if len(where) > 1}
        place = {p: where[0] for p, where in seen.items()}
        test = set(splits.test_patients)
        per_fold = []
        for f in splits.folds:
            val = set(f.val_patients)
            per_fold.append({"fold": f.fold, "val_patients": len(val),
                             "val": _counts(r.label for r in grouped if r.patient_id in val),
                             "train": _counts(r.label for r in grouped if r.patient_id not in val | test)})
        report["label_counts_per_fold"] = per_fold
    else:
        test = {r.patient_id for r in ok if r.split == "test"}
        place = {r.patient_id: "test" if r.patient_id in test else "train" for r in ok}
        report["label_counts_per_fold"] = []
    report["label_counts_test"] = _counts(r.label for r in (grouped or ok) if r.patient_id in test)
    report["patients_in_multiple_folds"] = len(multi)
    if multi:
        leaks.append(f"{len(multi)} patients are in more than one fold / the test set")

    # duplicates: identical decoded pixels
    groups = defaultdict(list)
    for r, h in zip(ok, hashes, strict=True):
        groups[h].append(r)
    dups = []
    for h, members in groups.items():
        distinct = {(m.image, m.frame) for m in members}
        patients = {m.patient_id for m in members}
        if len(distinct) < 2 and len(patients) < 2:  # one row (or a repeated row of one patient)
            continue
        where = sorted({place.get(m.patient_id, "train") for m in members})
        splits_of = {"test" if m.patient_id in test else "train" for m in members}
        # one image under two patient ids is a leak whichever folds they land in now: another seed splits them
        labels = sorted({m.label for m in members})
        dups.append({"md5": h, "crosses_folds": len(where) > 1 or len(patients) > 1,
                     "labels": labels, "conflicting_labels": len(labels) > 1,
                     "crosses_train_test": len(splits_of) > 1,
                     "patients": sorted({m.patient_id for m in members}), "where": where,
                     "images": [{"image": m.image, "frame": m.frame, "patient_id": m.patient_id,
                                 "label": m.label, "split": "test" if m.patient_id in test else "train",
                                 "fold": place.get(m.patient_id)} for m in members]})
    report["duplicates"] = dups
    crossing = [d for d in dups if d["crosses_folds"] or d["crosses_train_test"]]
    report["duplicate_groups_crossing"] = len(crossing)
    if crossing:
        leaks.append(f"{len(crossing)} duplicate groups cross folds or train/test")
    report["leaks"] = leaks
    report["leak"] = bool(leaks)
    # the same pixels under two labels: not a leak, but label noise the metrics cannot see past
    report["duplicate_groups_conflicting_labels"] = sum(d["conflicting_labels"] for d in dups)
    return report


def _table(counts: dict, head: str) -> list[str]:
    if not counts:
        return ["(none)", ""]
    return [f"| {head} | count |", "|---|---:|", *(f"| {k} | {v} |" for k, v in counts.items()), ""]


def to_markdown(rep: dict, show: int = 30) -> str:
    out = [f"# Data audit: {rep['task']}", "", f"Manifest: `{rep['manifest']}`", "",
           f"**{'LEAK FOUND' if rep['leak'] else 'No leak found'}**"
           + "".join(f"\n- {x}" for x in rep["leaks"]), "",
           *([f"**LABEL CONFLICT**: {rep['duplicate_groups_conflicting_labels']} groups of identical images carry "
              "different labels (see Duplicates)", ""] if rep["duplicate_groups_conflicting_labels"] else []),
           f"{rep['n_samples']} readable samples of {rep['n_manifest_samples']} in the manifest, "
           f"{rep['n_files']} files, {rep['n_patients']} patients.", ""]
    for key, title, head in (("file_types", "File types", "format"), ("modalities", "Modalities", "modality"),
                             ("photometric", "Photometric interpretation", "photometric"),
                             ("bits_stored", "Bits stored", "bits"), ("sizes", "Image sizes (rows x cols)", "size"),
                             ("frames", "Frames per file", "frames"), ("label_counts", "Labels (samples)", "label")):
        out += [f"## {title}", "", *_table(rep[key], head)]
    out += ["## Labels per fold (samples)", ""]
    if rep["folds_error"]:
        out += [f"Folds could not be drawn: {rep['folds_error']}", ""]
    classes = rep["classes"]
    if rep["label_counts_per_fold"]:
        out += ["| fold | val patients | " + " | ".join(f"val {c}" for c in classes) + " | "
                + " | ".join(f"train {c}" for c in classes) + " |",
                "|---" * (2 + 2 * len(classes)) + "|"]
        for f in rep["label_counts_per_fold"]:
            out.append(f"| {f['fold']} | {f['val_patients']} | " + " | ".join(str(f["val"].get(c, 0)) for c in classes)
                       + " | " + " | ".join(str(f["train"].get(c, 0)) for c in classes) + " |")
        out.append("")
    out += ["Test split: " + (", ".join(f"{k} {v}" for k, v in rep["label_counts_test"].items()) or "none"), ""]
    ipp, src = rep["images_per_patient"], rep["patient_source"]
    out += ["## Patients", "", f"Patient ids: {src['source']} ({src['note']}).", "",
            f"Images per patient: min {ipp['min']}, median {ipp['median']}, max {ipp['max']}; distribution "
            + ", ".join(f"{k} image(s): {v} patients" for k, v in ipp["distribution"].items()) + ".", "",
            f"Patients in more than one fold: **{rep['patients_in_multiple_folds']}**.",
            f"Patients in both train and test of the manifest: **{len(rep['patients_in_train_and_test'])}**.", "",
            f"Patients with conflicting labels: {len(rep['conflicting_labels'])}", ""]
    out += [f"- {p}: {', '.join(v)}" for p, v in list(rep["conflicting_labels"].items())[:show]]
    out += [""] if rep["conflicting_labels"] else []
    out += [f"## Duplicates (identical decoded pixels): {len(rep['duplicates'])} groups, "
            f"{rep['duplicate_groups_crossing']} crossing folds or train/test, "
            f"{rep['duplicate_groups_conflicting_labels']} with conflicting labels", ""]
    for d in rep["duplicates"][:show]:
        tag = "LEAK, crosses " + " / ".join(d["where"]) if d["crosses_folds"] or d["crosses_train_test"] else "same fold"
        tag += ", LABELS DIFFER" if d["conflicting_labels"] else ""
        out.append(f"- {tag}: " + "; ".join(f"`{m['image']}` ({m['label']}, patient {m['patient_id']}, "
                                              f"{m['fold'] or m['split']})" for m in d["images"]))
    out += [""] if rep["duplicates"] else []
    out += [f"## Unreadable files: {len(rep['unreadable'])}", ""]
    out += [f"- `{u['image']}`" + (f" (row {u['row']})" if u["row"] else "") + f" [{u['stage']}]: {u['reason']}"
            for u in rep["unreadable"][:show]]
    if len(rep["unreadable"]) > show:
        out.append(f"- ... and {len(rep['unreadable']) - show} more (see audit.json)")
    return "\n".join(out).rstrip() + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(p)
    p.add_argument("--out", help="report folder (default: audit-<task name>/ beside the manifest)")
    p.add_argument("--run", help="a finished run of this config: rank its suspect labels (cleanlab on the run's "
                                 "oof_predictions.csv) into OUT/label_issues.csv")
    return p


@exits_on_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    ensure_demo_data(cfg)
    rep = audit(cfg)
    out = Path(args.out) if args.out else resolve_data_path(cfg.data.manifest).parent / f"audit-{cfg.task.name}"
    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(rep)
    scfg = cfg.model_copy(deep=True)
    scfg.data.on_error = "skip"  # as the audit reads: unreadable files are reported above, not a stop here
    readable = load_manifest(scfg).samples
    shortcuts = shortcut_table(readable)  # manifest columns that track the label
    rep["shortcuts"] = [s.to_json() for s in shortcuts]
    md += "\n" + shortcuts_markdown(shortcuts)
    if cfg.data.near_duplicates != "off":  # near copies by perceptual hash, on the pixels training sees
        from pipeline.tools.audit_near import near_duplicate_rows, write_near_duplicates

        rows, decoded = near_duplicate_rows(scfg, readable)
        write_near_duplicates(rows, decoded, out)
        try:  # the folds training draws: the same grouping of exact and near copies, on the same pixels
            rep["splits"] = final_samples(scfg, decoded, 0)[1].to_json()
        except DataError as exc:
            rep["folds_error"] = str(exc)
        rep["near_duplicates"] = {"groups": len({r["group"] for r in rows}), "images": len(rows)}
        md += (f"\n## Near copies\n\n{rep['near_duplicates']['groups']} groups, {len(rows)} images within "
               f"{cfg.data.near_duplicate_bits} bits (near_duplicates.csv, near_duplicates.png)\n")
    if args.run:  # suspect labels of a finished run
        from pipeline.results.label_issues import find_issues, items_from_predictions, to_csv

        oof = RunFolder(args.run).oof_predictions
        if not oof.is_file():
            raise DataError(f"--run {args.run}: no {RunFolder.OOF} (not a finished run folder)")
        issues = find_issues(cfg.task, items_from_predictions(cfg.task, oof))
        (out / "label_issues.csv").write_text(to_csv(cfg.task, issues))
        rep["label_issues"] = len(issues)
        md += f"\n## Suspect labels\n\n{len(issues)} images of run `{args.run}` (label_issues.csv)\n"
    (out / "audit.md").write_text(md)
    (out / "audit.json").write_text(json.dumps(rep, indent=1, default=str))
    print(md)
    print(f"audited {rep['n_samples']} samples of {rep['n_patients']} patients; "
          f"written to {out} (audit.md, audit.json)")
    return 1 if rep["leak"] or rep["duplicate_groups_conflicting_labels"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
