"""Stem conversions against the 3-channel model they came from (random but fixed weights, real grey photo)."""
import copy
import functools

import numpy as np
import pytest
import torch
from timm.models._manipulate import adapt_input_conv
from torch import nn

from pipeline.errors import ConfigError
from pipeline.model.stems import FoldedStem, Normalization, border_mask, convert_stem, output_at, stem_conv
from pipeline.model.weights import create_backbone

BACKBONES = ["resnet18", "densenet121", "tf_efficientnet_lite0", "convnext_nano"]
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
M_BAR, S_BAR = float(np.mean(IMAGENET[0])), float(np.mean(IMAGENET[1]))


@functools.cache
def reference(backbone: str) -> nn.Module:
    """3-channel timm model, random but fixed, with non-trivial BatchNorm statistics (so folding into BN counts)."""
    torch.manual_seed(0)
    model, _, _ = create_backbone(backbone, "none", num_classes=10)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@functools.cache
def grey_photo(size: int = 64) -> torch.Tensor:
    from skimage import data, transform

    img = transform.resize(data.camera() / 255.0, (size, size), anti_aliasing=True)
    return torch.from_numpy(img.astype(np.float32))[None, None]


def normalise(x, mean, std):
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def converted(backbone, strategy, in_chans=1, stats=IMAGENET):
    model = copy.deepcopy(reference(backbone))
    return model, convert_stem(model, strategy, in_chans, *stats)


@torch.no_grad()
def logits_diff(backbone, strategy, ref_stats, stats=IMAGENET):
    model, norm = converted(backbone, strategy, stats=stats)
    x = grey_photo()
    ref_logits = reference(backbone)(normalise(x.expand(-1, 3, -1, -1), *ref_stats))
    return (model(normalise(x, norm.mean, norm.std)) - ref_logits).abs().max().item(), norm


@pytest.mark.parametrize("backbone", BACKBONES)
def test_sum_and_mean_exact_for_equal_channel_stats(backbone):
    equal = ((M_BAR,) * 3, (S_BAR,) * 3)
    diff, norm = logits_diff(backbone, "sum", equal)
    assert diff < 1e-4 and norm == Normalization((M_BAR,), (S_BAR,))
    diff, norm = logits_diff(backbone, "mean", equal)
    assert diff < 1e-4 and norm.std[0] == pytest.approx(S_BAR / 3)  # x3 input compensates the /3 kernel


@pytest.mark.parametrize("backbone", BACKBONES)
def test_repeat_is_the_per_channel_reference(backbone):
    diff, norm = logits_diff(backbone, "repeat", IMAGENET)
    assert diff < 1e-4 and norm == Normalization((0.0,), (1.0,))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_random_stem_differs(backbone):
    torch.manual_seed(1)
    diff, _ = logits_diff(backbone, "random", ((M_BAR,) * 3, (S_BAR,) * 3))
    assert diff > 1e-2


@pytest.mark.parametrize("size", [64, 96])
@pytest.mark.parametrize("backbone", ["resnet18", "densenet121", "tf_efficientnet_b0", "convnext_nano"])
def test_fold_is_the_per_channel_reference_everywhere(backbone, size):
    """Stem output (border included) and logits equal the 3-channel per-channel-normalised model.

    tf_efficientnet_b0: TF 'same' padding (Conv2dSame, asymmetric and size-dependent) with ImageNet per-channel stats.
    """
    ref = reference(backbone)
    name, ref_conv = stem_conv(ref)
    model, norm = converted(backbone, "fold")
    assert norm == Normalization((pytest.approx(M_BAR),), (pytest.approx(S_BAR),))
    stem = model.get_submodule(name)
    assert isinstance(stem, FoldedStem) and stem_conv(model) == (f"{name}.conv", stem.conv)
    x = torch.cat([grey_photo(size), torch.rand(1, 1, size, size)])
    ref_logits, ref_y = output_at(ref, ref_conv, normalise(x.expand(-1, 3, -1, -1), *IMAGENET))
    logits, y = output_at(model, stem, normalise(x, norm.mean, norm.std))
    mask = border_mask(stem.conv, size, size)
    assert mask.any() == (backbone != "convnext_nano")  # ConvNeXt's 4x4/4 patchify stem has no padding
    assert (y - ref_y).abs().max() < 1e-4  # interior and border
    assert (logits - ref_logits).abs().max() < 1e-4


