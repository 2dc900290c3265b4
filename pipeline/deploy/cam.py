"""Grad-CAM of a finished run's fold models (monai.visualize.GradCAM): where the ensemble looks.

A model that learned a burned-in L/R marker or a text label instead of the lung shows it here at a glance.

- `target_layer(model)`: the module feeding the global pool (the one returning forward_features' output:
  resnet 'layer4', densenet 'features', efficientnet 'bn2', convnext 'stages'), else timm's
  feature_info[-1]['module'], else the last Conv2d (logged).
- `cam_maps(run, images)`: the map of the positive class (binary: the single logit) or of the ensemble's
  predicted class (multi-class / multi-label), one per fold model, each scaled to [0, 1], averaged over the
  folds and scaled to [0, 1] again; (B, S, S) like the input, finite.
- `write_cams(run, items, out_dir)`: for each file, `<stem>_cam.png` (the [0, 1] pixels after the run's load
  transforms, i.e. what the network saw, with the map overlaid, titled with the class probability, the run's
  threshold and the mapped class, and a colour bar) and optionally `<stem>_cam.npy`.
- `report_cam_panel(run, rows, pixels_of)`: one PNG grid (cam_figures.cam_panel), drawn after training for the
  run's report from the pixels in memory, on the most confident test positives, negatives and errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.deploy.cam_figures import cam_figure, cam_panel, prob_label
from pipeline.deploy.finished import FinishedRun, load_run
from pipeline.logs import log


def _pool_input_module(model: nn.Module) -> str | None:
    """The module whose output is forward_features' output (what feeds the global pool), by one traced
    forward: the last module to finish whose output is that very tensor (Identity pass-throughs skipped)."""
    if not hasattr(model, "forward_features"):
        return None
    from pipeline.model.stems import stem_conv

    try:
        in_chans = stem_conv(model)[1].in_channels
    except Exception:
        return None
    fired: list[tuple[str, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: fired.append((n, o)))
             for n, m in model.named_modules() if n and not isinstance(m, nn.Identity)]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            p = next(model.parameters())
            out = model.forward_features(torch.zeros(1, in_chans, 64, 64, device=p.device, dtype=p.dtype))
        model.train(was_training)
    except Exception:
        return None
    finally:
        for h in hooks:
            h.remove()
    same = [n for n, o in fired if isinstance(o, torch.Tensor) and o.shape == out.shape
            and o.data_ptr() == out.data_ptr()]
    return same[-1] if same else None


def target_layer(model: nn.Module) -> str:
    """Name of the module whose output is the last feature map, the one that feeds the global pool.

    Found generically: the module returning forward_features' output (resnet 'layer4', densenet 'features'
    = norm5's output, efficientnet 'bn2', convnext 'stages'); else timm's feature_info[-1]['module'] (the
    last feature block: for EfficientNet that is 'blocks.6', the linear bottleneck before conv_head, whose
    Grad-CAM is often negative everywhere, hence the traced module first); else the last Conv2d, logged.
    """
    names = dict(model.named_modules())
    name = _pool_input_module(model)
    if name:
        return name
    info = getattr(model, "feature_info", None)
    try:
        name = info[-1]["module"] if info is not None else None
    except (TypeError, KeyError, IndexError):
        name = None
    if name and name in names:
        return name
    convs = [n for n, m in names.items() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__}: no feature_info and no Conv2d to take a Grad-CAM from")
    log.info(f"grad-cam: {type(model).__name__} has no forward_features / feature_info; using the last "
             f"Conv2d {convs[-1]!r} as the target layer")
    return convs[-1]


class _Normalized(nn.Module):
    """[0, 1] pixels -> the run's normalisation -> fold model: GradCAM sees the same input as predict."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def _unit(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max to [0, 1]; a flat map (no evidence anywhere) stays 0. (MONAI's default_normalizer
    maps max -> 0, the reverse of what an overlay needs, so it is not used.)"""
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1), flat.max(1).values.view(-1, 1, 1)
    span = hi - lo
    return torch.where(span > 0, (maps - lo) / span.clamp_min(1e-12), torch.zeros_like(maps))


def model_maps(model: nn.Module, norm, x: torch.Tensor, class_idx, layer: str | None = None) -> torch.Tensor:
    """(B, H, W) Grad-CAM of one model on [0, 1] pixels x (B, C, H, W), in [0, 1]."""
    from monai.visualize import GradCAM

    wrapped = _Normalized(model, norm.mean, norm.std).to(x.device)
    inner, prefix = model, "model."
    while isinstance(inner, SignedBinary):
        inner, prefix = inner.model, prefix + "model."
    name = prefix + (layer or target_layer(inner))
    cam = GradCAM(nn_module=wrapped, target_layers=name, postprocessing=lambda m: m)
    with torch.enable_grad():
        maps = cam(x.clone().requires_grad_(True), class_idx=class_idx)
    maps = torch.nan_to_num(maps.detach()[:, 0].float(), nan=0.0, posinf=0.0, neginf=0.0)
    return _unit(maps)


class SignedBinary(nn.Module):
    """(B, 1) logit z -> (B, 2) [t - z, z - t] with t the threshold's logit: column 1 is the positive class,
    column 0 the negative class's evidence, and argmax is the run's decision at its operating point."""

    def __init__(self, model: nn.Module, threshold: float, temperature: float = 1.0):
        super().__init__()
        self.model = model
        p = min(max(float(threshold), 1e-6), 1 - 1e-6)
        # a calibrated run decides sigmoid(z / T) >= threshold, i.e. z >= T * logit(threshold)
        self.t = float(temperature * np.log(p / (1 - p)))

    def forward(self, x):
        z = self.model(x)[:, :1] - self.t
        return torch.cat([-z, z], 1)


def cam_maps(run: FinishedRun, images: torch.Tensor, models: Sequence[nn.Module] | None = None,
             target: str = "positive") -> np.ndarray:
    """(B, S, S) fold-ensemble Grad-CAM of [0, 1] pixels (B, 1, S, S), mean of the folds' [0, 1] maps rescaled
    to [0, 1]. target='positive': binary runs map the positive class (the single logit; an image the model
    finds no positive evidence in gets an all-zero map); multi-class the ensemble's predicted class.
    target='predicted': binary runs map the class decided at the run's threshold (negative evidence for
    images called negative)."""
    from pipeline.deploy.inference import EnsembleModule, run_tta

    models = list(models) if models is not None else run.models()
    task, norm = run.task, run.normalization
    with torch.no_grad():
        probs = EnsembleModule(models, norm, task, run.deployment.temperature, run_tta(run))(images)
    if task.type == "binary":
        if target == "positive":
            return cam_maps_for_class(models, norm, images, 0)
        pos = task.classes.index(task.positive)
        pred = (probs[:, pos] >= run.threshold).long()  # 1: positive column of SignedBinary
        t = run.deployment.temperature
        models = [SignedBinary(m, run.threshold, float(np.atleast_1d(t)[0]) if t is not None else 1.0)
                  for m in models]
    else:
        pred = probs.argmax(1)
    out = np.zeros((images.shape[0], *images.shape[-2:]), dtype=np.float32)
    for c in pred.unique().tolist():  # one pass per class present
        sel = (pred == c).numpy()
        out[sel] = cam_maps_for_class(models, norm, images[torch.from_numpy(sel)], int(c))
    return out


def cam_maps_for_class(models, norm, images: torch.Tensor, class_idx: int) -> np.ndarray:
    maps = torch.stack([model_maps(m, norm, images, class_idx) for m in models]).mean(0)
    return _unit(maps).numpy()


def load_pixels(run: FinishedRun, items: Sequence[tuple[str, int | None]]) -> list[np.ndarray]:
    """(S, S) [0, 1] pixels of each (file, frame) as predict scores them (the deployment's reader settings,
    16-bit rounding and disk cache): what the network saw."""
    from pipeline.data.datasets import image_reader

    read = image_reader(run.deployment.data)
    return [np.asarray(read(str(p), f))[0] for p, f in items]


def write_cams(run: FinishedRun | Path, items: Sequence[tuple[str, int | None]], out_dir: Path, *,
               save_npy: bool = False, batch_size: int = 16, target: str = "positive") -> list[Path]:
    """For each (file, frame): out_dir/<name>_cam.png (and .npy); returns the PNG paths in input order."""
    from pipeline.deploy.inference import EnsembleModule, run_tta

    run = run if isinstance(run, FinishedRun) else load_run(Path(run))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models = run.models()
    written, used = [], set()
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        pixels = load_pixels(run, chunk)
        batch = torch.from_numpy(np.stack(pixels))[:, None]
        maps = cam_maps(run, batch, models, target)
        with torch.no_grad():  # the probability of the very pixels mapped (for a cine: this frame)
            probs = EnsembleModule(models, run.normalization, run.task, run.deployment.temperature,
                                   run_tta(run))(batch).numpy()
        for j, ((path, frame), image, cam, p) in enumerate(zip(chunk, pixels, maps, probs, strict=True)):
            # a run that hides file names (privacy.hide_file_names) shows the position in `items` instead, in
            # the PNG's name and in its title
            shown = f"row{start + j + 1}" if run.deployment.hide_file_names else Path(path).name
            stem = shown.split(".")[0] + ("" if frame is None else f"_f{frame}")
            name, k = stem, 1
            while name in used:  # same file name in two folders: keep both
                k += 1
                name = f"{stem}_{k}"
            used.add(name)
            head = shown + ("" if frame is None else f", frame {frame}")
            png = cam_figure(image, cam, [head, *cam_caption(run.task, run.threshold, p, target)], out_dir / f"{name}_cam.png")
            if save_npy:
                np.save(out_dir / f"{name}_cam.npy", cam.astype(np.float32))
            written.append(png)
    return written


def cam_caption(task, threshold: float, probs: np.ndarray, target: str = "positive") -> list[str]:
    """Two title lines for one image: the probability with its class and the decision at the run's threshold,
    then the class whose evidence the map shows (as cam_maps chose it)."""
    t = threshold
    if task.type == "binary":
        p = float(probs[task.classes.index(task.positive)])
        decided = task.positive if p >= t else task.negative
        mapped = task.positive if target == "positive" else decided
        return [f"{prob_label(task.positive, p)}, threshold {t:.2f} → {decided}", f"map: evidence for {mapped}"]
    top = task.classes[int(np.argmax(probs))]
    return [f"{prob_label(top, float(probs.max()))} (most probable class)", f"map: evidence for {top}"]


def panel_title(row: dict, task) -> str:
    """A panel cell's title: the truth, the probability named by its class, the class mapped."""
    shown = task.positive if task.type == "binary" else row["_pred"]
    return f"truth: {row['label']}\n{prob_label(shown, row['_score'])}\nmap: {row['_pred']}"


