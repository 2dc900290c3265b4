"""No identifier in any output: train, predict and export on DICOMs carrying names, dates and accession numbers,
with privacy.pseudonymize_ids and privacy.hide_file_names, then every file written is searched as bytes."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pydicom
import pytest

from pipeline.cli import main
from pipeline.demo import make_demo

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
SECRETS = {"PatientName": "Mueller^Hannelore", "PatientBirthDate": "19310704", "AccessionNumber": "ACC77410",
           "InstitutionName": "St Elsewhere Clinic"}


@pytest.fixture(scope="module")
def identified(tmp_path_factory) -> dict:
    """Demo DICOMs rewritten with identifying tags, a raw MRN as PatientID and the name in the file name; the
    manifest has no patient_id column, so ids come from the DICOM PatientID as in an archive export."""
    root = tmp_path_factory.mktemp("ident")
    make_demo(root, which=("chest_xray",), n_scale=0.1)
    labels = root / "chest_xray" / "labels.csv"
    with labels.open() as fh:
        rows = list(csv.DictReader(fh))
    images = root / "Patients Müller"
    images.mkdir()
    mrns, out_rows = {}, []
    for i, r in enumerate(rows):
        ds = pydicom.dcmread(labels.parent / r["image"])
        mrn = mrns.setdefault(r["patient_id"], f"MRN{880000 + len(mrns)}")
        for key, value in SECRETS.items():
            setattr(ds, key, value)
        ds.PatientID = mrn
        dst = images / f"Patient Mueller {mrn} {i}.dcm"
        ds.save_as(dst)
        out_rows.append({"image": str(dst), "label": r["label"], "split": r["split"]})
    manifest = root / "labels.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "label", "split"])
        w.writeheader()
        w.writerows(out_rows)
    return {"root": root, "manifest": manifest, "mrns": sorted(mrns.values()), "images": [r["image"] for r in out_rows]}


def _identifiers(identified) -> list[bytes]:
    values = [*SECRETS.values(), "Mueller", "Müller", "Elsewhere", *identified["mrns"]]
    return [v.encode() for v in values]


def test_no_identifier_in_any_output(identified, tmp_path, capsys):
    from pipeline.tools.export import main as export_main
    from pipeline.tools.predict import main as predict_main

    runs = tmp_path / "runs"
    run = runs / "run"
    private = ["--set", "privacy.pseudonymize_ids=true", "--set", "privacy.hide_file_names=true"]
    rc = main(["--config", "smoke", "--set", f"data.manifest={identified['manifest']}", "--set",
               "report.bootstrap=20", *private, "--output-dir", str(run)])
    assert rc == 0, capsys.readouterr().err
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    assert predict_main([str(run), *identified["images"][:4], "--out", str(outputs / "pred.csv")]) == 0
    assert export_main([str(run), "--out", str(outputs / "model.ts")]) == 0
    # TODO(evaluate): run `graystem evaluate` here too once the evaluate tool is merged
    logs = capsys.readouterr()
    (outputs / "console.txt").write_text(logs.out + logs.err)

    key = runs / ".graystem_key"
    assert key.is_file() and (key.stat().st_mode & 0o777) == 0o600  # beside the run, owner-only
    assert not any(p.name == ".graystem_key" for p in run.rglob("*"))
    assert str(key) in (run / "config.yaml").read_text() and key.read_text().strip() not in (run / "config.yaml").read_text()

    written = [p for p in [*run.rglob("*"), *outputs.rglob("*")] if p.is_file()]
    kinds = {p.suffix for p in written}
    assert {".csv", ".json", ".yaml", ".pt", ".md", ".txt", ".jsonl"} <= kinds
    assert any("tfevents" in p.name for p in written)
    for path in written:
        data = path.read_bytes()
        for value in _identifiers(identified):
            assert value not in data, f"{value!r} found in {path}"

    # patient ids are keyed hashes, file names row numbers
    with (run / "oof_predictions.csv").open() as fh:
        oof = list(csv.DictReader(fh))
    assert all(re.fullmatch(r"[0-9a-f]{16}", r["patient_id"]) for r in oof)
    assert all(re.fullmatch(r"row\d+", r["image"]) for r in oof)


def test_same_key_same_pseudonym_and_key_stays_outside_the_run(tmp_path):
    from pipeline.config import load_config
    from pipeline.data import privacy
    from pipeline.errors import ConfigError

    cfg = load_config("smoke", ["privacy.pseudonymize_ids=true"])
    privacy.bind_key(cfg, tmp_path / "run")
    assert Path(cfg.privacy.key_file) == (tmp_path / ".graystem_key").resolve()
    cfg.privacy.key_file = str(tmp_path / "run" / "key")
    with pytest.raises(ConfigError, match="inside the run folder"):
        privacy.bind_key(cfg, tmp_path / "run")
    assert privacy.pseudonym("MRN1", "k") == privacy.pseudonym("MRN1", "k") != privacy.pseudonym("MRN1", "k2")


def test_index_dicom_warns_about_raw_ids_in_paths(identified, tmp_path, capsys):
    from pipeline.tools.index_dicom import main as index_main

    out = tmp_path / "index.csv"
    index_main([str(identified["root"] / "Patients Müller"), "--out", str(out), "--pseudonymize", "--salt", "s"])
    err = capsys.readouterr().err
    assert "contain the raw PatientID" in err


def test_checkpoints_and_configs_are_read_safely():
    """torch.load only with weights_only=True and YAML only with safe_load: a run folder is data, never code."""
    bad = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\((?:[^()]|\([^()]*\))*\)", text):
            if "weights_only=True" not in m.group(0):
                bad.append(f"{path.name}: {m.group(0)}")
        for m in re.finditer(r"yaml\.(?:load|unsafe_load|full_load)\((?:[^()]|\([^()]*\))*\)", text):
            if "SafeLoader" not in m.group(0):
                bad.append(f"{path.name}: {m.group(0)}")
    assert not bad, bad
