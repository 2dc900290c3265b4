"""Planning: fingerprints of real files (cine and single-frame DICOM, PNG, NIfTI) checked against their headers,
plans whose every key has a reason, that validate as configs and pass --dry-run, and budgets that move the plan
only upwards."""

import csv
import json
import logging
import statistics
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import yaml
from PIL import Image

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.demo import make_demo
from pipeline.errors import ConfigError
from pipeline.tools.plan import parse_budget
from pipeline.train.fingerprint import fingerprint
from pipeline.train.planner import SIZES, plan_config, to_yaml
from pipeline.train.speed import SpeedProbe, _timed


def _manifest(folder: Path, rows: list[tuple[str, str, str]]) -> Path:
    path = folder / "labels.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label", "patient_id"])
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def demo_us(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    make_demo(root, which=("ultrasound",), n_scale=0.1)
    return root / "ultrasound"


def test_fingerprint_cine_dicom(demo_us, tmp_path):
    files = sorted((demo_us / "studies").glob("*.dcm"))
    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    manifest = _manifest(tmp_path, [(str(f), "lesion" if k % 2 else "normal", f"P{k // 2}")
                                    for k, f in enumerate(files)])
    fp = fingerprint(manifest)
    frames = [int(h.NumberOfFrames) for h in heads]
    assert fp.modality == "ultrasound" and fp.modality_source == "DICOM Modality tag US"
    assert fp.frames_max == max(frames) > 1 and fp.samples == round(len(files) * statistics.fmean(frames))
    assert fp.bits == heads[0].BitsStored and fp.formats == {"dicom": len(files)}
    # the image size after the ultrasound crop: the tissue region of SequenceOfUltrasoundRegions
    regions = [h.SequenceOfUltrasoundRegions[0] for h in heads]
    shorts = [min(r.RegionLocationMaxY1 - r.RegionLocationMinY0, r.RegionLocationMaxX1 - r.RegionLocationMinX0) + 1
              for r in regions]
    assert fp.short_side_median == int(statistics.median(shorts)) < min(heads[0].Rows, heads[0].Columns)
    assert fp.patients == (len(files) + 1) // 2 and fp.patient_ids


def test_fingerprint_single_frame_dicom(small_chest):
    fp = fingerprint(small_chest)
    rows = list(csv.DictReader(small_chest.open()))
    heads = [pydicom.dcmread(small_chest.parent / r["image"], stop_before_pixels=True) for r in rows]
    assert fp.modality == "xray" and fp.modality_source.startswith("DICOM Modality tag")
    assert fp.frames_max == 1 and fp.samples == fp.images == len(rows)
    assert fp.classes == ("normal", "pneumonia") and fp.patients == len({r["patient_id"] for r in rows})
    assert fp.class_counts == tuple(sum(r["label"] == c for r in rows) for c in fp.classes)
    assert fp.test_rows == sum(r["split"] == "test" for r in rows)
    assert fp.bits == statistics.mode(h.BitsStored for h in heads)
    assert fp.short_side_median == int(statistics.median(min(h.Rows, h.Columns) for h in heads))


def test_fingerprint_png_and_nifti(tmp_path):
    png_dir = tmp_path / "chest_pngs"
    png_dir.mkdir()
    sizes = [(40, 60), (50, 70), (64, 64)]
    for k, (h, w) in enumerate(sizes):
        Image.fromarray((np.arange(h * w) % 251).reshape(h, w).astype(np.uint8)).save(png_dir / f"{k}.png")
    fp = fingerprint(_manifest(png_dir, [(f"{k}.png", "a" if k else "b", "") for k in range(3)]))
    assert fp.formats == {"png": 3} and fp.bits == 8 and fp.frames_max == 1
    assert fp.modality == "xray" and "chest" in fp.modality_source  # from the folder name
    assert fp.short_side_median == 50 and fp.long_side_median == 64
    assert not fp.patient_ids and fp.patients == 3 and fp.class_counts == (2, 1)

    nii_dir = tmp_path / "volumes"
    nii_dir.mkdir()
    for k in range(2):
        nib.save(nib.Nifti1Image(np.random.default_rng(k).random((32, 48, 5)).astype(np.float32), np.eye(4)),
                 nii_dir / f"v{k}.nii.gz")
    fp = fingerprint(_manifest(nii_dir, [("v0.nii.gz", "x", "p0"), ("v1.nii.gz", "y", "p1")]))
    assert fp.formats == {"nifti": 2} and fp.frames_max == 5 and fp.samples == 10
    assert fp.short_side_median == 32 and fp.modality == "unknown"


PROBE = SpeedProbe(backbone="tf_efficientnet_lite0", device="cpu", threads=2, sizes=(128, 224),
                   train_s_per_image=(0.025, 0.067), infer_s_per_image=(0.0045, 0.022), seconds=5.0)


def test_plan_keys_have_reasons_and_validate(small_chest, tmp_path):
    fp = fingerprint(small_chest)
    plan = plan_config(fp, PROBE, 600, name="chest")
    assert plan.keys and all(reason.strip() for _, reason in plan.keys.values())
    text = to_yaml(plan, "test plan")
    # every planned line carries its comment: leaves inline, a planned list or section on its own line
    for key, (_, reason) in plan.keys.items():
        assert reason in text, key
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    cfg = load_config(str(path))
    assert cfg.data.image_size == plan.value("data.image_size") and cfg.augment.flip == 0.0
    assert cfg.inference.tta == "none" and cfg.train.stages[1].epochs == plan.value("train.stages")[1]["epochs"]
    # the synthetic demo's patients are renders of one template: near copies by hash (smoke.yaml says so too)
    assert main(["--config", str(path), "--set", "data.near_duplicates=warn", "--dry-run", "--quiet"]) == 0


def _size_epochs(plan) -> tuple[int, int]:
    return plan.value("data.image_size"), plan.value("train.stages")[1]["epochs"]


def test_more_budget_never_gives_smaller_images_or_fewer_epochs(small_chest):
    fp = fingerprint(small_chest)
    last = (0, 0)
    for budget in (30, 60, 120, 300, 600, 1200, 3600, 4 * 3600, 24 * 3600):
        plan = plan_config(fp, PROBE, budget)
        got = _size_epochs(plan)
        assert got[0] >= last[0] and got[1] >= last[1], (budget, got, last)
        if budget >= 600:
            assert plan.predicted_s <= 0.9 * budget
        last = got
    assert last[0] == max(s for s in SIZES if s <= fp.short_side_median)  # no upsampling past native


def test_budget_parsing_and_config_auto(small_chest, tmp_path, capsys):
    assert parse_budget("30m") == 1800 and parse_budget("1h30m") == 5400 and parse_budget("90s") == 90
    assert parse_budget("2") == 120
    with pytest.raises(ConfigError):
        parse_budget("soon")
    assert main(["--config", "smoke", "--budget", "5m", "--dry-run"]) == 2
    assert "--config auto" in capsys.readouterr().err
    run = tmp_path / "auto"
    assert main(["--config", "auto", "--set", f"data.manifest={small_chest}", "--set", "train.threads=1",
                 "--set", "data.near_duplicates=warn",
                 "--budget", "3m", "--dry-run",
                 "--quiet", "--output-dir", str(run)]) == 0
    record = json.loads((run / "plan.json").read_text())
    assert record["budget_s"] == 180 and record["fingerprint"]["images"] == len(small_chest.read_text().splitlines()) - 1
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["image_size"] == record["keys"]["data.image_size"]["value"]


def test_plan_command_writes_a_config_and_its_record(small_chest, tmp_path):
    from pipeline.tools.plan import main as plan_main

    out, record = tmp_path / "my.yaml", tmp_path / "plan.json"
    assert plan_main([str(small_chest), "--budget", "10m", "--threads", "1", "--out", str(out),
                      "--json", str(record)]) == 0
    cfg = load_config(str(out))
    data = json.loads(record.read_text())
    assert cfg.data.image_size == data["keys"]["data.image_size"]["value"] and data["probe"]["threads"] == 1
    # 224 px is timed when the search priced a size above 128 px, so always when the plan went past it
    sizes = data["probe"]["sizes"]
    assert sizes in ([128], [128, 224]) and (sizes == [128, 224] or cfg.data.image_size <= 128)
    assert len(data["probe"]["train_s_per_image"]) == len(sizes) == len(data["probe"]["infer_s_per_image"])
    assert out.read_text().startswith("# Planned by `graystem plan` for a 10-minute budget")
    assert plan_main([str(tmp_path / "missing.csv")]) == 2


def _probe(backbone, scale):
    return SpeedProbe(backbone=backbone, device="cpu", threads=2, sizes=(128, 224),
                      train_s_per_image=(0.025 * scale, 0.067 * scale),
                      infer_s_per_image=(0.0045 * scale, 0.022 * scale), seconds=5.0)


def test_backbone_ladder_climbs_only_past_each_pretraining_resolution(small_chest):
    """Lite1/Lite2 (opt-in) are probed only when Lite0 reached its 224 px within the budget, each used from its
    own pretraining resolution (timm's config: 240, 260), and more budget never shrinks the image."""
    fp = fingerprint(small_chest)
    fp = type(fp)(**{**fp.__dict__, "short_side_median": 512})  # films large enough for every rung
    last, seen = (0, 0), []
    for budget in (120, 600, 1800, 3600, 4 * 3600, 12 * 3600, 48 * 3600):
        asked = []
        queue = [_probe("tf_efficientnet_lite1", 1.5), _probe("tf_efficientnet_lite2", 2.2)]

        def more(queue=queue, asked=asked):
            asked.append(queue[0].backbone if queue else None)
            return queue.pop(0) if queue else None

        plan = plan_config(fp, PROBE, budget, more=more)
        size, backbone = plan.value("data.image_size"), plan.value("model.backbone")
        epochs = plan.value("train.stages")[1]["epochs"]
        assert size >= last[0] and (size > last[0] or epochs >= last[1]), (budget, size, epochs, last)
        if size < 224:  # Lite0 below its pretraining resolution: the larger backbones were not even probed
            assert backbone == "tf_efficientnet_lite0" and not asked
        if backbone == "tf_efficientnet_lite1":
            assert size == 240 and asked == ["tf_efficientnet_lite1", "tf_efficientnet_lite2"]
        if backbone == "tf_efficientnet_lite2":
            assert size >= 260
        assert "pretrained at" in plan.keys["model.backbone"][1]
        seen.append(backbone)
        last = (size, epochs)
    assert seen[0] == "tf_efficientnet_lite0" and seen[-1] == "tf_efficientnet_lite2" and last[0] == 512


def test_the_budget_covers_every_seed(small_chest):
    fp = fingerprint(small_chest)
    one, three = plan_config(fp, PROBE, 300), plan_config(fp, PROBE, 300, repeats=3)
    assert three.predicted_s <= 0.9 * 300 and "for 3 seeds" in three.keys["data.image_size"][1]
    assert _size_epochs(three) < _size_epochs(one)


def test_planning_time_counts_against_the_budget_of_a_planned_run(small_chest):
    """`--config auto` spends part of the budget planning: the plan prices it in and fits what is left."""
    fp = fingerprint(small_chest)
    fresh, late = plan_config(fp, PROBE, 300), plan_config(fp, PROBE, 300, spent_s=120)
    assert late.predicted_s <= 0.9 * 300 and "120 s of planning included" in late.keys["data.image_size"][1]
    assert _size_epochs(late) < _size_epochs(fresh)
    # what is left after planning buys what a fresh plan of that much (at the same 90% share) buys
    left = plan_config(fp, PROBE, 300 - 120 / 0.9)
    assert (late.value("data.image_size"), late.value("train.stages")) == \
        (left.value("data.image_size"), left.value("train.stages"))
    assert late.predicted_s == pytest.approx(left.predicted_s + 120)


def test_the_probe_times_the_steady_state_after_its_warm_up():
    """A step's speed ramps up in a new process: the probe warms up for a time, then takes the median step, so
    neither the slow first steps nor one stalled step set the plan."""
    durations = iter([0.05] * 3 + [0.01] * 6 + [0.2] + [0.01] * 50)

    def step():
        time.sleep(next(durations))

    t = _timed(step, warmup_s=0.12, measure_s=0.05, min_steps=5)
    assert 0.009 <= t < 0.02  # the slow start and the stalled step left out (their mean would be 0.03)


def test_the_larger_probe_size_is_timed_only_when_the_plan_goes_above_the_first(small_chest):
    """make_plan times 224 px only when the plan made with the 128 px timing alone chose larger images: that
    timing underprices larger images (their pixels' share of the 128 px cost), so a plan that stops at or below
    128 px with it is exactly the plan that both timings give, and a plan above 128 px with both timings is
    above it with one too."""
    fp = fingerprint(small_chest)
    fp = type(fp)(**{**fp.__dict__, "short_side_median": 512})
    first = SpeedProbe(**{**PROBE.__dict__, "sizes": (128,), "train_s_per_image": PROBE.train_s_per_image[:1],
                          "infer_s_per_image": PROBE.infer_s_per_image[:1]})
    second = SpeedProbe(**{**PROBE.__dict__, "sizes": (224,), "train_s_per_image": PROBE.train_s_per_image[1:],
                           "infer_s_per_image": PROBE.infer_s_per_image[1:]})
    assert first.with_sizes(second) == SpeedProbe(**{**PROBE.__dict__, "seconds": 10.0})
    outcomes = []
    for budget in range(60, 4 * 3600, 60):
        alone, both = plan_config(fp, first, budget), plan_config(fp, PROBE, budget)
        needs_larger = alone.value("data.image_size") > 128
        outcomes.append(needs_larger)
        if not needs_larger:
            assert alone.keys == both.keys and alone.predicted_s == both.predicted_s, budget
        assert both.value("data.image_size") <= 128 or needs_larger, budget
    assert True in outcomes and False in outcomes  # the budgets cover both cases


def test_probe_fit_is_exact_at_probed_sizes_and_never_negative():
    probe = _probe("tf_efficientnet_lite0", 1.0)
    probe = SpeedProbe(**{**probe.__dict__, "train_s_per_image": (0.0147, 0.0593)})  # 224 px superlinear (2 CPU threads)
    assert probe.train_time(128) == pytest.approx(0.0147) and probe.train_time(224) == pytest.approx(0.0593)
    assert 0 < probe.train_time(64) == pytest.approx(0.0147 / 4)  # below the smallest: in proportion to the pixels
    assert probe.train_time(160) < probe.train_time(192) < probe.train_time(224) < probe.train_time(256)


def test_plan_benchmark_prints_json_alone_on_stdout(tmp_path, monkeypatch, capsys):
    """`graystem benchmark --suite plan` prints one JSON object on stdout; the runs' own console lines (a quiet
    run still warns) go to stderr. The trainer is replaced by one that logs and records a plan like a run."""
    import pipeline.cli
    from pipeline.logs import LOGGER, setup_logging
    from pipeline.tools.bench_plan import main_plan

    def fake_train(argv):
        setup_logging(quiet=True)
        logging.getLogger(LOGGER).warning("warning: near copies under different labels")
        run = Path(argv[argv.index("--output-dir") + 1])
        run.mkdir(parents=True)
        (run / "plan.json").write_text(json.dumps({"predicted_s": 50.0, "took_s": 45.0, "took_over_budget": 0.75}))
        return 0

    monkeypatch.setattr(pipeline.cli, "main", fake_train)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n")
    assert main_plan("1m", str(manifest), None) == 0
    out, err = capsys.readouterr()
    record = json.loads(out)
    assert [r["took_over_budget"] for r in record["runs"]] == [0.75] and record["runs"][0]["budget_s"] == 60
    assert "near copies" in err and "near copies" not in out
