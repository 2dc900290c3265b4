"""Check a grey-stem conversion against the 3-channel model it came from, on real photographs made grey.

    graystem check-stem --backbone resnet18 --stem fold [--pretrained none|bundled|timm|PATH] [--size 224]

Prints one JSON object. The reference is the 3-channel model fed the grey image replicated to RGB and normalised
per channel (fold, repeat: the exact target) or with the scalar stats (sum, mean, random: what they are exact for);
`max_abs_diff_vs_per_channel` always compares with the per-channel reference, showing what `sum` loses with
ImageNet stats. The stem output (the converted stem module: the conv, or the FoldedStem / RepeatChannels wrapping
it) is split into interior and border (receptive field touching the padding).
"""
from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import torch

from pipeline.errors import exits_on_error
from pipeline.model.stems import border_mask, convert_stem, output_at, stem_conv
from pipeline.model.weights import create_backbone
from pipeline.vocab import STEM_STRATEGIES


def grey_photo(name: str, size: int) -> torch.Tensor:
    """(1, 1, size, size) in [0, 1]: a skimage.data photograph, luminance (rgb2gray), resized."""
    from skimage import color, data, transform

    img = getattr(data, name)()
    grey = color.rgb2gray(img) if img.ndim == 3 else img / 255.0
    return torch.from_numpy(transform.resize(grey, (size, size), anti_aliasing=True).astype(np.float32))[None, None]


def _normalise(x, mean, std):
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def _top5(logits):
    from timm.data import ImageNetInfo

    info = ImageNetInfo() if logits.shape[-1] == 1000 else None
    p, idx = logits.softmax(-1)[0].topk(5)
    return [dict(index=int(i), name=info.index_to_description(int(i)) if info else str(int(i)), p=round(float(v), 4))
            for v, i in zip(p, idx, strict=True)]


def check_stem(backbone: str = "tf_efficientnet_lite0", stem: str = "fold", pretrained: str = "none",
               size: int = 224, seed: int = 0, images=("chelsea", "coffee")) -> dict:
    torch.manual_seed(seed)
    ref, mean, std = create_backbone(backbone, pretrained, num_classes=1000)
    ref.eval()
    model = copy.deepcopy(ref)
    ref_conv_name, ref_conv = stem_conv(ref)
    norm = convert_stem(model, stem, 1, mean, std)
    _, conv = stem_conv(model)
    site_ref, site_1ch = ref_conv, model.get_submodule(ref_conv_name)  # the whole stem module (FoldedStem, ...)

    per_channel = stem in ("fold", "repeat")
    m_bar, s_bar = (sum(mean) / len(mean),) * len(mean), (sum(std) / len(std),) * len(std)
    result = dict(backbone=backbone, strategy=stem, pretrained=pretrained, size=size,
                  normalization=norm.to_dict(), weights_mean=list(mean), weights_std=list(std),
                  reference="per-channel normalised" if per_channel else "scalar-normalised (mean of channel stats)",
                  stem_site=ref_conv_name)
    diffs, rels, vs_pc, interior, border, scale = [], [], [], [], [], []
    mask = None
    for img in images:
        x = grey_photo(img, size)
        x3 = x.expand(-1, len(mean), -1, -1)
        ref_logits, ref_stem = output_at(ref, site_ref, _normalise(x3, *((mean, std) if per_channel else (m_bar, s_bar))))
        pc_logits = ref(_normalise(x3, mean, std)).detach()
        logits, stem_out = output_at(model, site_1ch, _normalise(x, norm.mean, norm.std))
        d = (logits - ref_logits).abs().max().item()
        diffs.append(d)
        rels.append(d / ref_logits.abs().max().item())
        vs_pc.append((logits - pc_logits).abs().max().item())
        if mask is None:
            mask = border_mask(conv, size, size)
        dev = (stem_out - ref_stem).abs()[0].amax(0)  # (H', W'): max over output channels
        interior.append(dev[~mask].max().item())
        border.append(dev[mask].max().item() if mask.any() else 0.0)  # ConvNeXt's patchify stem: no padding
        scale.append(ref_stem.abs().max().item())
        if pretrained != "none":
            result[f"top5_{img}"] = _top5(logits)
            result[f"top5_{img}_reference"] = _top5(pc_logits)
    out_hw = stem_out.shape[-2:]
    macs = [int(np.prod(out_hw)) * c.weight.numel() for c in (conv, ref_conv)]
    result.update(
        max_abs_diff=max(diffs), rel_diff=max(rels), max_abs_diff_vs_per_channel=max(vs_pc),
        stem_interior_max_abs_diff=max(interior), border_only=max(border),
        border_rel=max(border) / max(scale), border_fraction=round(mask.float().mean().item(), 4),
        stem_params_1ch=sum(p.numel() for p in conv.parameters()),
        stem_params_3ch=sum(p.numel() for p in ref_conv.parameters()),
        stem_macs_ratio=macs[0] / macs[1])
    return result


@exits_on_error
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--stem", default="fold", choices=STEM_STRATEGIES)
    ap.add_argument("--pretrained", default="none", help="none | bundled | timm | PATH")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(json.dumps(check_stem(args.backbone, args.stem, args.pretrained, args.size, args.seed)))
    return 0
