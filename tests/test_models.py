"""Model factory: weight sources, bundled ImageNet weights on real photos, freezing, optimiser compatibility."""
import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from timm.optim import create_optimizer_v2
from torch import nn

from pipeline.config import ModelConfig
from pipeline.errors import ConfigError
from pipeline.model.models import build_model, freeze_bn_stats, set_trainable, stem_conv
from pipeline.model.weights import create_backbone

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = ["resnet18", "densenet121", "tf_efficientnet_lite0", "convnext_nano"]
# 'last:1' = the last coarse group of timm's group_matcher + head (with the neck layers timm groups with it)
LAST1 = {"resnet18": ("layer4.", "fc."), "densenet121": ("features.denseblock4.", "features.norm5.", "classifier."),
         "tf_efficientnet_lite0": ("blocks.6.", "conv_head.", "bn2.", "classifier."),
         "convnext_nano": ("stages.3.", "head.")}


def cfg(**kw):
    base = dict(backbone="tf_efficientnet_lite0", pretrained="none", stem="sum", in_chans=1, drop_rate=0.0)
    return ModelConfig.model_construct(**{**base, **kw})  # in_chans=2 is refused by Config, not by the factory


def grey(name, size=224):
    from skimage import color, data, transform

    g = transform.resize(color.rgb2gray(getattr(data, name)()), (size, size), anti_aliasing=True)
    return torch.from_numpy(g.astype(np.float32))[None, None]


def run(model, x, norm):
    with torch.no_grad():
        return model.eval()(
            (x - torch.tensor(norm.mean).view(1, -1, 1, 1)) / torch.tensor(norm.std).view(1, -1, 1, 1))


@pytest.fixture(scope="module")
def bundled():
    return build_model(cfg(pretrained="bundled"), 1000)


def test_bundled_map_reproduces_imagenet_on_colour_photos():
    from skimage import data, transform

    model, mean, std = create_backbone("tf_efficientnet_lite0", "bundled", 1000)
    assert mean == std == (0.5, 0.5, 0.5)
    for name, cls, p in (("chelsea", 285, 0.79), ("coffee", 967, 0.91)):
        rgb = torch.from_numpy(transform.resize(getattr(data, name)(), (224, 224)).astype(np.float32))
        with torch.no_grad():
            prob = model.eval()(((rgb - 0.5) / 0.5).permute(2, 0, 1)[None]).softmax(-1)[0]
        assert prob.argmax() == cls and prob[cls].item() == pytest.approx(p, abs=0.02)


def test_bundled_grey_top5_and_equal_to_3_channel(bundled):
    model, norm, _ = bundled
    assert norm.mean == (0.5,) and norm.std == (0.5,) and model.conv_stem.in_channels == 1
    top5 = {name: run(model, grey(name), norm).topk(5).indices[0].tolist() for name in ("chelsea", "coffee")}
    assert set(top5["chelsea"]) & set(range(281, 286)) and set(top5["coffee"]) & {967, 968}
    ref, _, _ = create_backbone("tf_efficientnet_lite0", "bundled", 1000)
    x = grey("chelsea")
    assert (run(model, x, norm) - run(ref, x.expand(-1, 3, -1, -1), norm)).abs().max() < 1e-4