def test_fold_correction_cache_is_keyed_by_size():
    model, norm = converted("resnet18", "fold")
    stem = model.conv1
    with torch.no_grad():
        for size in (64, 96, 64):
            model(torch.rand(2, 1, size, size))
    cpu = torch.device("cpu")
    assert list(stem._cache) == [(64, 64, cpu, torch.float32), (96, 96, cpu, torch.float32)]
    c64, c96 = stem._cache[(64, 64, cpu, torch.float32)], stem._cache[(96, 96, cpu, torch.float32)]
    assert c64.shape == (1, 64, 32, 32) and c96.shape == (1, 64, 48, 48)
    assert torch.allclose(c64[..., 2:-2, 2:-2], c96[..., 2:30, 2:30])  # same interior constant...
    assert not torch.allclose(c64[..., :, 0], c64[..., :, 16])  # ...but not at the border
    # a changed kernel (load_state_dict copies in place) drops the stale maps
    sd = {k: (v * 2 if k == "conv1.correction.weight" else v) for k, v in model.state_dict().items()}
    model.load_state_dict(sd)
    with torch.no_grad():
        y = stem(torch.rand(1, 1, 64, 64))
    assert list(stem._cache) == [(64, 64, cpu, torch.float32)]
    assert torch.allclose(stem._cache[(64, 64, cpu, torch.float32)], 2 * c64, atol=1e-6)
    assert y.shape == (1, 64, 32, 32)


def test_fold_stem_exports_with_dynamic_batch():
    model, norm = converted("resnet18", "fold")
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(model, (torch.rand(2, 1, 64, 64),), dynamic_shapes=({0: batch},))
    assert model.conv1._cache == {}  # traced in the graph, not read from (or written to) the eager cache
    for b in (1, 3):
        x = torch.rand(b, 1, 64, 64)
        with torch.no_grad():
            assert (ep.module()(x) - model(x)).abs().max() < 1e-5


def test_fold_keeps_timm_interfaces():
    model, _ = converted("densenet121", "fold")
    assert stem_conv(model)[0] == "features.conv0.conv"
    sd = model.state_dict()
    assert "features.conv0.conv.weight" in sd and "features.conv0.correction.weight" in sd
    assert "features.conv0.correction.weight" not in dict(model.named_parameters())  # a fixed buffer
    from timm.models import group_parameters

    groups = group_parameters(model, model.group_matcher(coarse=True))
    assert "features.conv0.conv.weight" in groups[0]  # still in timm's stem group


def test_in_chans_two_channels():
    model, norm = converted("resnet18", "sum", in_chans=2)
    assert norm == Normalization((M_BAR,) * 2, (S_BAR,) * 2)
    w3 = reference("resnet18").conv1.weight
    assert torch.equal(model.conv1.weight, adapt_input_conv(2, w3))  # timm: repeated, scaled by 3/2
    # fold with two identical windows equals the per-channel reference, border included
    model, norm = converted("resnet18", "fold", in_chans=2)
    x = grey_photo()
    with torch.no_grad():
        y = model.conv1(normalise(x.expand(-1, 2, -1, -1), norm.mean, norm.std))
        y_ref = reference("resnet18").conv1(normalise(x.expand(-1, 3, -1, -1), *IMAGENET))
    assert norm == Normalization((pytest.approx(M_BAR),) * 2, (pytest.approx(S_BAR),) * 2)
    assert (y - y_ref).abs().max() < 1e-4
    with pytest.raises(ConfigError, match="model.stem=repeat"):
        converted("resnet18", "repeat", in_chans=2)


def test_repeat_keeps_timm_interfaces():
    model, _ = converted("tf_efficientnet_lite0", "repeat")
    assert stem_conv(model)[0] == "conv_stem.conv"
    assert "conv_stem.conv.weight" in model.state_dict() and "conv_stem.mean" in model.state_dict()
    from timm.models import group_parameters

    groups = group_parameters(model, model.group_matcher(coarse=True))
    assert "conv_stem.conv.weight" in groups[0]  # still in timm's stem group
    assert model.get_classifier().out_features == 10


def test_unknown_strategy_is_a_config_error():
    with pytest.raises(ConfigError, match="model.stem"):
        converted("resnet18", "average")
