"""`graystem benchmark --suite scale`: the numbers issue 9 sets targets for, measured side by side in one
process (ratios are what counts) and printed as ONE JSON object; progress lines go to stderr.

decode:         images/s over >= 200 real-size radiographs (pydicom-data's RG1_J2KR / RG1_UNCR, 1955x1841, copied
                with distinct PatientIDs): uncached (one process, data.cache none), first decode through the
                process pool into a disk cache (data.cache disk, train.threads = all cores), and reads served
                by that disk cache. The headline rates are the JPEG 2000 set's.
frozen_stage:   seconds per epoch of the head stage on the demo data (chest_xray config): plain (backbone
                forward under no_grad + augmentation every epoch) vs cache_features (features once, then the
                head on them); the one-time feature pass is reported apart.
data_wait_fraction: share of a full-training step spent waiting for the loader (demo config at 128 px and 64 px).
near_duplicates: perceptual hashes/s of the disk cache's images and seconds to search 100,000 hashes.
precision_auto: the candidates' training images/s and the choice (train.precision auto).
machine:        CPU model, cores, torch version, device.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

N_PER_SET = 100  # x 2 sets = 200 files
UNCACHED_S = 40.0  # seconds of uncached decoding per set at most


def say(msg: str) -> None:
    print(f"[scale] {msg}", file=sys.stderr, flush=True)


def machine(device) -> dict:
    import torch

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out = {"cpu": model, "cores": cores, "cpu_count": os.cpu_count(), "torch": torch.__version__,
           "torch_threads": torch.get_num_threads(), "device": str(device), "python": platform.python_version(),
           "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def _write_dicoms(folder: Path) -> Path:
    """200 copies of the two RG1 radiographs, each its own patient; returns the manifest."""
    import pydicom
    from pydicom.data import get_testdata_file

    rows = []
    for tag, fname in (("j2k", "RG1_J2KR.dcm"), ("unc", "RG1_UNCR.dcm")):
        ds = pydicom.dcmread(get_testdata_file(fname))
        for i in range(N_PER_SET):
            ds.PatientID = f"{tag.upper()}{i:04d}"
            name = f"{tag}_{i:04d}.dcm"
            ds.save_as(str(folder / name))
            rows.append({"image": name, "label": ["normal", "pneumonia"][i % 2], "patient_id": ds.PatientID})
    manifest = folder / "labels.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "label", "patient_id"])
        w.writeheader()
        w.writerows(rows)
    return manifest


def _set_if(cfg, section: str, key: str, value) -> bool:
    """Set cfg.<section>.<key> when this version of the config has the key (the disk cache and train.threads
    come from a concurrent branch)."""
    sec = getattr(cfg, section)
    if key not in type(sec).model_fields:
        return False
    try:
        setattr(sec, key, value)
    except Exception:  # a value this version does not accept (data.cache: disk before the cache exists)
        return False
    return True


def bench_decode(tmp: Path) -> dict:
    import torch

    from pipeline.config import load_config
    from pipeline.data.datasets import decode_samples
    from pipeline.data.manifest import load_manifest

    folder = tmp / "dicoms"
    folder.mkdir()
    say(f"writing {2 * N_PER_SET} radiograph DICOMs (RG1 JPEG 2000 and uncompressed copies)")
    manifest = _write_dicoms(folder)
    base = load_config("chest_xray", [f"data.manifest={manifest}", "data.demo=null"])
    samples = load_manifest(base).samples
    sets = {"jpeg2000": [s for s in samples if Path(s.image).name.startswith("j2k")],
            "uncompressed": [s for s in samples if Path(s.image).name.startswith("unc")]}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out = {"n_files": len(samples), "image_size": base.data.image_size, "by_set": {}}
    threads0 = torch.get_num_threads()
    for name, subset in sets.items():
        row = {"n": len(subset)}
        # uncached: one process, nothing kept
        cfg = base.model_copy(deep=True)
        cfg.data.cache = "none"
        has_threads = _set_if(cfg, "train", "threads", 1)
        torch.set_num_threads(1)
        say(f"decode {name}: uncached, one process (up to {len(subset)} files or {UNCACHED_S:.0f} s)")
        # a time cap: at 1.5 JPEG 2000 images/s the whole set alone would take most of the 10-minute budget
        done, t0 = 0, time.perf_counter()
        while done < len(subset) and (done < 10 or time.perf_counter() - t0 < UNCACHED_S):
            decode_samples(cfg, subset[done:done + 5], progress=False)
            done += len(subset[done:done + 5])
        row["uncached_img_s"] = round(done / (time.perf_counter() - t0), 3)
        row["uncached_n"] = done
        torch.set_num_threads(threads0)
        cfg = base.model_copy(deep=True)
        if not _set_if(cfg, "data", "cache", "disk") or not _set_if(cfg, "data", "cache_dir", str(tmp / "cache")):
            row["disk_cache_img_s"] = row["process_pool_img_s"] = None
            row["not_available"] = "data.cache: disk / data.cache_dir are not in this version's config"
            out["by_set"][name] = row
            continue
        _set_if(cfg, "train", "threads", cores)
        say(f"decode {name}: first decode through the process pool ({cores} processes) into the disk cache")
        t0 = time.perf_counter()
        decode_samples(cfg, subset, progress=False)
        row["process_pool_img_s"] = round(len(subset) / (time.perf_counter() - t0), 3)
        if not has_threads:
            row["process_pool_note"] = "train.threads not in this version's config: the decoder's default pool"
        say(f"decode {name}: second pass, served by the disk cache")
        t0 = time.perf_counter()
        decode_samples(cfg, subset, progress=False)
        row["disk_cache_img_s"] = round(len(subset) / (time.perf_counter() - t0), 3)
        out["by_set"][name] = row
    j2k = out["by_set"]["jpeg2000"]
    out["uncached_img_s"] = j2k["uncached_img_s"]
    out["disk_cache_img_s"] = j2k.get("disk_cache_img_s")
    out["process_pool_img_s"] = j2k.get("process_pool_img_s")
    out["ratio_disk_vs_uncached"] = (round(j2k["disk_cache_img_s"] / j2k["uncached_img_s"], 1)
                                     if j2k.get("disk_cache_img_s") else None)
    if "not_available" in j2k:
        out["not_available"] = j2k["not_available"]
    shutil.rmtree(folder, ignore_errors=True)
    return out


class _Fold:
    """The demo config's fold 0 as the training loop sees it: model, loaders, loss."""

    def __init__(self, cfg, device):
        import torch

        from pipeline.data.cv import make_splits
        from pipeline.data.datasets import decode_samples, sample_dataset
        from pipeline.data.manifest import load_manifest
        from pipeline.data.transforms import sample_transforms
        from pipeline.model.models import build_model
        from pipeline.train.engine import make_loss
        from pipeline.train.run import _loader

        self.cfg, self.device = cfg, device
        manifest = load_manifest(cfg)
        self.decoded = decode_samples(cfg, manifest.samples)
        splits = make_splits(self.decoded.samples, cfg)
        self.train_idx, self.val_idx = splits.fold_indices(self.decoded.samples, 0)
        torch.manual_seed(0)
        built = build_model(cfg.model, cfg.task.num_outputs)
        self.model = built.model.to(device)
        if cfg.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        tf = sample_transforms(cfg, built.norm.mean, built.norm.std, train=True)
        eval_tf = sample_transforms(cfg, built.norm.mean, built.norm.std, train=False)
        self.train_loader = _loader(cfg, sample_dataset(cfg, self.decoded, self.train_idx, tf), True, device)
        self.plain_loaders = lambda: tuple(
            _loader(cfg, sample_dataset(cfg, self.decoded, idx, eval_tf), False, device)
            for idx in (self.train_idx, self.val_idx))
        self.loss_fn = make_loss(cfg.task.type)


