"""The CLI in-process: a whole cross-validated run on the smoke config, and one-line errors with exit code 2."""

import csv
import json
from pathlib import Path

import pytest
from conftest import bad_label_manifest

from pipeline.cli import main
from pipeline.demo import make_demo
from pipeline.tools.export import main as export_main
from pipeline.tools.predict import predict_files

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_writes_the_run_folder_contract(smoke_run, small_chest):
    for name in ("config.yaml", "splits.json", "summary.json", "oof_predictions.csv", "test_predictions.csv",
                 "report.md", "metrics.jsonl", "fold_0/best.pt", "fold_1/best.pt", "deployment.json", "samples.json"):
        assert (smoke_run / name).is_file(), name
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert summary["classes"] == ["normal", "pneumonia"]
    assert [f["fold"] for f in summary["folds"]] == [0, 1]
    for f in summary["folds"]:
        assert 0.0 <= f["metrics"]["auroc"] <= 1.0
        assert f["stage"] in ("head", "full")
    assert summary["test"]["auroc"] is not None and "auroc" in summary["test"]["ci95"]

    splits = json.loads((smoke_run / "splits.json").read_text())
    val = [set(f["val_patients"]) for f in splits["folds"]]
    assert not val[0] & val[1]
    assert not (val[0] | val[1]) & set(splits["test_patients"])

    with (smoke_run / "oof_predictions.csv").open() as fh:
        oof = list(csv.DictReader(fh))
    with small_chest.open() as fh:
        manifest = list(csv.DictReader(fh))
    n_dev = sum(r["split"] == "train" for r in manifest)
    assert len(oof) == n_dev  # every development image predicted exactly once, out of fold
    for r in oof:
        assert abs(float(r["prob_normal"]) + float(r["prob_pneumonia"]) - 1) < 1e-5
        assert r["patient_id"] in val[int(r["fold"])]


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    return acc


def test_smoke_run_tensorboard_tags(smoke_run):
    """One event folder per fold (the folds overlay on one chart) plus summary/ for the end-of-run items."""
    from pipeline.results.tracking import Tags

    tb = smoke_run / "tensorboard"
    assert sorted(p.name for p in tb.iterdir()) == ["fold_0", "fold_1", "summary"]
    for fold in ("fold_0", "fold_1"):
        assert len(list((tb / fold).glob("events.out.tfevents.*"))) == 1  # one writer per fold
        acc = _events(tb / fold)
        tags = acc.Tags()
        for tag in (Tags.val("auroc"), Tags.val("loss"), Tags.step("head", "lr"), Tags.step("full", "train_loss"),
                    Tags.train("lr"), Tags.train("loss")):
            assert tag in tags["scalars"], (fold, tag)
        assert len(acc.Scalars(Tags.val("auroc"))) == 2  # one per epoch across both stages
        assert tags["images"] == [Tags.INPUTS]
        img = acc.Images(Tags.INPUTS)[0]
        assert img.width > 64 and img.height > 64  # a grid, not one image
        assert Tags.pr_curve() in acc.PluginTagToContent("pr_curves")
    acc = _events(tb / "summary")
    tags = acc.Tags()
    assert Tags.cv_mean("auroc") in tags["scalars"] and Tags.test("auroc") in tags["scalars"]
    assert Tags.hparam_metric("cv_mean_auroc") in tags["scalars"]
    assert {Tags.figure(n) for n in ("roc", "calibration", "confusion")} <= set(tags["images"])
    assert "config/text_summary" in tags["tensors"]
    assert "_hparams_/experiment" in acc.PluginTagToContent("hparams")


def test_best_checkpoint_rebuilds_the_model(smoke_run):
    import torch

    from pipeline.config import ModelConfig
    from pipeline.model.models import build_model

    ckpt = torch.load(smoke_run / "fold_0" / "best.pt", weights_only=True, map_location="cpu")
    built = build_model(ModelConfig(**ckpt["model"]), 1, pretrained="none")
    built.model.load_state_dict(ckpt["state_dict"])
    assert list(built.norm.mean) == ckpt["normalization"]["mean"]
    assert ckpt["stage"] in ("head", "full")
    assert ckpt["model"]["stem"] == "sum" and ckpt["pixels"]["image_size"] == 64


def test_resume_keeps_finished_folds(copy_run, capsys):
    smoke_run = copy_run
    before = (smoke_run / "fold_0" / "best.pt").stat().st_mtime_ns
    assert main(["--resume", str(smoke_run)]) == 0
    assert (smoke_run / "fold_0" / "best.pt").stat().st_mtime_ns == before
    assert "already finished" in capsys.readouterr().out


