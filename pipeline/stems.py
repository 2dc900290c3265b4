"""Turn the 3-channel (RGB) stem conv of a timm CNN into one that takes `in_chans` grey channels.

Every strategy returns the input Normalization that goes with the converted weights; with it the converted model
reproduces the 3-channel model fed the replicated image (see each strategy for what "exact" means):

- sum     kernels summed over RGB (timm's adapt_input_conv). Scalar normalisation = mean of the channel stats.
          Exact when the weights' channel stats are equal (EfficientNet-Lite: 0.5/0.5); with per-channel ImageNet
          stats it approximates the reference -- use `fold` for those weights.
- fold    the per-channel normalisation folded into kernel and offset: exact for any stats, except at the
          zero-padded border (the reference pads each channel with pixel m_c, the folded model with pixel m-bar).
- repeat  no conversion: the stem replicates the grey image and normalises per channel inside the model, so the
          transforms normalise with mean 0, std 1 ([0,1] pixels in). Exact for any weights; 3x stem compute.
- mean    kernels averaged (sum / 3) and the input std divided by 3 to compensate: same outputs as `sum`.
- random  a freshly initialised stem, the "throw the pretrained stem away" baseline.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from timm.models._manipulate import adapt_input_conv
from torch import nn

from pipeline.errors import ConfigError
from pipeline.vocab import STEM_STRATEGIES

STRATEGIES = STEM_STRATEGIES


@dataclass(frozen=True)
class Normalization:
    """Per input channel: the transforms feed (x - mean) / std with x the [0, 1] pixel."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}


class RepeatChannels(nn.Module):
    """The `repeat` stem: replicate the grey input to the conv's channels, normalise per channel, run the conv.

    The original conv stays a child named `conv`, so its parameters keep the stem prefix that timm's
    group_matcher regexes (stem=r'^conv1|...') match, and layer-decay / freezing work unchanged.
    """

    def __init__(self, conv: nn.Conv2d, mean, std):
        super().__init__()
        self.conv = conv
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        if x.shape[1] != self.conv.in_channels:
            x = x.expand(-1, self.conv.in_channels, -1, -1)
        return self.conv((x - self.mean) / self.std)


def stem_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first conv, located by timm's pretrained_cfg['first_conv'] (looks through a RepeatChannels)."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    if isinstance(name, (tuple, list)):
        name = name[0]
    module = model.get_submodule(name) if name else None
    if isinstance(module, RepeatChannels):
        name, module = f"{name}.conv", module.conv
    if not isinstance(module, nn.Conv2d):
        arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__)
        raise ConfigError(
            f"model.stem: the first layer of {arch} ({name!r}) is not a Conv2d, so it cannot be converted "
            "to grey input; choose a CNN backbone (resnet, densenet, efficientnet, convnext, regnet, ...)")
    return name, module


def _init_random(weight: torch.Tensor) -> torch.Tensor:
    # Kaiming-normal fan-out is the stem init of timm's ResNet, DenseNet, EfficientNet and RegNet.
    nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")
    return weight


