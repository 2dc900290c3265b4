"""Throughput of decoding and of the model, printed as ONE JSON object.

    graystem benchmark [--what decode,train,infer] [--size 128] [--batch 32] [--seconds 10] [--device auto]
    graystem benchmark --suite plan [--budgets 2m,4m]   (planned runs: budget asked against time taken)
    graystem benchmark --suite scale     (decode cache / process pool / frozen stage / data wait / precision
                                          auto: see pipeline/tools/bench_scale.py)

decode: images/s of read_gray on the same radiograph stored uncompressed (RG1_UNCR), RLE (written here from
        RG1_UNCR) and JPEG 2000 (RG1_J2KR), plus a small MR pair (MR_small uncompressed / RLE); pydicom-data files.
train:  images/s of one optimiser step on the default config's model (chest_xray: bundled weights) for the
        frozen-backbone stage (set_trainable 'head', frozen BatchNorms in eval) and full training ('all').
infer:  images/s of a forward pass under torch.inference_mode.
Model runs cover the 1-channel stem (config stem) and the `repeat` (3-channel) stem, each in fp32 NCHW and
channels_last. Each measurement warms up, then times whole iterations with time.perf_counter for at least
--seconds (model: at least 2 iterations, decode: at least 1). Peak memory: torch.cuda.max_memory_allocated per
run on a GPU; on the CPU the process's peak RSS so far (ru_maxrss never goes down: later runs read at least as
much as earlier ones).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from pipeline.errors import ConfigError, exits_on_error

WHAT = ("decode", "train", "infer")
DECODE_FILES = (  # (name, pydicom-data file, re-encode as RLE here)
    ("uncompressed", "RG1_UNCR.dcm", False),
    ("rle", "RG1_UNCR.dcm", True),
    ("jpeg2000", "RG1_J2KR.dcm", False),
    ("uncompressed_small", "MR_small.dcm", False),
    ("rle_small", "MR_small_RLE.dcm", False),
)


def _timed(step, seconds: float, warmup: int, sync=lambda: None, min_iters: int = 2) -> tuple[int, float]:
    """(iterations, elapsed seconds) of step() repeated for at least `seconds` after the warm-up: at least
    `warmup` calls, and more (up to 10) while the step time still falls (oneDNN / cuDNN pick kernels on the
    first calls of each shape and layout: the very first step can be 50x slower than the tenth)."""
    last = None
    for i in range(10 if warmup else 0):
        t0 = time.perf_counter()
        step()
        sync()
        took = time.perf_counter() - t0
        if i + 1 >= warmup and last is not None and took > last / 1.25:
            break
        last = took
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += 1
        sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and n >= min_iters:
            return n, elapsed


def bench_decode(seconds: float) -> dict:
    import pydicom
    from pydicom.data import get_testdata_file

    from pipeline.io import read_gray

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fname, to_rle in DECODE_FILES:
            try:
                path = get_testdata_file(fname)
                if path is None:
                    raise FileNotFoundError(f"{fname} not found (pip install pydicom-data)")
                if to_rle:
                    ds = pydicom.dcmread(path)
                    ds.compress(pydicom.uid.RLELossless)
                    path = str(Path(tmp) / f"{Path(fname).stem}_RLE.dcm")
                    ds.save_as(path)
                shape = read_gray(path)[0].shape  # also the warm-up
                n, elapsed = _timed(lambda p=path: read_gray(p), seconds, warmup=0, min_iters=1)
            except Exception as exc:  # a missing codec or data file: report it, measure the rest
                out[name] = {"file": fname, "error": f"{type(exc).__name__}: {exc}"}
                continue
            tsyntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
            out[name] = {"file": fname + (" -> RLE Lossless" if to_rle else ""), "transfer_syntax": tsyntax.name,
                         "shape": list(shape), "file_mb": round(Path(path).stat().st_size / 2**20, 2),
                         "images_per_s": round(n / elapsed, 2), "ms_per_image": round(1000 * elapsed / n, 2),
                         "iterations": n}
    return out


def _peak_memory_mb(device) -> tuple[float, str]:
    import torch

    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1), "cuda_max_memory_allocated"
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1), "process_peak_rss"


def bench_model(what: list[str], size: int, batch: int, seconds: float, device_name: str) -> dict:
    import torch
    from torch import nn

    from pipeline.config import load_config
    from pipeline.distributed import select_device
    from pipeline.model.models import build_model, freeze_bn_stats, set_trainable

    cfg = load_config("chest_xray")
    device = select_device(device_name)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    n_out = cfg.task.num_outputs
    results = []
    for stem in dict.fromkeys((cfg.model.stem, "repeat")):
        model, norm, _ = build_model(cfg.model.model_copy(update={"stem": stem}), n_out)
        model.to(device)
        x = torch.rand(batch, 1, size, size, device=device)
        x = (x - norm.mean[0]) / norm.std[0]
        y = torch.randint(0, 2, (batch, n_out), device=device).float()
        loss_fn = nn.BCEWithLogitsLoss() if n_out == 1 else nn.CrossEntropyLoss()
        if n_out > 1:
            y = y.argmax(1)
        for layout in ("nchw", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            model.to(memory_format=fmt)
            xi = x.contiguous(memory_format=fmt)
            runs = []
            if "infer" in what:
                runs.append(("infer", None))
            if "train" in what:
                runs += [("train", "head"), ("train", "all")]
            for mode, stage in runs:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                if mode == "infer":
                    model.eval()

                    def step(m=model, xi=xi):
                        with torch.inference_mode():
                            m(xi)
                else:
                    frozen = set_trainable(model, stage)
                    model.train()
                    freeze_bn_stats(frozen)
                    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

                    def step(m=model, xi=xi, opt=opt, y=y, loss_fn=loss_fn):
                        opt.zero_grad(set_to_none=True)
                        loss_fn(m(xi), y).backward()
                        opt.step()
                n, elapsed = _timed(step, seconds, warmup=2, sync=sync)
                mem, mem_kind = _peak_memory_mb(device)
                results.append({"mode": mode, "stage": stage, "stem": stem, "in_chans_seen_by_conv":
                                1 if stem != "repeat" else 3, "layout": layout, "precision": "fp32",
                                "images_per_s": round(n * batch / elapsed, 2),
                                "ms_per_batch": round(1000 * elapsed / n, 1), "iterations": n,
                                "peak_memory_mb": mem, "memory": mem_kind})
                set_trainable(model, "all")
        del model
    return {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine(), "backbone": cfg.model.backbone,
            "pretrained": cfg.model.pretrained, "runs": results}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", choices=("default", "scale", "plan"), default="default",
                   help="default: decode/train/infer throughput; scale: the issue-9 suite (bench_scale.py); "
                   "plan: planned runs, budget asked against time taken (bench_plan.py)")
    p.add_argument("--budgets", default="2m,4m", help="--suite plan: budgets to plan and run (default 2m,4m)")
    p.add_argument("--manifest", help="--suite plan: the data (default: the ultrasound demo)")
    p.add_argument("--what", default=",".join(WHAT), help="comma-separated: decode, train, infer (default all)")
    p.add_argument("--size", type=int, default=128, help="model input size (default 128)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per measurement (default 10)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice). On a CPU shared with "
                   "other busy processes fewer threads than cores can be much faster: a thread that is not "
                   "scheduled stalls every parallel region")
    return p


@exits_on_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None and args.threads < 1:
        raise ConfigError("--threads must be >= 1")
    if args.suite == "plan":
        from pipeline.tools.bench_plan import main_plan

        return main_plan(args.budgets, args.manifest, args.threads)
    if args.suite == "scale":
        import torch

        from pipeline.tools.bench_scale import main_scale

        if args.threads:
            torch.set_num_threads(args.threads)
        return main_scale(args.device)
    what = [w.strip() for w in args.what.split(",") if w.strip()]
    bad = [w for w in what if w not in WHAT]
    if bad or not what:
        raise ConfigError(f"--what: unknown {bad or 'nothing'}; choose from {', '.join(WHAT)}")
    if args.size < 16 or args.batch < 1 or args.seconds < 0:
        raise ConfigError("--size must be >= 16, --batch >= 1 and --seconds >= 0")
    if args.threads is not None and args.threads < 1:
        raise ConfigError("--threads must be >= 1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "load_average_at_start": load, "python": platform.python_version(),
           "size": args.size, "batch": args.batch, "seconds": args.seconds}
    if "decode" in what:
        out["decode"] = bench_decode(args.seconds)
    if "train" in what or "infer" in what:
        model = bench_model(what, args.size, args.batch, args.seconds, args.device)
        out["device"] = model.pop("device")
        out.update(model)
    else:
        out["device"] = "cpu"
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