def test_check_stem_script_reports(bundled):
    from pipeline.tools.check_stem import check_stem

    out = check_stem("tf_efficientnet_lite0", "sum", "bundled", size=224)
    assert out["max_abs_diff"] < 1e-4 and out["stem_params_1ch"] * 3 == out["stem_params_3ch"] == 864
    assert out["top5_chelsea"][0]["name"] == "Egyptian cat" and out["top5_coffee"][0]["index"] == 967
    out = check_stem("resnet18", "fold", "none", size=64)
    assert out["stem_interior_max_abs_diff"] < 1e-4 and out["border_only"] < 1e-4 and out["max_abs_diff"] < 1e-4
    assert out["stem_macs_ratio"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_set_trainable_head_and_last_group(backbone):
    model, _, _ = build_model(cfg(backbone=backbone, drop_rate=0.3), 4)
    drops = [getattr(model, "drop_rate", None)] + [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert 0.3 in drops and model.get_classifier().out_features == 4
    head = {id(p) for p in model.get_classifier().parameters()}
    frozen = set_trainable(model, "head")
    assert {id(p) for p in model.parameters() if p.requires_grad} == head
    assert any(isinstance(m, nn.modules.batchnorm._NormBase) for m in frozen) or backbone == "convnext_nano"
    set_trainable(model, "last:1")
    for name, p in model.named_parameters():
        assert p.requires_grad == name.startswith(LAST1[backbone]), name
    assert set_trainable(model, "all") == [] and all(p.requires_grad for p in model.parameters())
    with pytest.raises(ConfigError, match="last:N"):
        set_trainable(model, "last:0")


@pytest.mark.parametrize("backbone", ["resnet18", "densenet121"])
def test_set_trainable_with_the_fold_stem(backbone):
    """The FoldedStem's conv stays in timm's stem group; its correction kernel is a buffer, never trained."""
    model = build_model(cfg(backbone=backbone, stem="fold"), 2).model
    name, conv = stem_conv(model)
    set_trainable(model, "head")
    assert not conv.weight.requires_grad
    set_trainable(model, "last:1")
    for n, p in model.named_parameters():
        assert p.requires_grad == n.startswith(LAST1[backbone]), n
    n_groups = len(model.group_matcher(coarse=True))  # enough groups to reach the stem
    set_trainable(model, f"last:{n_groups + 10}")
    assert conv.weight.requires_grad and all(p.requires_grad for p in model.parameters())
    assert f"{name.rsplit('.', 1)[0]}.correction.weight" in dict(model.named_buffers())


def test_frozen_bn_stats_stay_and_optimiser_skips_frozen():
    torch.manual_seed(0)
    model, norm, _ = build_model(cfg(backbone="resnet18", stem="repeat"), 3)
    frozen = set_trainable(model, "last:1")
    before = model.bn1.running_mean.clone(), model.layer4[0].bn1.running_mean.clone()
    model.train()
    freeze_bn_stats(frozen)
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.7)
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.parameters() if p.requires_grad)
    loss = model(torch.rand(4, 1, 64, 64)).logsumexp(-1).mean()
    loss.backward()
    opt.step()
    assert torch.equal(model.bn1.running_mean, before[0]) and not model.bn1.training
    assert not torch.equal(model.layer4[0].bn1.running_mean, before[1])  # trainable BN keeps learning stats


@pytest.mark.parametrize("stem", ["fold", "repeat"])
def test_rebuild_from_checkpoint_with_pretrained_none(tmp_path, stem):
    torch.manual_seed(0)
    src = create_backbone("resnet18", "none", 1000)[0]
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    model, norm, _ = build_model(cfg(backbone="resnet18", stem=stem, pretrained=str(tmp_path / "r18.pth")), 2)
    again, norm2, _ = build_model(cfg(backbone="resnet18", stem=stem, pretrained=str(tmp_path / "r18.pth")), 2,
                               pretrained="none")
    again.load_state_dict(model.state_dict())  # strict: same architecture whatever the weight source
    x = torch.rand(1, 1, 64, 64)
    assert norm == norm2 and torch.equal(run(model, x, norm), run(again, x, norm2))


def test_weights_from_file(tmp_path, monkeypatch):
    torch.manual_seed(0)
    src = create_backbone("resnet18", "none", 1000)[0].state_dict()
    wrapped = {"model_state_dict": {f"module.{k}": v for k, v in src.items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "ddp.pth")
    save_file(src, str(tmp_path / "r18.safetensors"))
    save_file({k: v for k, v in src.items() if not k.startswith("fc.")}, str(tmp_path / "headless.safetensors"))
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real_load(*a, **kw))
    for name in ("ddp.pth", "r18.safetensors", "headless.safetensors"):
        model, _, _ = build_model(cfg(backbone="resnet18", pretrained=str(tmp_path / name)), 3)
        assert torch.equal(model.conv1.weight, src["conv1.weight"].sum(1, keepdim=True))
        assert torch.equal(model.layer4[1].bn2.running_var, src["layer4.1.bn2.running_var"])
        assert model.fc.out_features == 3
    assert calls and all(kw.get("weights_only") is True for kw in calls)


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_bad_checkpoints_are_config_errors(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(ConfigError, match="model.pretrained.*nope.pth"):
        build_model(cfg(backbone="resnet18", pretrained=str(missing)), 2)
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"conv1.weight": _Payload()}, protocol=2))
    with pytest.raises(ConfigError, match="evil.pth"):  # refused by weights_only=True
        build_model(cfg(backbone="resnet18", pretrained=str(tmp_path / "evil.pth")), 2)
    torch.save(create_backbone("resnet18", "none", 10)[0].state_dict(), tmp_path / "r18.pt")
    with pytest.raises(ConfigError, match="does not fit backbone densenet121"):
        build_model(cfg(backbone="densenet121", pretrained=str(tmp_path / "r18.pt")), 2)
    with pytest.raises(ConfigError, match="neither bundled, timm, none"):
        build_model(cfg(pretrained="imagenet"), 2)