def fold_weights(weight: torch.Tensor, mean, std) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(W', b', m-bar, s-bar): conv(W', (x - m-bar)/s-bar) + b' == conv(W, [(x - m_c)/s_c]_c) away from padding."""
    m = torch.tensor(mean, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    m_bar, s_bar = float(m.mean()), float(s.mean())
    w = weight.detach().double()
    w1 = (w * (s_bar / s).view(1, -1, 1, 1)).sum(1, keepdim=True)
    offset = (w.sum((2, 3)) * ((m_bar - m) / s).view(1, -1)).sum(1)
    return w1.to(weight.dtype), offset.to(weight.dtype), m_bar, s_bar


def offset_site(model: nn.Module, conv: nn.Conv2d) -> nn.Module | None:
    """The BatchNorm that directly consumes the stem conv's output, found by tracing one forward pass.

    Tracing (a tensor-identity check in hooks) instead of guessing names (bn1, norm0, stem.bn, ...) makes it
    work for any timm CNN; the pass stops at that BatchNorm, so it costs only the stem.
    """
    found: dict = {}

    class _Stop(Exception):
        pass

    def after_conv(_m, _inp, out):
        found["out"] = out

    def before_norm(mod, inp):
        if "out" in found and inp[0] is found["out"]:
            found["norm"] = mod
            raise _Stop

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats and m.num_features == conv.out_channels]
    handles = [conv.register_forward_hook(after_conv)] + [m.register_forward_pre_hook(before_norm) for m in norms]
    was_training = model.training
    model.eval()  # never let the probe update running statistics
    try:
        with torch.no_grad():
            model(torch.zeros(1, conv.in_channels, 64, 64))
    except _Stop:
        pass
    except Exception:  # a model that rejects the probe input: fall back to a conv bias, still exact
        pass
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return found.get("norm")


def _apply_offset(model: nn.Module, conv: nn.Conv2d, offset: torch.Tensor, site: nn.Module | None) -> None:
    """Add the constant fold offset to the conv bias, else fold it into the following BN, else add a bias."""
    with torch.no_grad():
        if conv.bias is not None:  # ConvNeXt: conv with bias, then LayerNorm
            conv.bias += offset
        elif site is not None:  # BN(y + b) in eval == BN with running_mean - b; in train mode it cancels
            site.running_mean -= offset.to(site.running_mean.dtype)
        else:
            conv.bias = nn.Parameter(offset.clone())


def convert_stem(model: nn.Module, strategy: str, in_chans: int, mean, std) -> Normalization:
    """Convert the model's first conv in place for `in_chans` inputs; mean/std are the weights' RGB stats."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"model.stem: unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if in_chans < 1:
        raise ConfigError(f"model.in_chans: must be >= 1, got {in_chans}")
    name, conv = stem_conv(model)
    base = len(mean)
    if conv.in_channels != base or conv.groups != 1:
        raise ConfigError(f"model.stem: first conv {name!r} has {conv.in_channels} input channels (groups="
                          f"{conv.groups}) but the weights' stats have {base}; cannot convert this stem")
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    m_bar, s_bar = sum(mean) / base, sum(std) / base

    if strategy == "repeat":
        if in_chans not in (1, base):
            raise ConfigError(f"model.stem=repeat: needs model.in_chans 1 or {base}, got {in_chans}; "
                              "use sum or fold for other channel counts")
        model.set_submodule(name, RepeatChannels(conv, mean, std))
        return Normalization((0.0,) * in_chans, (1.0,) * in_chans)

    if in_chans == base and strategy != "random":
        return Normalization(mean, std)  # already the reference model

    weight = conv.weight.detach()
    scale = 1.0
    if strategy == "fold":
        w1, offset, m_bar, s_bar = fold_weights(weight, mean, std)
        # Several identical channels (e.g. two copies of one window) share the folded kernel equally.
        new = w1.repeat(1, in_chans, 1, 1) / in_chans
        _apply_offset(model, conv, offset, None if conv.bias is not None else offset_site(model, conv))
    elif strategy == "random":
        new = _init_random(torch.empty(conv.out_channels, in_chans, *conv.kernel_size, dtype=weight.dtype))
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
    else:
        new = adapt_input_conv(in_chans, weight, base_chans=base)  # timm: sum for 1, repeat * 3/in_chans else
        if strategy == "mean":
            new, scale = new / base, 1.0 / base  # x3 larger normalised input compensates the /3 kernel
    conv.weight = nn.Parameter(new.contiguous().to(conv.weight.device))
    conv.in_channels = in_chans
    return Normalization((m_bar,) * in_chans, (s_bar * scale,) * in_chans)


def output_at(model: nn.Module, module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, output of `module`) of one no-grad forward: how the stem checks compare models layer by layer."""
    out = {}
    handle = module.register_forward_hook(lambda _m, _i, o: out.setdefault("y", o))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    return logits, out["y"]


def border_mask(conv: nn.Conv2d, height: int, width: int) -> torch.Tensor:
    """Bool (H', W') map of the conv's output positions whose receptive field reaches into the padding."""
    probe = copy.deepcopy(conv).float()  # deepcopy keeps the conv's own padding logic (Conv2dSame, ...)
    with torch.no_grad():
        probe.weight.fill_(1.0)
        if probe.bias is not None:
            probe.bias.zero_()
        out = probe(torch.ones(1, probe.in_channels, height, width))[0, 0]
    return out < out.max() - 0.5
