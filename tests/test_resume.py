"""Runs that survive a kill and spread over processes: resume mid-fold after SIGKILL, every fold as its own
process then --aggregate (both identical to one uninterrupted run), cache_features head stages, precision auto."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.cli import main
from pipeline.results.tracking import Tags

ROOT = Path(__file__).resolve().parents[1]
# three head epochs leave time to kill the run between two checkpoints of one stage
STAGES = ["--set", "train.stages.0.epochs=3", "--set", "train.stages.1.epochs=2"]


@pytest.fixture(scope="module")
def manifest(small_chest) -> Path:
    return small_chest


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _train(*args) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *args, "--quiet"]


def _config(manifest) -> list[str]:
    return ["--config", "smoke", "--set", f"data.manifest={manifest}", *STAGES]


@pytest.fixture(scope="module")
def uninterrupted(manifest, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "whole"
    proc = subprocess.run(_train(*_config(manifest), "--output-dir", str(run)), env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run


def _results(run: Path) -> tuple:
    s = json.loads((run / "summary.json").read_text())
    return s["folds"], s["test"]


def _epoch_records(run: Path) -> list[tuple]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["fold"], r["epoch"], r["train_loss"]) for r in lines if r["event"] == "epoch"]


def test_resume_after_sigkill_mid_fold_matches_an_uninterrupted_run(manifest, uninterrupted, tmp_path):
    run = tmp_path / "killed"
    proc = subprocess.Popen(_train(*_config(manifest), "--output-dir", str(run)), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = run / "fold_0" / "last.pt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert last.exists(), "the run never wrote fold_0/last.pt"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "fold_0" / "result.json").exists()  # killed inside fold 0
    saved = torch.load(last, weights_only=True)
    assert saved["fold"] == 0

    resumed = subprocess.run(_train("--resume", str(run)), env=_env(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _results(run) == _results(uninterrupted)
    assert not (run / "fold_0" / "last.pt").exists()  # removed once the fold's result.json is written
    # epochs redone after the kill are logged once: the same records as the uninterrupted run
    assert [r[:2] for r in _epoch_records(run)] == [r[:2] for r in _epoch_records(uninterrupted)]
    assert _epoch_records(run) == _epoch_records(uninterrupted)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard" / "fold_0"))
    acc.Reload()
    assert [e.step for e in acc.Scalars(Tags.val("auroc"))] == [1, 2, 3, 4, 5]
    steps = [e.step for e in acc.Scalars(Tags.step("head", "train_loss"))]
    assert steps == sorted(set(steps))


BUSI = ROOT.parent / "shared" / "data" / "busi"


@pytest.fixture(scope="module")
def copies_manifest(tmp_path_factory) -> Path:
    """Real ultrasound images without patient ids (BUSI) plus 5 exact copies under new names: the copies join
    their originals' groups, so every process of a run must read the same groups back."""
    if not (BUSI / "manifest.csv").is_file():
        pytest.skip("the shared BUSI images are not beside this checkout")
    import shutil

    root = tmp_path_factory.mktemp("busi")
    rows = []
    for label in ("benign", "malignant"):
        for k in range(1, 21):
            src = BUSI / "images" / label / f"{label}_{k}.png"
            shutil.copy(src, root / src.name)
            rows.append((src.name, label))
    for name, label in rows[:3] + rows[20:22]:
        shutil.copy(root / name, root / f"copy_of_{name}")
        rows.append((f"copy_of_{name}", label))
    path = root / "labels.csv"
    path.write_text("image,label\n" + "".join(f"{n},{lab}\n" for n, lab in rows))
    return path


def _busi_config(manifest) -> list[str]:
    return ["--config", "smoke", "--set", f"data.manifest={manifest}", "--set", "task.classes=[benign, malignant]",
            "--set", "train.stages.0.epochs=1", "--set", "train.stages.1.epochs=1", "--set", "report.cam_panel=false"]


