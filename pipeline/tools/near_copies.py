"""Near copies made from real images, and the measurement the near-duplicate threshold is chosen from.

`COPIES` are the edits that turn one scan into a "different" file in real collections: a re-crop (up to 5%), a
rescale, JPEG re-encoding, burned-in text and caliper marks, a gamma change, a shift of a few pixels, and one
combination. `measure` hashes originals and copies through the pipeline's own reader chain (the pixels training
sees) and counts, per threshold, the copies found and the distinct images (of one patient, of different
patients) wrongly joined. scripts/near_duplicate_threshold.py prints it as JSON; docs/data_checks.md has the figures.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def _crop(img: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = img.size
    return img.crop((round(w * left), round(h * top), w - round(w * right), h - round(h * bottom)))


def _gamma(img: Image.Image, g: float) -> Image.Image:
    a = np.asarray(img, dtype=np.float64) / 255
    return Image.fromarray((a**g * 255).round().astype(np.uint8))


def _shift(img: Image.Image, dx: int, dy: int) -> Image.Image:
    out = Image.new("L", img.size, 0)
    out.paste(img, (dx, dy))
    return out


def _annotate(img: Image.Image) -> Image.Image:
    """Burned-in text (a corner label and a date) and two caliper crosses joined by a dotted line."""
    out = img.copy()
    d = ImageDraw.Draw(out)
    w, h = out.size
    size = max(10, h // 28)
    d.text((w * 0.03, h * 0.03), "L  ID 48213", fill=255, font_size=size)
    d.text((w * 0.60, h * 0.93), "12/03/2019 14:02", fill=255, font_size=size)
    (x0, y0), (x1, y1) = (w * 0.35, h * 0.45), (w * 0.62, h * 0.58)
    arm = max(3, w // 60)
    for x, y in ((x0, y0), (x1, y1)):
        d.line([(x - arm, y), (x + arm, y)], fill=255, width=2)
        d.line([(x, y - arm), (x, y + arm)], fill=255, width=2)
    for t in np.linspace(0.1, 0.9, 9):
        x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
        d.ellipse([x - 1, y - 1, x + 1, y + 1], fill=255)
    return out


def _rescale(img: Image.Image, f: float) -> Image.Image:
    return img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.Resampling.LANCZOS)


# name -> (edit, file suffix): JPEG copies are written as .jpg, the others as lossless PNG
COPIES: dict[str, tuple[Callable[[Image.Image], Image.Image], str]] = {
    "crop_5pct_corner": (lambda im: _crop(im, 0.05, 0.05, 0, 0), ".png"),
    "crop_2.5pct_sides": (lambda im: _crop(im, 0.025, 0.025, 0.025, 0.025), ".png"),
    "rescale_0.6": (lambda im: _rescale(im, 0.6), ".png"),
    "jpeg_q60": (lambda im: im, ".jpg"),
    "text_and_calipers": (_annotate, ".png"),
    "gamma_0.8": (lambda im: _gamma(im, 0.8), ".png"),
    "gamma_1.25": (lambda im: _gamma(im, 1.25), ".png"),
    "shift_4px": (lambda im: _shift(im, 4, 3), ".png"),
    "crop_3pct_jpeg_text": (lambda im: _annotate(_crop(im, 0.03, 0, 0, 0.03)), ".jpg"),
}


def write_copy(img: Image.Image, name: str, path_stem: Path) -> Path:
    """Writes the copy `name` of an 8-bit gray image next to `path_stem` and returns its path."""
    edit, suffix = COPIES[name]
    path = path_stem.parent / (path_stem.name + suffix)  # names hold dots (rescale_0.6): no with_suffix
    edit(img.convert("L")).save(path, **({"quality": 60} if suffix == ".jpg" else {}))
    return path


@dataclass(frozen=True)
class Source:
    """One real image: where it is, which set, which patient (None: unknown, distinct from every other)."""

    path: Path
    dataset: str
    patient: str | None


def real_sources(busi: Path, nih: Path, demo_labels: Path | None, n_busi: int = 30, n_nih_patients: int = 20,
                 n_demo: int = 20, seed: int = 0) -> list[Source]:
    """BUSI images, NIH films of patients with several films (distinct images of one patient), pydicom-data's CR
    radiographs and demo images (whose patients have 1-3 follow-ups)."""
    from pydicom.data import get_testdata_file

    rnd = random.Random(seed)
    out: list[Source] = []
    rows = list(csv.DictReader((busi / "manifest.csv").open()))
    out += [Source(busi / r["image"], "busi", None) for r in rnd.sample(rows, min(n_busi, len(rows)))]
    rows = list(csv.DictReader((nih / "manifest.csv").open()))
    by_patient: dict[str, list[str]] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], []).append(r["image"])
    multi = sorted(p for p, v in by_patient.items() if len(v) > 1)
    for p in rnd.sample(multi, min(n_nih_patients, len(multi))):
        out += [Source(nih / im, "nih", f"nih:{p}") for im in by_patient[p]]
    singles = sorted(p for p, v in by_patient.items() if len(v) == 1)
    out += [Source(nih / by_patient[p][0], "nih", f"nih:{p}") for p in rnd.sample(singles, min(10, len(singles)))]
    for name in ("RG1_UNCR.dcm", "RG3_UNCR.dcm", "US1_UNCR.dcm"):
        f = get_testdata_file(name)
        if f:
            out.append(Source(Path(f), "pydicom-data", f"pydicom:{name}"))
    if demo_labels is not None:
        rows = [r for r in csv.DictReader(demo_labels.open())]
        rows = sorted(rows, key=lambda r: r["patient_id"])[: n_demo]
        out += [Source(demo_labels.parent / r["image"], "demo", f"demo:{r['patient_id']}") for r in rows]
    return out


def _as_8bit(path: Path) -> Image.Image:
    """The source as a viewer shows it, 8-bit: what a copy made from an export would start from."""
    from pipeline.io import read_gray

    a, _ = read_gray(str(path))
    a = (a - a.min()) / max(float(a.max() - a.min()), 1e-9)
    return Image.fromarray((a * 255).round().astype(np.uint8))


def decoded_hashes(cfg, paths: list[Path]) -> np.ndarray:
    """(pHash, dHash) of each file as the pipeline decodes it for training (reader chain, quantized 16-bit)."""
    from pipeline.data.datasets import quantize
    from pipeline.data.near_duplicates import image_hashes
    from pipeline.data.transforms import load_transforms

    chain = load_transforms(cfg.data)
    return np.array([image_hashes(quantize(chain({"image": str(p), "frame": None})["image"])) for p in paths],
                    dtype=np.uint64)


def measure(cfg, sources: list[Source], folder: Path) -> dict:
    """Per threshold: recall of each kind of copy (copy vs its original), and the pairs of distinct images
    joined (same patient / different patients), for the 64-bit pHash, the 256-bit pHash and dHash, both of
    those, and the pipeline's rule (64-bit pHash within SEARCH_RADIUS, then both 256-bit hashes)."""
    from pipeline.data.near_duplicates import SEARCH_RADIUS, distances, hamming

    folder.mkdir(parents=True, exist_ok=True)
    paths, origin, kind = [], [], []
    for k, s in enumerate(sources):
        paths.append(s.path)
        origin.append(k)
        kind.append("original")
        img = _as_8bit(s.path)
        for name in COPIES:
            paths.append(write_copy(img, name, folder / f"{k:04d}_{name}"))
            origin.append(k)
            kind.append(name)
    h = decoded_hashes(cfg, paths)  # N x 9 words (pipeline.data.near_duplicates.image_hashes)
    origin, kind = np.array(origin), np.array(kind)
    iu, ju = np.triu_indices(len(paths), 1)
    d64 = hamming(h[iu, 0], h[ju, 0])
    dp, dd = distances(h[iu], h[ju])
    same = origin[iu] == origin[ju]
    pat = [s.patient for s in sources]
    same_patient = np.array([pat[a] is not None and pat[a] == pat[b] for a, b in zip(origin[iu], origin[ju],
                                                                                     strict=True)]) & ~same
    to_original = same & ((kind[iu] == "original") | (kind[ju] == "original"))
    copy_kind = np.where(kind[iu] == "original", kind[ju], kind[iu])
    sets = np.array([s.dataset for s in sources])
    pair_set = np.where(sets[origin[iu]] == sets[origin[ju]], sets[origin[iu]], "across sets")
    big = range(0, 81, 4)
    both = np.maximum(dp, dd)
    rules = {"phash64": (d64, range(0, 17, 2)), "phash256": (dp, big), "dhash256": (dd, big), "both256": (both, big),
             "pipeline": (np.where(d64 <= SEARCH_RADIUS, both, 10**6), big)}
    out = {"n_sources": len(sources), "n_images": len(paths), "n_copy_pairs": int(to_original.sum()),
           "n_same_patient_distinct_pairs": int(same_patient.sum()),
           "n_different_patient_pairs": int((~same & ~same_patient).sum()),
           "sources": {d: sum(s.dataset == d for s in sources) for d in sorted({s.dataset for s in sources})},
           "rules": {}}
    for rule, (dist, thresholds) in rules.items():
        rows = []
        for t in thresholds:
            hit = dist <= t
            tp, fp = int((hit & same).sum()), int((hit & ~same).sum())
            rows.append({
                "threshold": t, "recall_copy_vs_original": round(float(hit[to_original].mean()), 4),
                "recall_all_copy_pairs": round(float(hit[same].mean()), 4),
                "precision": round(tp / (tp + fp), 4) if tp + fp else None,
                "false_pairs_same_patient": int((hit & same_patient).sum()),
                "false_pairs_different_patients": int((hit & ~same & ~same_patient).sum()),
                "false_pairs_by_set": {d: int((hit & ~same & (pair_set == d)).sum()) for d in np.unique(pair_set)},
                "recall_by_copy": {c: round(float(hit[to_original & (copy_kind == c)].mean()), 3) for c in COPIES},
            })
        out["rules"][rule] = rows
    return out
