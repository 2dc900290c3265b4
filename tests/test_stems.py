"""Stem conversions against the 3-channel model they came from (random but fixed weights, real grey photo)."""
import copy
import functools

import numpy as np
import pytest
import torch
from timm.models._manipulate import adapt_input_conv
from torch import nn

from pipeline.errors import ConfigError
from pipeline.stems import Normalization, border_mask, convert_stem, offset_site, output_at, stem_conv
from pipeline.weights import create_backbone

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


@pytest.mark.parametrize("backbone", BACKBONES)
def test_fold_exact_in_interior_and_border_deviation_measured(backbone):
    ref = reference(backbone)
    name, ref_conv = stem_conv(ref)
    site = ref_conv if ref_conv.bias is not None else offset_site(ref, ref_conv)  # where the offset lands
    site_name = next(n for n, m in ref.named_modules() if m is site)
    model, norm = converted(backbone, "fold")
    assert norm == Normalization((pytest.approx(M_BAR),), (pytest.approx(S_BAR),))
    x = grey_photo()
    ref_logits, ref_y = output_at(ref, site, normalise(x.expand(-1, 3, -1, -1), *IMAGENET))
    logits, y = output_at(model, model.get_submodule(site_name), normalise(x, norm.mean, norm.std))
    dev = (y - ref_y).abs()[0].amax(0)
    mask = border_mask(stem_conv(model)[1], 64, 64)
    assert dev[~mask].max() < 1e-4
    logit_dev = (logits - ref_logits).abs().max().item()
    if backbone == "convnext_nano":  # 4x4/4 patchify stem: no padding, so fold is exact everywhere
        assert not mask.any() and logit_dev < 1e-4
    else:  # the border pads with pixel m-bar instead of m_c: a real but bounded deviation
        border = dev[mask].max().item()
        assert 1e-3 < border < 0.25 * ref_y.abs().max().item()
        assert 1e-6 < logit_dev < 0.1 * ref_logits.abs().max().item()


def test_fold_offset_sites():
    expected = {"resnet18": "bn1", "densenet121": "features.norm0", "tf_efficientnet_lite0": "bn1"}
    for backbone, name in expected.items():
        ref = reference(backbone)
        site = offset_site(ref, stem_conv(ref)[1])
        assert next(n for n, m in ref.named_modules() if m is site) == name
    assert stem_conv(reference("convnext_nano"))[1].bias is not None  # ConvNeXt: offset goes to the conv bias


def test_fold_adds_a_bias_when_no_norm_follows():
    ref = copy.deepcopy(reference("resnet18"))
    ref.bn1 = nn.Identity()  # conv1 without bias feeding no BatchNorm
    model = copy.deepcopy(ref)
    norm = convert_stem(model, "fold", 1, *IMAGENET)
    assert model.conv1.bias is not None
    x = grey_photo()
    with torch.no_grad():
        y_ref = ref.conv1(normalise(x.expand(-1, 3, -1, -1), *IMAGENET))
        y = model.conv1(normalise(x, norm.mean, norm.std))
    mask = border_mask(model.conv1, 64, 64)
    assert (y - y_ref).abs()[0].amax(0)[~mask].max() < 1e-4


def test_in_chans_two_channels():
    model, norm = converted("resnet18", "sum", in_chans=2)
    assert norm == Normalization((M_BAR,) * 2, (S_BAR,) * 2)
    w3 = reference("resnet18").conv1.weight
    assert torch.equal(model.conv1.weight, adapt_input_conv(2, w3))  # timm: repeated, scaled by 3/2
    # fold with two identical windows equals the per-channel reference away from the border
    model, norm = converted("resnet18", "fold", in_chans=2)
    x = grey_photo()
    with torch.no_grad():
        y = model.conv1(normalise(x.expand(-1, 2, -1, -1), norm.mean, norm.std))
        y_ref = reference("resnet18").conv1(normalise(x.expand(-1, 3, -1, -1), *IMAGENET))
    b = model.bn1  # the offset lives in running_mean: compare after the BatchNorm
    mask = border_mask(model.conv1, 64, 64)
    dev = (b(y) - reference("resnet18").bn1(y_ref)).abs()[0].amax(0)
    assert dev[~mask].max() < 1e-4
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
