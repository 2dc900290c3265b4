"""Index a folder tree of DICOM files into a manifest CSV, reading headers only.

    graystem index ROOT --out manifest.csv [--labels labels.csv --key COLUMN [--label-column label]]
                                  [--pseudonymize --salt S] [--on-error skip|raise]

Every file is looked at, whatever its extension (DICOM files often have none). Raster and NIfTI files and
obvious text files are counted and left out; a file that should be DICOM but cannot be read as a DICOM image is
listed with the reason on stdout and in `<out stem>.skipped.csv`, never silently dropped.

Labels are joined on any column of labels.csv named like a DICOM keyword (SOPInstanceUID, AccessionNumber,
PatientID, StudyInstanceUID, ...) or on `file` / `filename` / `image` (the file name, or its path relative to ROOT or to
the output CSV's folder). `--pseudonymize` replaces PatientID with HMAC-SHA256(salt, PatientID), the first 16 hex
digits: the same patient always gets the same id, and without the salt the id cannot be looked up from a list
of candidate patient ids.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import Counter
from pathlib import Path

from pipeline.data import privacy
from pipeline.errors import DataError, ImageReadError, exits_on_error
from pipeline.io import detect_format
from pipeline.io.dicom import read_dicom_header

COLUMNS = ["image", "patient_id", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality",
           "PhotometricInterpretation", "Rows", "Columns", "NumberOfFrames", "BitsStored"]
FILE_KEYS = ("file", "filename", "image")  # image: a pipeline manifest's column
# content is checked first (a DICM prefix always wins); these names are never tried as preamble-less DICOM
TEXT_SUFFIXES = {".csv", ".tsv", ".txt", ".md", ".json", ".yaml", ".yml", ".xml", ".html", ".htm", ".log",
                 ".py", ".sh", ".pdf", ".zip", ".gz", ".tar", ".ini", ".cfg", ".rst", ".doc", ".docx", ".xls",
                 ".xlsx"}
PSEUDONYM_HEX = 16


def pseudonym(patient_id: str, salt: str) -> str:
    return privacy.pseudonym(patient_id, salt)  # one keyed hash for the index and for training's ids


def _has_dicm_prefix(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _walk(root: Path, ignored: Counter):
    """Files under root in a stable order; hidden folders (.git, ...) are counted and not entered."""
    for dirpath, dirnames, filenames in os.walk(root):
        hidden = [d for d in dirnames if d.startswith(".")]
        ignored["hidden folder"] += len(hidden)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _kind(path: Path) -> str:
    """'dicom' to try, else why the file is left out (hidden, raster, nifti, other)."""
    if _has_dicm_prefix(path):
        return "dicom"
    if path.name.startswith("."):
        return "hidden"
    if path.suffix.lower() in TEXT_SUFFIXES:
        return "other"
    return detect_format(path)


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def read_header(path: Path, keys=()) -> dict:
    """The manifest columns (and the extra `keys`) of one DICOM file; ImageReadError when not a DICOM image."""
    ds = read_dicom_header(path)
    try:
        if "Rows" not in ds or "Columns" not in ds:
            what = "DICOM without an image" if ds.preamble is not None else "not a DICOM image (no DICM prefix)"
            raise ImageReadError(path, f"{what}: no Rows/Columns")
        frames = ds.get("NumberOfFrames")
        out = {
            "patient_id": _text(ds.get("PatientID")),
            "StudyInstanceUID": _text(ds.get("StudyInstanceUID")),
            "SeriesInstanceUID": _text(ds.get("SeriesInstanceUID")),
            "SOPInstanceUID": _text(ds.get("SOPInstanceUID")),
            "Modality": _text(ds.get("Modality")),
            "PhotometricInterpretation": _text(ds.get("PhotometricInterpretation")),
            "Rows": int(ds.Rows),
            "Columns": int(ds.Columns),
            "NumberOfFrames": max(int(frames), 1) if _text(frames) else 1,
            "BitsStored": _text(ds.get("BitsStored")),
        }
        out["keys"] = {k: _text(ds.get(k)) for k in keys}
    except ImageReadError:
        raise
    except Exception as e:  # values are parsed lazily: a damaged element surfaces here
        raise ImageReadError(path, f"damaged DICOM header ({type(e).__name__}: {e})") from e
    return out


def load_labels(path: Path, key: str, label_column: str) -> dict[str, str]:
    """{key value: label}; the same key with two different labels is an error."""
    from pydicom.datadict import tag_for_keyword

    if key not in FILE_KEYS and tag_for_keyword(key) is None:
        raise DataError(f"--key {key}: not a DICOM keyword (e.g. SOPInstanceUID, AccessionNumber, PatientID, "
                        f"StudyInstanceUID) nor one of {', '.join(FILE_KEYS)}")
    if not path.is_file():
        raise DataError(f"--labels: file not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        records = list(reader)
    for col, opt in ((key, "--key"), (label_column, "--label-column")):
        if col not in columns:
            raise DataError(f"{path}: no column '{col}' ({opt}); found: {', '.join(columns)}")
    labels: dict[str, str] = {}
    for line, rec in enumerate(records, start=2):
        k, label = _text(rec.get(key)), _text(rec.get(label_column))
        if not k or not label:
            continue
        if key in FILE_KEYS:
            k = k.replace("\\", "/").removeprefix("./")
        if labels.get(k, label) != label:
            raise DataError(f"{path.name} row {line}: {key} '{k}' has two labels: '{labels[k]}' and '{label}'")
        labels[k] = label
    return labels


def _file_candidates(path: Path, root: Path, out_dir: Path) -> list[str]:
    cands = [path.relative_to(root).as_posix()]
    try:
        cands.append(Path(os.path.relpath(path, out_dir)).as_posix())
    except ValueError:  # another drive
        pass
    cands.append(path.name)
    return cands


def _relative_image(path: Path, out_dir: Path) -> str:
    try:
        return Path(os.path.relpath(path, out_dir)).as_posix()
    except ValueError:
        return str(path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="folder to walk (all files, any extension)")
    p.add_argument("--out", required=True, help="manifest CSV to write; image paths are relative to its folder")
    p.add_argument("--labels", help="CSV with labels to join")
    p.add_argument("--key", help="column of --labels to join on: a DICOM keyword or file/filename")
    p.add_argument("--label-column", default="label", help="column of --labels holding the label (default label)")
    p.add_argument("--pseudonymize", action="store_true", help="replace PatientID by a salted hash")
    p.add_argument("--salt", help="secret salt for --pseudonymize (required with it; keep it to re-link later)")
    p.add_argument("--on-error", choices=("skip", "raise"), default="skip",
                   help="unreadable files: list them and go on (default) or stop at the first")
    return p


def index(args) -> dict:
    root = Path(args.root).expanduser().resolve()
    out = Path(args.out).expanduser().resolve()
    skipped_path = out.with_suffix(".skipped.csv")
    if not root.is_dir():
        raise DataError(f"{args.root}: not a folder")
    if args.pseudonymize and not args.salt:
        raise DataError("--pseudonymize needs --salt (a secret string; the same salt gives the same ids)")
    if args.salt and not args.pseudonymize:
        raise DataError("--salt is only used with --pseudonymize")
    if bool(args.labels) != bool(args.key):
        raise DataError("--labels and --key go together")
    labels = load_labels(Path(args.labels).expanduser(), args.key, args.label_column) if args.labels else None
    by_file = args.key in FILE_KEYS
    dicom_keys = (args.key,) if labels is not None and not by_file else ()
    own = {out, skipped_path} | ({Path(args.labels).expanduser().resolve()} if args.labels else set())

    rows, skipped, ignored, used = [], [], Counter(), set()
    for path in _walk(root, ignored):
        if path.resolve() in own:
            continue
        try:
            kind = _kind(path)
            if kind != "dicom":
                ignored[kind] += 1
                continue
            header = read_header(path, dicom_keys)
        except ImageReadError as exc:
            if args.on_error == "raise":
                raise
            skipped.append({"path": str(path), "reason": exc.reason})
            continue
        keys = header.pop("keys")
        row = {"image": _relative_image(path, out.parent), **header}
        if labels is not None:
            cands = _file_candidates(path, root, out.parent) if by_file else [keys[args.key]]
            hit = next((c for c in cands if c and c in labels), None)
            row["label"] = labels[hit] if hit is not None else ""
            if hit is not None:
                used.add(hit)
        rows.append(row)

    id_map, ids_in_paths = {}, 0
    if args.pseudonymize:
        id_map = {pid: pseudonym(pid, args.salt) for pid in {r["patient_id"] for r in rows} if pid}
        # the raw id in the file path beside its hash would undo the pseudonym: count them and warn
        ids_in_paths = sum(bool(r["patient_id"]) and r["patient_id"] in r["image"] for r in rows)
        for r in rows:
            r["patient_id"] = id_map.get(r["patient_id"], "")

    out.parent.mkdir(parents=True, exist_ok=True)
    columns = COLUMNS + (["label"] if labels is not None else [])
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    with skipped_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "reason"], lineterminator="\n")
        w.writeheader()
        w.writerows(skipped)
    return {
        "out": str(out), "skipped_csv": str(skipped_path), "rows": rows, "skipped": skipped,
        "ignored": {k: v for k, v in ignored.items() if v},
        "n_patients": len({r["patient_id"] for r in rows if r["patient_id"]}),
        "no_patient_id": sum(not r["patient_id"] for r in rows),
        "unlabelled": [r["image"] for r in rows if labels is not None and not r["label"]],
        "labels_without_file": sorted(set(labels) - used) if labels is not None else [],
        "labelled": labels is not None, "pseudonymized": bool(id_map), "ids_in_paths": ids_in_paths,
    }


def print_summary(res: dict, show: int = 20) -> None:
    if res["no_patient_id"]:
        print(f"  {res['no_patient_id']} files without PatientID (empty patient_id: each will be its own patient)")
    if res["ignored"]:
        print("  not DICOM, left out: " + ", ".join(f"{k} {v}" for k, v in sorted(res["ignored"].items())))
    if res["labelled"]:
        n = len(res["rows"]) - len(res["unlabelled"])
        print(f"  labels: {n} files labelled, {len(res['unlabelled'])} without a label (kept, empty label)")
        for img in res["unlabelled"][:show]:
            print(f"    no label: {img}")
        print(f"  {len(res['labels_without_file'])} labels without a file")
        for k in res["labels_without_file"][:show]:
            print(f"    no file: {k}")
    print(f"  {len(res['skipped'])} unreadable files skipped -> {res['skipped_csv']}")
    if res.get("ids_in_paths"):
        print(f"  warning: {res['ids_in_paths']} image paths contain the raw PatientID that --pseudonymize replaced: "
              "the index still identifies those patients; rename the files or folders (or use "
              "privacy.hide_file_names in training)", file=sys.stderr)
    for s in res["skipped"][:show]:
        print(f"    {s['path']}: {s['reason']}")
    more = len(res["skipped"]) - show
    if more > 0:
        print(f"    ... and {more} more")
    # last: what was done and where it went, below the details
    print(f"indexed {len(res['rows'])} DICOM files of {res['n_patients']} patients -> {res['out']}"
          + (" (patient ids pseudonymized)" if res["pseudonymized"] else ""))


@exits_on_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    print_summary(index(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