def _panel_picks(rows: list[dict], task, threshold: float, per_row: int) -> list[tuple[str, list[dict]]]:
    """Rows of the panel: most confident correct positives, correct negatives, and the most confident errors."""
    if task.type != "binary":
        for r in rows:
            probs = {c: float(r[f"prob_{c}"]) for c in task.classes}
            r["_pred"] = max(probs, key=probs.get)
            r["_score"] = probs[r["_pred"]]
        right = sorted((r for r in rows if r["_pred"] == r["label"]), key=lambda r: -r["_score"])
        wrong = sorted((r for r in rows if r["_pred"] != r["label"]), key=lambda r: -r["_score"])
        return [("most confident correct", right[:per_row]), ("most confident errors", wrong[:per_row])]
    pos, neg = task.positive, task.negative
    for r in rows:
        r["_score"] = float(r[f"prob_{pos}"])
        r["_pred"] = pos if r["_score"] >= threshold else neg
    tp = sorted((r for r in rows if r["label"] == pos and r["_pred"] == pos), key=lambda r: -r["_score"])
    tn = sorted((r for r in rows if r["label"] == neg and r["_pred"] == neg), key=lambda r: r["_score"])
    err = sorted((r for r in rows if r["_pred"] != r["label"]), key=lambda r: -abs(r["_score"] - threshold))
    return [(f"top {pos}", tp[:per_row]), (f"top {neg}", tn[:per_row]), ("confident errors", err[:per_row])]


def report_cam_panel(run: FinishedRun, rows: list[dict], pixels_of, per_row: int = 4) -> Path | None:
    """RUN/cam_panel.png, a post-run step: `rows` are the test predictions (image, label, prob_<class>) and
    `pixels_of(image)` gives the pixels the run scored, already in memory; None when nothing can be drawn."""
    if run.task.type == "multilabel" or not rows:
        return None
    picks = [(label, chosen) for label, chosen in _panel_picks(rows, run.task, run.threshold, per_row) if chosen]
    if not picks:
        return None
    models = run.models()
    images, maps, titles, labels = [], [], [], []
    for label, chosen in picks:
        pixels = [pixels_of(r["image"]) for r in chosen]
        cams = cam_maps(run, torch.from_numpy(np.stack(pixels))[:, None], models, "predicted")
        images += pixels + [None] * (per_row - len(pixels))
        maps += list(cams) + [None] * (per_row - len(cams))
        titles += [panel_title(r, run.task) for r in chosen] + [""] * (per_row - len(chosen))
        labels.append(label)
    return cam_panel(images, maps, titles, run.folder.cam_panel, ncols=per_row, row_labels=labels)
