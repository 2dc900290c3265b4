"""Model factory: a timm backbone with pretrained weights, a grey-input stem and a head for our classes.

The data transforms must normalise with the Normalization returned by build_model -- not with timm's
resolve_data_config, which reports the 3-channel ImageNet stats even for in_chans=1. model.pretrained_cfg is left
as timm's record of the source weights.
"""
from __future__ import annotations

from typing import NamedTuple

from timm.models._manipulate import group_with_matcher
from torch import nn

from pipeline.config import ModelConfig
from pipeline.errors import ConfigError
from pipeline.model.stems import Normalization, RepeatChannels, convert_stem, stem_conv
from pipeline.model.weights import create_backbone
from pipeline.vocab import parse_train_spec

__all__ = ["BuiltModel", "Normalization", "RepeatChannels", "build_model", "freeze_bn_stats", "set_trainable",
           "stem_conv"]


class BuiltModel(NamedTuple):
    model: nn.Module
    norm: Normalization  # what the transforms must feed: (x - mean) / std of [0, 1] pixels
    stem: str  # the strategy actually used (`auto` resolved), for reports and checkpoints


def build_model(cfg: ModelConfig, num_outputs: int, *, pretrained: str | None = None) -> BuiltModel:
    """The model, its input normalisation and stem from config `model`; `pretrained` overrides cfg.pretrained.

    Rebuilding for a checkpoint uses pretrained='none': the architecture and the Normalization do not depend on
    the weight source (stats come from the architecture's pretrained_cfg), so load_state_dict fits.
    """
    if num_outputs < 1:
        raise ConfigError(f"model: num_outputs must be >= 1, got {num_outputs}")
    source = cfg.pretrained if pretrained is None else pretrained
    model, mean, std = create_backbone(cfg.backbone, source, num_outputs, cfg.drop_rate)
    stem = resolve_auto_stem(mean, std) if cfg.stem == "auto" else cfg.stem
    norm = convert_stem(model, stem, cfg.in_chans, mean, std)
    return BuiltModel(model, norm, stem)


def resolve_auto_stem(mean, std) -> str:
    """`auto`: `sum` where it is exact (one mean/std for all channels), else `fold` (exact for any stats)."""
    return "sum" if len(set(mean)) == 1 and len(set(std)) == 1 else "fold"


def _owning_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own parameters or buffers directly (BatchNorm without affine owns only buffers)."""
    return [(n, m) for n, m in model.named_modules()
            if any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))]


def set_trainable(model: nn.Module, train: str) -> list[nn.Module]:
    """Set requires_grad for a stage; return the frozen modules (keep their BatchNorms in eval: freeze_bn_stats).

    'head': only the classifier (model.get_classifier()); 'all': everything; 'last:N': the classifier plus the
    last N coarse groups of timm's group_matcher. Layers timm leaves unmatched sit in timm's final group with the
    classifier (ConvNeXt head.norm, DenseNet norm5); 'last:N' trains them with the head and counts N before them.
    """
    try:
        n_last = parse_train_spec(train)
    except ValueError as exc:
        raise ConfigError(f"train: {exc}") from None
    owners = _owning_modules(model)
    head_ids = {id(m) for m in model.get_classifier().modules()}
    if n_last is None:
        trainable = {n for n, _ in owners}
    elif n_last == 0:
        trainable = {n for n, m in owners if id(m) in head_ids}
    else:
        groups = group_with_matcher(owners, model.group_matcher(coarse=True))  # {ordinal: [names]}
        order = sorted(groups)
        head_names = {n for n, m in owners if id(m) in head_ids}
        if head_names & set(groups[order[-1]]):
            tail, order = groups[order[-1]], order[:-1]  # timm's final group: head (+ unmatched neck)
        else:
            tail = head_names
        trainable = set(tail).union(*(groups[k] for k in order[-n_last:]))
    frozen = []
    for name, module in owners:
        for p in module.parameters(recurse=False):
            p.requires_grad_(name in trainable)
        if name not in trainable:
            frozen.append(module)
    if not any(p.requires_grad for p in model.parameters()):  # an optimizer over nothing would fail obscurely
        raise ConfigError(f"train.stages: a stage with train: {train} leaves no parameter of this "
                          f"{type(model).__name__} trainable (its classifier has none); use train: all or last:N")
    return frozen


def freeze_bn_stats(modules) -> None:
    """Put BatchNorm-like layers among `modules` in eval mode; call after model.train() in every epoch.

    A frozen layer's BN must not keep updating running stats from batches of a new domain.
    """
    for m in modules:  # not recursive: set_trainable lists every frozen BN itself, children may be trainable
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            m.eval()
