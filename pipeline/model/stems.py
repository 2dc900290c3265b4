"""Turn the 3-channel (RGB) stem conv of a timm CNN into one that takes `in_chans` grey channels.

Every strategy returns the input Normalization that goes with the converted weights; with it the converted model
reproduces the 3-channel model fed the replicated image (see each strategy for what "exact" means):

- sum     kernels summed over RGB (timm's adapt_input_conv). Scalar normalisation = mean of the channel stats.
          Exact when the weights' channel stats are equal (EfficientNet-Lite: 0.5/0.5); with per-channel ImageNet
          stats it approximates the reference -- use `fold` for those weights.
- fold    the per-channel normalisation folded into the kernel, plus a fixed correction map (FoldedStem): exact
          for any stats everywhere, the zero-padded border included (see FoldedStem).
- repeat  no conversion: the stem replicates the grey image and normalises per channel inside the model, so the
          transforms normalise with mean 0, std 1 ([0,1] pixels in). Exact for any weights; 3x stem compute.
- mean    kernels averaged (sum / 3) and the input std divided by 3 to compensate: same outputs as `sum`.
- random  a freshly initialised stem, the "throw the pretrained stem away" baseline.

Why `fold` returns the scalar normalisation (m-bar, s-bar: the means of the channel stats) and not mean 0 / std 1:
both are exact (only the correction kernel differs), but with m-bar/s-bar the trainable 1-channel kernel sees the
same centred, unit-scale input as under `sum`/`auto` (same lr / weight-decay behaviour, switching strategies does not
change the data pipeline), and the correction stays small: in the interior it is the constant
sum_c w_c (m-bar - m_c)/s_c, not the whole mean term sum_c w_c m_c/s_c.
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


def _tracing() -> bool:
    """True under torch.jit.trace, torch.compile / torch.export (strict or not, dynamo ONNX export), fx tracing."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return True
    if getattr(torch.compiler, "is_exporting", lambda: False)() or torch.onnx.is_in_onnx_export():
        return True
    from torch.fx import _symbolic_trace as fx

    return getattr(fx, "is_fx_symbolic_tracing", fx.is_fx_tracing)()


@dataclass(frozen=True)
class Normalization:
    """Per input channel: the transforms feed (x - mean) / std with x the [0, 1] pixel."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        return cls(tuple(d["mean"]), tuple(d["std"]))


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


class FoldedStem(nn.Module):
    """The exact `fold` stem: forward(x) = conv(x) + correction(H, W), equal to the 3-channel model everywhere.

    The reference zero-pads AFTER per-channel normalisation. With x~ = (x - m-bar)/s-bar the normalised channel c is
    (s-bar/s_c) x~ + (m-bar - m_c)/s_c, and pad0 of it is (s-bar/s_c) pad0(x~) + ((m-bar - m_c)/s_c) pad0(1), so

        conv(W, pad0([(x - m_c)/s_c]_c)) + b = conv(sum_c w_c s-bar/s_c, pad0(x~)) + b
                                               + conv(sum_c w_c (m-bar - m_c)/s_c, pad0(1)).

    `conv` is the trainable 1-channel conv (first term + b), a child whose parameters keep the stem prefix
    (conv1.conv.weight), so timm's group_matcher regexes, layer decay and freezing work unchanged. `correction` is a
    deep copy of that conv (same padding logic: Conv2dSame / dynamic 'same' padding of tf_ models included) whose
    weight is the fixed correction kernel, a buffer (saved in the state dict: it depends on the source weights), and
    no bias. Applied to a (1, 1, H, W) ones image it gives the last term: a per-input-size map, constant in the
    interior, broadcast over the batch. Eager mode caches it per (H, W, device, dtype); under tracing / compile /
    export it is computed in the graph (a ones tensor and one small conv), so torch.export, dynamo ONNX export and
    torch.jit.trace see no Python-side cache and the batch axis stays dynamic.
    """

    def __init__(self, conv: nn.Module, correction_weight: torch.Tensor):
        super().__init__()
        correction = copy.deepcopy(conv)
        del correction.weight
        correction.register_buffer("weight", correction_weight.detach().clone())
        correction.bias = None
        correction.in_channels = correction_weight.shape[1]
        self.conv = conv
        self.correction = correction
        self._cache: dict = {}
        self._cache_src = None

    def correction_map(self, height: int, width: int, device=None, dtype=None) -> torch.Tensor:
        """(1, C_out, H', W') map added to conv(x) for (H, W) inputs, computed now (no cache)."""
        k = self.correction.weight
        ones = torch.ones(1, k.shape[1], height, width, device=device or k.device, dtype=k.dtype)
        return self.correction(ones).to(dtype or k.dtype)

    def _cached(self, height: int, width: int, device, dtype) -> torch.Tensor:
        w = self.correction.weight
        if self._cache_src is None or self._cache_src[0] is not w or self._cache_src[1] != w._version:
            self._cache, self._cache_src = {}, (w, w._version)  # new or modified kernel (load_state_dict, .to())
        key = (height, width, device, dtype)
        if key not in self._cache:
            with torch.no_grad(), torch.autocast(device.type, enabled=False):
                self._cache[key] = self.correction_map(height, width, device, dtype)
        return self._cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        h, w = x.shape[-2], x.shape[-1]
        if _tracing() or type(x) is not torch.Tensor:  # FakeTensor, proxies: keep the map in the graph
            k = self.correction.weight
            return y + self.correction(x.new_ones((1, k.shape[1], h, w), dtype=k.dtype)).to(y.dtype)
        return y + self._cached(int(h), int(w), y.device, y.dtype)


def stem_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first conv, located by timm's pretrained_cfg['first_conv'] (looks through RepeatChannels, FoldedStem)."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    if isinstance(name, (tuple, list)):
        name = name[0]
    module = model.get_submodule(name) if name else None
    if isinstance(module, (RepeatChannels, FoldedStem)):
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
    """(W', K, m-bar, s-bar): conv(W', pad0((x - m-bar)/s-bar)) + conv(K, pad0(1)) == conv(W, pad0([(x - m_c)/s_c]_c)).

    W' = sum_c w_c s-bar/s_c and K = sum_c w_c (m-bar - m_c)/s_c, both (C_out, 1, kh, kw).
    """
    m = torch.tensor(mean, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    m_bar, s_bar = float(m.mean()), float(s.mean())
    w = weight.detach().double()
    w1 = (w * (s_bar / s).view(1, -1, 1, 1)).sum(1, keepdim=True)
    k = (w * ((m_bar - m) / s).view(1, -1, 1, 1)).sum(1, keepdim=True)
    return w1.to(weight.dtype), k.to(weight.dtype), m_bar, s_bar


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
        w1, k, m_bar, s_bar = fold_weights(weight, mean, std)
        # Several identical channels (e.g. two copies of one window) share the folded kernel equally.
        new = w1.repeat(1, in_chans, 1, 1) / in_chans
        folded = FoldedStem(conv, k.to(conv.weight.device))  # the correction is fed one ones-channel
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
    if strategy == "fold":
        model.set_submodule(name, folded)
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
