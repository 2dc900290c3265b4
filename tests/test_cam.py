"""Grad-CAM (pipeline.deploy.cam): maps of the input's shape, finite, image-dependent, for every backbone family with
the 1-channel stem, and on a model whose only signal is a corner marker, concentrated in that corner."""

import numpy as np
import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.deploy.cam import SignedBinary, cam_maps_for_class, model_maps, target_layer
from pipeline.model.models import build_model


def _images(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g)


@pytest.mark.parametrize("backbone", ["resnet18", "densenet121", "tf_efficientnet_lite0", "convnext_nano"])
def test_maps_shape_finite_and_image_dependent(backbone):
    torch.manual_seed(0)
    built = build_model(ModelConfig(backbone=backbone, pretrained="none"), 1)
    layer = target_layer(built.model)
    assert layer in dict(built.model.named_modules())
    x = _images(2, 64, 1)
    x[1, :, :32, :32] += 0.8  # a second, different image
    x = x.clamp(0, 1)
    # an untrained model may see no positive evidence (an all-zero map): map the class it decides instead
    signed = SignedBinary(built.model, 0.5).eval()
    with torch.no_grad():
        decided = signed((x - torch.tensor(built.norm.mean).view(1, -1, 1, 1)) / torch.tensor(built.norm.std).view(1, -1, 1, 1)).argmax(1)
    maps = torch.cat([model_maps(signed, built.norm, x[k:k + 1], int(decided[k])) for k in range(2)])
    assert maps.shape == (2, 64, 64)
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert not torch.allclose(maps[0], maps[1], atol=1e-3)


def _corner_set(n, size, seed):
    """Noise images; the positives (odd index) carry a bright square in the top-left corner, nothing else."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 0.5, size=(n, 1, size, size)).astype(np.float32)
    y = np.arange(n) % 2
    m = size * 6 // 32  # the 6x6-of-32 marker at this size
    x[y == 1, :, 1:1 + m, 1:1 + m] = 1.0
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))


def test_corner_marker_model_looks_at_the_corner():
    torch.manual_seed(0)
    size = 64
    built = build_model(ModelConfig(backbone="resnet18", pretrained="none"), 1)
    model, norm = built.model, built.norm
    mean = torch.tensor(norm.mean).view(1, -1, 1, 1)
    std = torch.tensor(norm.std).view(1, -1, 1, 1)
    x, y = _corner_set(64, size, 0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(6):
        for idx in torch.randperm(len(x)).split(16):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model((x[idx] - mean) / std)[:, 0], y[idx])
            loss.backward()
            opt.step()
    model.eval()
    xt, yt = _corner_set(16, size, 1)
    with torch.no_grad():
        p = torch.sigmoid(model((xt - mean) / std)[:, 0])
    assert ((p > 0.5).float() == yt).float().mean() >= 0.9  # it did learn the marker
    maps = cam_maps_for_class([model], norm, xt[yt == 1], 0)
    half = size // 2
    mass = maps[:, :half, :half].sum((1, 2)) / maps.sum((1, 2)).clip(1e-12)
    print(f"corner-quadrant share of the Grad-CAM mass on positives: {mass.mean():.3f} (min {mass.min():.3f})")
    assert mass.mean() > 0.5
