"""Model factory: a timm backbone with pretrained weights, a grey-input stem and a head for our classes.

The data transforms must normalise with the Normalization returned by build_model -- not with timm's
resolve_data_config, which reports the 3-channel ImageNet stats even for in_chans=1. model.pretrained_cfg is left
as timm's record of the source weights.
"""
from __future__ import annotations

from timm.models._manipulate import group_with_matcher
from torch import nn

from pipeline.errors import ConfigError
from pipeline.stems import STRATEGIES, Normalization, RepeatChannels, convert_stem, stem_conv
from pipeline.weights import create_backbone

__all__ = ["Normalization", "RepeatChannels", "STRATEGIES", "build_model", "freeze_bn_stats", "set_trainable",
           "stem_conv"]


def build_model(cfg, num_classes: int, *, pretrained: str | None = None) -> tuple[nn.Module, Normalization]:
    """(model, normalisation) from config `model`; `pretrained` overrides cfg.pretrained.

    Rebuilding for a checkpoint uses pretrained='none': the architecture and the Normalization do not depend on
    the weight source (stats come from the architecture's pretrained_cfg), so load_state_dict fits.
    """
    backbone = getattr(cfg, "backbone", "tf_efficientnet_lite0")
    source = str(pretrained if pretrained is not None else getattr(cfg, "pretrained", "bundled"))
    stem = getattr(cfg, "stem", "sum")
    in_chans = int(getattr(cfg, "in_chans", 1))
    if stem not in STRATEGIES + ("auto",):  # checked before the (slow) weight loading
        raise ConfigError(f"model.stem: unknown strategy {stem!r}; choose one of {', '.join(STRATEGIES)}")
    if num_classes < 1:
        raise ConfigError(f"model: num_classes must be >= 1, got {num_classes}")
    model, mean, std = create_backbone(backbone, source, num_classes, float(getattr(cfg, "drop_rate", 0.0)))
    if stem == "auto":
        stem = resolve_auto_stem(mean, std)
    norm = convert_stem(model, stem, in_chans, mean, std)
    model.stem_strategy = stem  # the strategy actually used, for reports and checkpoints
    return model, norm


def resolve_auto_stem(mean, std) -> str:
    """`auto`: `sum` where it is exact (one mean/std for all channels), else `fold` (exact for any stats)."""
    return "sum" if len(set(mean)) == 1 and len(set(std)) == 1 else "fold"


def _parse_train(train: str) -> int | None:
    """None for 'all', 0 for 'head', N for 'last:N'."""
    if train == "all":
        return None
    if train == "head":
        return 0
    if isinstance(train, str) and train.startswith("last:") and train[5:].isdigit() and int(train[5:]) >= 1:
        return int(train[5:])
    raise ConfigError(f"train: expected 'head', 'all' or 'last:N' with N >= 1, got {train!r}")


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
    n_last = _parse_train(train)
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
    return frozen


def freeze_bn_stats(modules) -> None:
    """Put BatchNorm-like layers among `modules` in eval mode; call after model.train() in every epoch.

    A frozen layer's BN must not keep updating running stats from batches of a new domain.
    """
    for m in modules:  # not recursive: set_trainable lists every frozen BN itself, children may be trainable
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            m.eval()