def test_folds_as_separate_processes_then_aggregate_match_one_run(copies_manifest, tmp_path):
    whole = tmp_path / "whole"
    assert main([*_busi_config(copies_manifest), "--output-dir", str(whole), "--quiet"]) == 0
    run = tmp_path / "spread"
    procs = [subprocess.Popen(_train(*_busi_config(copies_manifest), "--output-dir", str(run), "--fold", str(k)),
                              env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for k in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    assert not (run / "summary.json").exists()  # fold processes write only their own fold's files

    agg = subprocess.run(_train("--aggregate", str(run)), env=_env(), capture_output=True, text=True, timeout=300)
    assert agg.returncode == 0, agg.stderr[-2000:]
    assert _results(run) == _results(whole)
    assert sorted(_epoch_records(run)) == sorted(_epoch_records(whole))
    for name in ("report.md", "oof_predictions.csv", "deployment.json"):  # no split column: no test set
        assert (run / name).is_file()
    # the copies share their originals' groups in what the run saved, and the audit draws the very same folds
    groups = {}
    for rec in json.loads((run / "samples.json").read_text()):
        groups.setdefault(rec["group"], []).append(rec["row"])
    assert sum(len(rows) == 2 for rows in groups.values()) == 5
    from pipeline.tools.audit import main as audit_main

    out = tmp_path / "audit"
    audit_main([*_busi_config(copies_manifest)[:6], "--out", str(out)])
    (report,) = out.glob("*.json")
    assert json.loads(report.read_text())["splits"] == json.loads((run / "splits.json").read_text())


def test_aggregate_names_missing_folds_and_a_differing_config_is_refused(manifest, tmp_path, capsys):
    run = tmp_path / "partial"
    assert main([*_config(manifest), "--set", "train.stages.0.epochs=1", "--set", "train.stages.1.epochs=1",
                 "--output-dir", str(run), "--fold", "1", "--quiet"]) == 0
    assert main(["--aggregate", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --aggregate") and "fold(s) 0 of 2 not finished" in err
    assert len(err.splitlines()) == 1

    assert main([*_config(manifest), "--set", "train.stages.0.lr=0.01", "--output-dir", str(run),
                 "--fold", "0", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "config.yaml differs" in err and "train.stages" in err and len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def head_run(manifest, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "head"
    rc = main(["--config", "smoke", "--set", f"data.manifest={manifest}", "--set", "train.precision=auto",
               "--set", "train.stages=[{name: head, train: head, epochs: 2, lr: 0.003, cache_features: true}]",
               "--output-dir", str(run), "--quiet"])
    assert rc == 0
    return run


def test_cache_features_stage_trains_only_the_head(head_run):
    from pipeline.config import ModelConfig
    from pipeline.model.models import build_model

    result = json.loads((head_run / "fold_0" / "result.json").read_text())
    assert all(0 < h["train_loss"] < 10 for h in result["history"])  # finite
    assert len(result["history"]) == 2
    trained = torch.load(head_run / "fold_0" / "best.pt", weights_only=True)["state_dict"]
    fresh = build_model(ModelConfig(backbone="tf_efficientnet_lite0", stem="sum"), 1).model.state_dict()
    changed = {k for k in fresh if not torch.equal(fresh[k], trained[k])}
    assert changed == {"classifier.weight", "classifier.bias"}  # BatchNorm statistics untouched too
    stage = [json.loads(x) for x in (head_run / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["event"] == "stage_start"]
    assert stage and all(s["cache_features"] for s in stage)


def test_precision_auto_picks_a_measured_candidate_and_records_it(head_run):
    choice = json.loads((head_run / "precision.json").read_text())
    summary = json.loads((head_run / "summary.json").read_text())
    assert summary["precision"] == choice and choice["auto"] is True
    cands = choice["candidates"]
    assert {(c["precision"], c["channels_last"]) for c in cands} >= {("fp32", False), ("fp32", True),
                                                                      ("bf16", False), ("bf16", True)}
    best = max((c for c in cands if c["finite_loss"] and c["images_per_s"]), key=lambda c: c["images_per_s"])
    assert (choice["precision"], choice["channels_last"]) == (best["precision"], best["channels_last"])


def test_cache_features_only_with_a_head_stage():
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="cache_features=true: only for a stage with train: head"):
        load_config("smoke", ["train.stages.1.cache_features=true"])