def bench_frozen(fold: _Fold) -> dict:
    from pipeline.model.models import set_trainable
    from pipeline.train.engine import train_one_epoch
    from pipeline.train.features import compute_features, feature_epoch
    from pipeline.train.trainer import build_optimizer

    cfg, model = fold.cfg, fold.model
    stage = cfg.train.stages[0].model_copy(update={"epochs": 1})
    frozen = set_trainable(model, "head")
    opt, sched = build_optimizer(model, stage, len(fold.train_loader))
    say(f"frozen stage: plain epoch ({len(fold.train_idx)} images, {cfg.data.image_size} px)")
    stats = train_one_epoch(model, fold.train_loader, opt, fold.loss_fn, fold.device, frozen=frozen,
                            channels_last=cfg.train.channels_last, backbone_no_grad=True)
    t0 = time.perf_counter()
    train_one_epoch(model, fold.train_loader, opt, fold.loss_fn, fold.device, frozen=frozen,
                    channels_last=cfg.train.channels_last, backbone_no_grad=True)
    plain = time.perf_counter() - t0
    say("frozen stage: feature pass, then cached-feature epochs")
    t0 = time.perf_counter()
    train_plain, _ = fold.plain_loaders()
    x, y = compute_features(model, train_plain, fold.device)
    feature_pass = time.perf_counter() - t0
    opt, sched = build_optimizer(model, stage, max(1, len(x) // cfg.train.batch_size))
    feature_epoch(model, x, y, opt, fold.loss_fn, cfg.train.batch_size)  # warm-up
    n = 20
    t0 = time.perf_counter()
    for _ in range(n):
        feature_epoch(model, x, y, opt, fold.loss_fn, cfg.train.batch_size)
    cached = (time.perf_counter() - t0) / n
    return {"images": len(fold.train_idx), "image_size": cfg.data.image_size,
            "plain_s_per_epoch": round(plain, 3), "cached_features_s_per_epoch": round(cached, 5),
            "feature_pass_s": round(feature_pass, 3), "ratio": round(plain / cached, 1),
            "plain_first_epoch_img_s": round(stats["images_per_s"], 1)}


def bench_data_wait(fold: _Fold, max_steps: int = 6) -> dict:
    """Full training steps; time blocked in the loader's next() over the whole step time."""
    import torch

    from pipeline.model.models import set_trainable
    from pipeline.train.engine import _to_device, autocast

    cfg, model, device = fold.cfg, fold.model, fold.device
    set_trainable(model, "all")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    wait = total = 0.0
    steps = 0
    it = iter(fold.train_loader)
    t_step = time.perf_counter()
    while steps < max_steps + 1:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(fold.train_loader)
            continue
        waited = time.perf_counter() - t0
        x, y = _to_device(batch, device, cfg.train.channels_last)
        with autocast(device, cfg.train.precision):
            loss = fold.loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        if steps:  # the first step warms up kernels and the loader
            wait += waited
            total += now - t_step
        t_step = now
        steps += 1
    return {"image_size": cfg.data.image_size, "batch_size": cfg.train.batch_size, "steps": max_steps,
            "num_workers": cfg.data.num_workers, "wait_s": round(wait, 3), "step_s": round(total, 3),
            "fraction": round(wait / total, 4) if total else None}


def run_suite(device_name: str = "auto") -> dict:
    from monai.data.meta_obj import set_track_meta

    from pipeline.config import load_config
    from pipeline.demo import make_demo
    from pipeline.distributed import select_device
    from pipeline.tools.bench_near_duplicates import bench_near_duplicates
    from pipeline.train import precision as precision_auto

    started = time.perf_counter()
    set_track_meta(False)
    device = select_device(device_name)
    out = {"suite": "scale", "machine": machine(device)}
    with tempfile.TemporaryDirectory(prefix="graystem-scale-") as tmp:
        tmp = Path(tmp)
        out["decode"] = bench_decode(tmp)
        say("near duplicates: hashing the disk cache's images, searching 100,000 hashes")
        out["near_duplicates"] = bench_near_duplicates(tmp / "cache")
        say("demo data (chest_xray)")
        labels = make_demo(tmp / "demo", which=("chest_xray",))["chest_xray"]
        for size in (128, 64):
            cfg = load_config("chest_xray", [f"data.manifest={labels}", "data.demo=null",
                                             f"data.image_size={size}", f"train.device={device_name}"])
            say(f"demo config at {size} px: decoding and building fold 0")
            fold = _Fold(cfg, device)
            if size == 128:
                out["frozen_stage"] = bench_frozen(fold)
                say("precision auto: timing the candidates")
                choice = precision_auto.measure(cfg, device)
                out["precision_auto"] = {"choice": {"precision": choice["precision"],
                                                   "channels_last": choice["channels_last"]},
                                         "candidates": choice["candidates"], "image_size": size,
                                         "batch_size": choice["batch_size"]}
            say(f"data wait at {size} px")
            out.setdefault("data_wait_fraction", {})[f"{size}px"] = bench_data_wait(fold)
        del fold
    out["seconds"] = round(time.perf_counter() - started, 1)
    say(f"done in {out['seconds']} s")
    return out


def main_scale(device_name: str = "auto") -> int:
    print(json.dumps(run_suite(device_name)))
    return 0