def _one_line_error(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_unknown_key_exits_2(capsys, tmp_path):
    err = _one_line_error(capsys, ["--config", "smoke", "--set", "model.backbon=resnet18",
                                   "--output-dir", str(tmp_path / "r")])
    assert "model.backbon" in err


def test_missing_data_path_exits_2(capsys, tmp_path):
    missing = tmp_path / "nowhere" / "labels.csv"
    err = _one_line_error(capsys, ["--config", "smoke", "--set", f"data.manifest={missing}", "--set", "data.demo=null",
                                   "--output-dir", str(tmp_path / "r")])
    assert str(missing) in err


def test_label_not_in_classes_exits_2_and_skip_records_it(capsys, tmp_path, small_chest):
    bad = bad_label_manifest(small_chest, tmp_path)
    err = _one_line_error(capsys, ["--config", "smoke", "--set", f"data.manifest={bad}",
                                   "--output-dir", str(tmp_path / "r"), "--dry-run"])
    assert "row 5" in err and "covid" in err
    run = tmp_path / "r2"
    assert main(["--config", "smoke", "--set", f"data.manifest={bad}", "--set", "data.on_error=skip",
                 "--output-dir", str(run), "--dry-run", "--quiet"]) == 0
    skipped = list(csv.DictReader((run / "skipped.csv").open()))
    assert [s["row"] for s in skipped] == ["5"] and "covid" in skipped[0]["reason"]


def test_torchrun_two_processes_on_cpu(small_chest, tmp_path):
    """torchrun with 2 CPU processes (gloo): rank 0 alone writes the run folder and one event file."""
    import os
    import subprocess
    import sys

    run = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "train.py"), "--config", "smoke", "--set", f"data.manifest={small_chest}",
         "--set", "train.stages.0.epochs=1", "--output-dir", str(run), "--quiet"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (run / "tensorboard").iterdir()) == ["fold_0", "fold_1", "summary"]
    summary = json.loads((run / "summary.json").read_text())
    assert len(summary["folds"]) == 2
    with (run / "oof_predictions.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == sum(r["split"] == "train" for r in csv.DictReader(small_chest.open()))


def test_predict_script_reproduces_the_test_ensemble(smoke_run, small_chest):
    """graystem predict rebuilds the fold models from best.pt and scores like the run's test ensemble."""
    with (smoke_run / "test_predictions.csv").open() as fh:
        expected = list(csv.DictReader(fh))[:3]
    images = [(str(small_chest.parent / r["image"]), None) for r in expected]
    rows, skipped, classes = predict_files(smoke_run, images)
    assert not skipped and classes == ["normal", "pneumonia"]
    for got, want in zip(rows, expected, strict=True):
        assert abs(got["prob_pneumonia"] - float(want["prob_pneumonia"])) < 1e-4


def test_predict_ends_with_one_line_saying_what_it_did(smoke_run, small_chest, tmp_path, capsys):
    from pipeline.tools.predict import main as predict_main

    first = next(csv.DictReader(small_chest.open()))["image"]
    out = tmp_path / "p.csv"
    assert predict_main([str(smoke_run), str(small_chest.parent / first), "--out", str(out)]) == 0
    threshold = json.loads((smoke_run / "summary.json").read_text())["threshold"]
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"scored 1 file(s) (0 skipped) with 2 fold model(s); predicted = pneumonia when "
                    f"P(pneumonia) >= {threshold:.3f} (the run's threshold); wrote {out}")
    assert len(list(csv.DictReader(out.open()))) == 1


def test_unreadable_image_is_skipped_and_recorded(capsys, tmp_path, small_chest):
    rows = list(csv.DictReader(small_chest.open()))
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage")
    rows.append({**rows[0], "image": str(broken), "patient_id": "PBROKEN", "split": "train"})
    manifest = tmp_path / "labels.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            r["image"] = r["image"] if r["image"].startswith("/") else str(small_chest.parent / r["image"])
            w.writerow(r)
    err = _one_line_error(capsys, ["--config", "smoke", "--set", f"data.manifest={manifest}",
                                   "--output-dir", str(tmp_path / "r"), "--dry-run"])
    assert "broken.dcm" in err
    run = tmp_path / "r2"
    assert main(["--config", "smoke", "--set", f"data.manifest={manifest}", "--set", "data.on_error=skip",
                 "--output-dir", str(run), "--dry-run", "--quiet"]) == 0
    skipped = list(csv.DictReader((run / "skipped.csv").open()))
    assert len(skipped) == 1 and skipped[0]["image"] == str(broken) and skipped[0]["reason"]
    splits = json.loads((run / "splits.json").read_text())
    assert "PBROKEN" not in {p for f in splits["folds"] for p in f["val_patients"]}


def test_demo_generation_never_touches_a_users_folder(tmp_path):
    """data.demo left on while data.manifest points at real data: the folder is not rewritten."""
    from pipeline.config import load_config
    from pipeline.demo import ensure_demo_data

    folder = tmp_path / "chest_xray"
    folder.mkdir()
    (folder / "labels.csv").write_text("image,label\nscan.dcm,normal\n")
    (folder / "scan.dcm").write_bytes(b"precious")
    cfg = load_config("chest_xray", [f"data.manifest={folder / 'labels.csv'}"])
    ensure_demo_data(cfg, log=lambda *a: None)
    assert (folder / "scan.dcm").read_bytes() == b"precious"
    assert (folder / "labels.csv").read_text().startswith("image,label\nscan.dcm")