def test_source_errors_name_backbone_and_fix(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="bundled.*resnet18.*tf_efficientnet_lite0"):
        build_model(cfg(backbone="resnet18", pretrained="bundled"), 2)
    with pytest.raises(ConfigError, match="model.backbone"):
        build_model(cfg(backbone="resnet_does_not_exist"), 2)
    import huggingface_hub.constants
    import torch.hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch"))
    with pytest.raises(ConfigError, match="model.pretrained=timm: weights for resnet18 are not in the local cache"):
        build_model(cfg(backbone="resnet18", pretrained="timm"), 2)
    # a cached copy (the Hugging Face cache layout) is used without any network access
    torch.manual_seed(0)
    src = create_backbone("resnet18", "none", 1000)[0].state_dict()
    snap = tmp_path / "hf" / "models--timm--resnet18.a1_in1k" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("abc")
    save_file(src, str(snap / "model.safetensors"))
    model, norm, _ = build_model(cfg(backbone="resnet18", pretrained="timm", stem="fold"), 2)
    assert norm.mean == (pytest.approx(0.449),)
    assert stem_conv(model)[1].weight.shape == (64, 1, 7, 7)
    assert torch.equal(model.layer1[0].conv1.weight, src["layer1.0.conv1.weight"])


def test_stem_conv_names():
    for backbone, name in (("resnet18", "conv1"), ("densenet121", "features.conv0"), ("convnext_nano", "stem.0")):
        model = build_model(cfg(backbone=backbone), 2)[0]
        assert stem_conv(model)[0] == name and stem_conv(model)[1].in_channels == 1
    model = build_model(cfg(backbone="resnet18", stem="repeat"), 2)[0]
    assert stem_conv(model)[0] == "conv1.conv" and copy.deepcopy(model).eval()(torch.rand(1, 1, 32, 32)).shape == (1, 2)
    model = build_model(cfg(backbone="resnet18", in_chans=2), 2)[0]
    assert model.eval()(torch.rand(1, 2, 32, 32)).shape == (1, 2)


def test_auto_stem_picks_the_exact_strategy():
    """auto = sum for equal channel stats (Lite0: 0.5/0.5), fold for per-channel ImageNet stats (resnet18)."""
    from pipeline.config import ModelConfig

    lite, lite_norm, lite_stem = build_model(ModelConfig(stem="auto", pretrained="none"), 1)
    res, res_norm, res_stem = build_model(ModelConfig(backbone="resnet18", stem="auto", pretrained="none"), 1)
    assert lite_stem == "sum" and lite_norm.mean == (0.5,) and lite_norm.std == (0.5,)
    assert res_stem == "fold"
    assert res_norm.mean[0] == pytest.approx((0.485 + 0.456 + 0.406) / 3)
    assert res_norm.std[0] == pytest.approx((0.229 + 0.224 + 0.225) / 3)


def test_new_head_starts_at_zero_so_first_loss_is_ln2():
    from pipeline.config import ModelConfig

    model, _, _ = build_model(ModelConfig(), 1)
    head = model.get_classifier()
    assert head.weight.abs().sum() == 0 and head.bias.abs().sum() == 0
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model.eval()(x).squeeze(1), torch.tensor([0.0, 1.0]))
    assert loss.item() == pytest.approx(np.log(2), abs=1e-6)
