"""`train.precision: auto`: time a few training steps of each precision (x channels_last on/off) on the
configured model and batch at start-up, and keep the fastest whose loss stays finite.

Which one wins depends on the CPU/GPU and the architecture (on AVX-512 BF16 CPUs bf16 + channels_last trains
resnet18 ~2.7x faster than fp32, while EfficientNet-Lite0 gains only from channels_last), so it is measured
rather than guessed. The measurement trains copies of the model on a random batch inside torch.random.fork_rng,
so the run's weights and RNG streams are untouched.
"""

from __future__ import annotations

import copy
import json
import math
import time

import torch

from pipeline import distributed
from pipeline.logs import log
from pipeline.model.models import build_model
from pipeline.runfolder import RunFolder
from pipeline.schema import Config
from pipeline.train.engine import autocast, make_loss


def candidates(device: torch.device) -> list[tuple[str, bool]]:
    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    return [(p, cl) for p in precisions for cl in (False, True)]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_candidate(model, x, y, loss_fn, precision, channels_last, device, steps: int) -> tuple[float, bool]:
    model = copy.deepcopy(model).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    finite = True
    elapsed = 0.0
    for i in range(steps + 1):  # the first step warms up (allocations, kernel selection) and is not timed
        _sync(device)
        t0 = time.perf_counter()
        with autocast(device, precision):
            logits = model(x)
        loss = loss_fn(logits, y)
        finite = finite and bool(torch.isfinite(loss))
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        _sync(device)
        if i:
            elapsed += time.perf_counter() - t0
    return x.shape[0] * steps / elapsed if elapsed > 0 else math.nan, finite


def measure(cfg: Config, device: torch.device, steps: int = 2, batch_size: int | None = None) -> dict:
    """{'precision', 'channels_last', 'candidates': [{precision, channels_last, images_per_s, finite_loss}]}."""
    bs = batch_size or cfg.train.batch_size
    size = cfg.data.image_size
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        model = build_model(cfg.model, cfg.task.num_outputs).model
        x = torch.rand(bs, cfg.model.in_chans, size, size, device=device)
        n_out = cfg.task.num_outputs
        if cfg.task.type == "multiclass":
            y = torch.randint(0, n_out, (bs,), device=device).float()
        else:
            y = torch.randint(0, 2, (bs, n_out) if cfg.task.type == "multilabel" else (bs,), device=device).float()
        loss_fn = make_loss(cfg.task.type)
        rows = []
        for precision, cl in candidates(device):
            try:
                ips, finite = _time_candidate(model, x, y, loss_fn, precision, cl, device, steps)
            except RuntimeError as exc:  # an op without a kernel for this dtype on this device
                log.info(f"precision auto: {precision} channels_last={cl} unavailable ({str(exc).splitlines()[0]})")
                ips, finite = math.nan, False
            rows.append({"precision": precision, "channels_last": cl,
                         "images_per_s": None if math.isnan(ips) else round(ips, 2), "finite_loss": finite})
    usable = [r for r in rows if r["finite_loss"] and r["images_per_s"]]
    best = max(usable, key=lambda r: r["images_per_s"]) if usable else {"precision": "fp32", "channels_last": True}
    return {"auto": True, "precision": best["precision"], "channels_last": best["channels_last"],
            "batch_size": bs, "image_size": size, "device": str(device), "candidates": rows}


def describe(choice: dict) -> str:
    cands = ", ".join(f"{r['precision']}{'+cl' if r['channels_last'] else ''} "
                      f"{'n/a' if r['images_per_s'] is None else r['images_per_s']:}" for r in choice["candidates"])
    return (f"precision auto: {choice['precision']} with channels_last={choice['channels_last']} "
            f"(training images/s: {cands})")


def choose_precision(cfg: Config, folder: RunFolder, device, dist: distributed.Dist) -> dict:
    """Resolve `train.precision: auto` once per run (precision.json, first process wins). Returns the choice;
    the caller trains with `with_precision(cfg, choice)`, and the saved config keeps `auto`."""
    path = folder.precision
    if cfg.train.precision != "auto":
        return {"auto": False, "precision": cfg.train.precision, "channels_last": cfg.train.channels_last}
    if path.is_file():
        choice = RunFolder.read_json(path)
        log.info(f"precision auto: {choice['precision']} with channels_last={choice['channels_last']} "
                 f"(measured earlier, {path})")
        return choice
    log.info("precision auto: timing fp32/bf16" + ("/fp16" if device.type == "cuda" else "")
             + " x channels_last on/off ...")
    choice = measure(cfg, device)
    if dist.enabled:  # every rank must train with rank 0's choice
        choice = distributed.broadcast(choice, dist)
    existing = RunFolder.publish_once(path, json.dumps(choice, indent=1)) if dist.is_main else None
    if existing is not None:  # a concurrent --fold process measured first: use its choice
        choice = json.loads(existing)
    log.info(describe(choice))
    return choice


def with_precision(cfg: Config, choice: dict) -> Config:
    """The config the folds train with: `auto` resolved to the measured precision (a new object; the run's
    config.yaml keeps what the user wrote)."""
    return cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"precision": choice["precision"], "channels_last": choice["channels_last"]})})