def test_positive_class_decides_the_binary_target(small_chest):
    from pipeline.config import load_config
    from pipeline.data.manifest import load_manifest

    for positive in ("pneumonia", "normal"):
        cfg = load_config("smoke", [f"data.manifest={small_chest}", f"task.positive_class={positive}"])
        samples = load_manifest(cfg).samples
        assert samples and all(s.target == int(s.label == positive) for s in samples)


def test_exported_torchscript_matches_predict(smoke_run, small_chest, tmp_path):
    """The exported ensemble, fed [0, 1] pixels, gives the same probabilities as predict.py on the file."""
    import torch

    from pipeline.config import load_config
    from pipeline.data.transforms import load_transforms

    out = tmp_path / "model.ts"
    assert export_main([str(smoke_run), "--out", str(out)]) == 0
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["task"]["classes"] == ["normal", "pneumonia"] and meta["model"]["folds"] == [0, 1]
    scripted = torch.jit.load(str(out))
    image = str(small_chest.parent / next(csv.DictReader(small_chest.open()))["image"])
    cfg = load_config(str(smoke_run / "config.yaml"))
    x = load_transforms(cfg.data)({"image": image, "frame": None})["image"]
    with torch.no_grad():
        probs = scripted(torch.as_tensor(x)[None])[0]
    rows, _, _ = predict_files(smoke_run, [(image, None)])
    assert abs(float(probs[1]) - rows[0]["prob_pneumonia"]) < 1e-5
    assert abs(float(probs.sum()) - 1) < 1e-6


@pytest.mark.parametrize("task_type", ["multiclass", "multilabel"])
def test_multiclass_and_multilabel_runs(task_type, small_chest, tmp_path):
    """Cross-entropy and masked multi-label paths end to end; scores are per class, blanks are unknown."""
    rows = list(csv.DictReader(small_chest.open()))
    classes = ["a", "b", "c"]
    manifest = tmp_path / "labels.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        if task_type == "multiclass":
            w.writerow(["image", "label", "patient_id", "split"])
            for r in rows:
                w.writerow([small_chest.parent / r["image"], classes[int(r["patient_id"][1:]) % 3], r["patient_id"],
                            r["split"]])
        else:
            w.writerow(["image", "patient_id", "split", *classes])
            for i, r in enumerate(rows):
                k = int(r["patient_id"][1:])
                w.writerow([small_chest.parent / r["image"], r["patient_id"], r["split"],
                            int(r["label"] == "pneumonia"), k % 2, "" if i % 4 == 0 else (k // 2) % 2])
    run = tmp_path / "run"
    assert main(["--config", "smoke", "--set", f"data.manifest={manifest}", "--set", f"task.type={task_type}",
                 "--set", "task.classes=[a, b, c]", "--set", "train.stages.1.epochs=1", "--set", "cv.folds=2",
                 "--output-dir", str(run), "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["folds"][0]["metrics"]["per_class"]) == set(classes)
    assert summary["mean"]["auroc"] is not None
    with (run / "oof_predictions.csv").open() as fh:
        oof = list(csv.DictReader(fh))
    assert {f"prob_{c}" for c in classes} <= set(oof[0])
    assert (run / "roc_per_class.png").is_file()
    assert summary["operating_points"] == [] and summary["test"]["ppv"] is not None
    if task_type == "multiclass":
        assert all(abs(sum(float(r[f"prob_{c}"]) for c in classes) - 1) < 1e-4 for r in oof)
        assert (run / "confusion.png").is_file()
        assert sum(map(sum, summary["test"]["confusion_matrix"])) == summary["test"]["n"]
    else:
        assert any(r["label_c"] == "" for r in oof)  # unknown labels survive as blanks


def test_unavailable_weights_stop_before_any_work(capsys, tmp_path, small_chest):
    err = _one_line_error(capsys, ["--config", "smoke", "--set", f"data.manifest={small_chest}",
                                   "--set", "model.backbone=resnet50", "--set", "model.pretrained=timm",
                                   "--output-dir", str(tmp_path / "r"), "--dry-run"])
    assert "resnet50" in err and "model.pretrained" in err
    assert not (tmp_path / "r" / "splits.json").exists()


def test_all_frames_of_a_cine_stay_in_one_fold(tmp_path):
    """frames: all expands every cine into one sample per frame; folds are drawn on patients."""
    from pipeline.config import load_config
    from pipeline.data.cv import make_splits
    from pipeline.data.manifest import load_manifest
    from pipeline.io import count_frames

    make_demo(tmp_path, which=("ultrasound",), n_scale=0.4)
    labels = tmp_path / "ultrasound" / "labels.csv"
    cfg = load_config("ultrasound", [f"data.manifest={labels}", "cv.folds=3"])
    rows = load_manifest(cfg).samples
    files = {r.image for r in rows}
    assert len(rows) == sum(count_frames(f) for f in files) > len(files)
    splits = make_splits(rows, cfg)
    fold_of = {}
    for k in range(3):
        _, val = splits.fold_indices(rows, k)
        for i in val:
            assert fold_of.setdefault(rows[i].image, k) == k
            assert fold_of.setdefault(rows[i].patient_id, k) == k
