#!/usr/bin/env python
"""Write the synthetic demo data sets (chest X-ray DICOMs, ultrasound cine DICOMs/NIfTIs) and their manifests.

Everything is drawn from numpy generators seeded by (seed, dataset, patient, image), UIDs are hashed from the
same numbers and dates are fixed, so two runs write byte-identical files. Layout and manifest format: data/README.md.

    python scripts/make_demo_data.py [--root data/demo] [--only chest_xray|ultrasound] [--force]

Importable by path (scripts/ is not a package)::

    spec = importlib.util.spec_from_file_location("make_demo_data", "scripts/make_demo_data.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    mod.make_demo(Path("data/demo"))
"""

from __future__ import annotations

import argparse
import csv
import datetime
import shutil
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import convert_color_space
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    RLELossless,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)
from scipy import ndimage as ndi

VERSION = "2"  # bump when the generator changes so old demo folders are rewritten
DATASETS = ("chest_xray", "ultrasound")
TEST_FRACTION = 0.2  # of the patients of each class

# --- difficulty knobs. Measured: ImageNet EfficientNet-Lite0 fine-tuned at 128 px on the train split reaches
# AUROC ~0.86 (chest) and ~0.92 (ultrasound, per study) on held-out data; see data/README.md ---------------
OPACITY_CONTRAST = (0.45, 0.95)  # pneumonia patch brightness, as a fraction of the lung/soft-tissue gap
OPACITY_RADIUS = (0.08, 0.22)  # patch size, in half-widths of the image's short side
NODULE_RATE = 0.5  # Poisson mean of small bright nodules per chest image, BOTH classes (nuisance)
LESION_CONTRAST = (0.45, 0.85)  # ultrasound lesion darkening, fraction of the surrounding echogenicity
LESION_RADIUS = (12, 30)  # lesion semi-axis in tissue-grid pixels (the grid is ~ the image size)
US_NUISANCE_PROB = 0.45  # chance of a benign dark lobule / vessel / shadow in ANY study (nuisance)

N_CHEST_PATIENTS, CHEST_POSITIVE = 150, 0.45  # 1-3 images each, ~300 images
N_US_PATIENTS, US_POSITIVE, US_REPEAT = 100, 0.5, 0.2  # 20% of patients have a 2nd study, ~120 studies
CHEST_SIZES = ((256, 256), (320, 256), (288, 320))  # (rows, cols)
US_SHAPE = (240, 320)
BASE_DATE = datetime.date(2024, 1, 1)
UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's root; the suffix is a hash of the entropy below

_DS = {"chest_xray": 1, "ultrasound": 2}  # dataset code mixed into every seed


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _uid(seed: int, *parts) -> str:
    return generate_uid(UID_PREFIX, entropy_srcs=[f"graystem-demo-{seed}", *map(str, parts)])


def _sig(x):
    """Smooth step 0..1; the soft edges keep anatomy from looking cut out with scissors."""
    return 0.5 * (1.0 + np.tanh(x))


def _smooth_noise(rng, shape, sigma):
    """Unit-std Gaussian-correlated noise."""
    n = ndi.gaussian_filter(rng.standard_normal(shape, np.float32), sigma)
    return (n - n.mean()) / (n.std() + 1e-8)


def _lowfreq(rng, y, x, n: int = 4):
    """Smooth unit-ish field: a few random low-frequency plane waves over (y, x) in [0, 1]."""
    out = np.zeros_like(y)
    for _ in range(n):
        fy, fx, ph = rng.uniform(-1.5, 1.5), rng.uniform(-1.5, 1.5), rng.uniform(0, 2 * np.pi)
        out += np.cos(float(2 * np.pi * fy) * y + float(2 * np.pi * fx) * x + float(ph))
    return out / np.sqrt(n / 2)


def _split(labels: list[str], rng) -> list[str]:
    """Whole patients go to test, ~TEST_FRACTION of each class (at least one)."""
    split = ["train"] * len(labels)
    for lab in sorted(set(labels)):
        idx = [i for i, x in enumerate(labels) if x == lab]
        rng.shuffle(idx)
        for i in idx[: max(1, round(TEST_FRACTION * len(idx)))]:
            split[i] = "test"
    return split


def _exact_flags(rng, n: int, frac: float) -> np.ndarray:
    """Exactly round(frac*n) (>=1) True values in random order, so even small sets contain every format."""
    flags = np.zeros(n, bool)
    flags[: max(1, round(frac * n))] = True
    rng.shuffle(flags)
    return flags


# ============================================================ chest X-ray ================================
def chest_specs(seed: int = 0, n_scale: float = 1.0) -> list[dict]:
    """One dict per image: everything needed to render and store it (deterministic)."""
    rng = _rng(seed, _DS["chest_xray"])
    n_pat = max(6, round(N_CHEST_PATIENTS * n_scale))
    labels = ["pneumonia"] * round(CHEST_POSITIVE * n_pat) + ["normal"] * (n_pat - round(CHEST_POSITIVE * n_pat))
    rng.shuffle(labels)
    splits = _split(labels, rng)
    specs = []
    for p in range(n_pat):
        for k in range(int(rng.integers(1, 4))):
            specs.append({"patient": p, "image": k, "patient_id": f"P{p + 1:04d}", "label": labels[p],
                          "split": splits[p], "seed": seed})
    n = len(specs)
    rle, mono1, cr = _exact_flags(rng, n, 0.2), _exact_flags(rng, n, 0.3), _exact_flags(rng, n, 0.5)
    halfslope = _exact_flags(rng, n, 0.5) & cr  # some CR files store real = 0.5*stored - 1024
    for i, s in enumerate(specs):
        s.update(file=f"images/{s['patient_id']}_{s['image'] + 1}.dcm",
                 shape=CHEST_SIZES[int(rng.integers(len(CHEST_SIZES)))],
                 rle=bool(rle[i]), photometric="MONOCHROME1" if mono1[i] else "MONOCHROME2",
                 modality="CR" if cr[i] else "DX", slope=0.5 if halfslope[i] else 1.0,
                 intercept=-1024.0 if halfslope[i] else 0.0, view="PA" if rng.random() < 0.7 else "AP")
    return specs


def render_chest(spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """Brightness image in [0,1] as a viewer shows it (bone bright, lung dark) and the body mask.

    Anatomy is drawn analytically in patient coordinates (u towards the image's right, v down, ~[-1,1] over
    the short side), at half resolution (it is smooth; 4x faster) and upsampled; noise is added at full size."""
    seed, p = spec["seed"], spec["patient"]
    pr = _rng(seed, _DS["chest_xray"], p)  # patient: the same anatomy (and disease) in all their images
    ir = _rng(seed, _DS["chest_xray"], p, 1000 + spec["image"])  # image: pose, exposure, noise
    H, W = spec["shape"]
    h, w, S = H // 2, W // 2, min(H, W) / 4  # S: half the short side, in half-res pixels
    bw, lw, lh = pr.uniform(0.80, 0.92), pr.uniform(0.9, 1.08), pr.uniform(0.88, 1.1)
    hs, dome0, rib_sp = pr.uniform(0.9, 1.2), pr.uniform(0.28, 0.4), pr.uniform(0.095, 0.115)
    female = pr.random() < 0.5

    th = float(np.deg2rad(ir.uniform(-4, 4)))
    ct, st = float(np.cos(th)), float(np.sin(th))  # python floats keep the arrays float32
    sc, dx, dy = float(ir.uniform(0.9, 1.05)), float(ir.uniform(-0.06, 0.06)), float(ir.uniform(-0.04, 0.08))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = (xx + 0.5 - w / 2) / S - dx, (yy + 0.5 - h / 2) / S - dy
    u, v = (ct * x + st * y) / sc, (-st * x + ct * y) / sc
    au = np.abs(u)

    def to_px(uu, vv):  # patient coords -> half-res (row, col), for things splatted as points
        xq, yq = sc * (ct * uu - st * vv) + dx, sc * (st * uu + ct * vv) + dy
        return yq * S + h / 2 - 0.5, xq * S + w / 2 - 0.5

    # body: torso (superellipse) + sloping shoulders (flat ellipses) + neck
    tu, tv = au / bw, (v - 0.2) / 1.1
    body = _sig((1 - tu * tu * tu - tv * tv * tv * tv) / 0.08)
    su, sv = (au - 0.62 * bw) / (0.4 * bw), (v + 0.7) / 0.18
    body = np.maximum(body, _sig((1 - su * su - sv * sv) / 0.15))
    body = np.maximum(body, _sig((0.2 - au) / 0.03) * _sig((-0.5 - v) / 0.05))
    # lungs: ellipses widening downwards, cut by the diaphragm domes (right dome a little higher)
    lung, dome = np.zeros_like(u), np.zeros_like(u)
    for s in (-1, 1):
        cx, cy, ay = s * 0.37 * lw, -0.08, 0.62 * lh
        ax = 0.25 * lw * (1 + 0.25 * np.clip((v - cy) / ay, -1, 1))
        e = ((u - cx) / ax) ** 2 + ((v - cy) / ay) ** 2
        d = dome0 + (0.0 if s < 0 else 0.05) + 2.5 * (u - cx) ** 2
        dome += d * (u * s >= 0)
        lung += _sig((1 - e) / 0.12) * _sig((d - v) / 0.02)
    # heart to the patient's left (image right) sitting on the diaphragm; mediastinum, aortic knob, trachea
    hu, hv = (u - 0.1) / (0.29 * hs), (v - dome0 + 0.04) / (0.23 * hs)
    heart = _sig((1 - hu * hu - hv * hv) / 0.15)
    med = _sig((0.1 - np.abs(u - 0.02)) / 0.025) * _sig((dome0 - v) / 0.05)
    knob = _sig((1 - ((u - 0.11) ** 2 + (v + 0.33) ** 2) / 0.065**2) / 0.3)
    trachea = _sig((0.035 - np.abs(u + 0.01 * v)) / 0.01) * _sig((-0.2 - v) / 0.04)
    lung_e = lung * (1 - heart) * (1 - med) * (1 - knob)
    below = _sig((v - dome) / 0.03)

    A = 0.03 + body * (0.40 + 0.08 * (1 - np.minimum(tu * tu, 1)))
    A -= 0.27 * lung_e * (0.9 + 0.1 * np.clip(((au - 0.37 * lw) / 0.25) ** 2, 0, 1))
    A += 0.05 * heart + 0.04 * med + 0.04 * knob + 0.04 * body * below - 0.05 * trachea
    A += 0.05 * body * _sig((0.06 - au) / 0.012) * (0.75 + 0.25 * np.cos(2 * np.pi * v / 0.13))  # spine
    # ribs: one periodic pattern along a curved coordinate draws all of them at once; stronger over lung
    q = au - 0.05
    wobble = _lowfreq(pr, v, u, 3)
    rib_mask = body * _sig(q / 0.02) * _sig((0.84 * bw - au) / 0.03) * _sig((dome + 0.12 - v) / 0.05)
    rib_mask *= 0.35 + 0.65 * lung_e
    for f, w0, spc, thick, amp, n_ribs in (
        (-0.15 * q + 0.85 * q * q, -0.74, rib_sp, 0.36, 0.06, 10),  # posterior: rise, then droop laterally
        (0.45 * q, -0.5, rib_sp * 1.3, 0.3, 0.025, 6),  # anterior, fainter, slanting down to the midline
    ):
        ph = (v - f - w0) / spc + 0.06 * wobble  # wobble: ribs are not perfectly parallel
        dd = np.abs(ph - np.floor(ph) - 0.5)
        rib = 0.7 * _sig((thick / 2 - dd) / 0.05) + 0.5 * np.exp(-(((dd - thick / 2) / 0.04) ** 2))
        A += amp * rib * rib_mask * _sig(ph / 0.1) * _sig((n_ribs - ph) / 0.1)
    for s in (-1, 1):  # clavicles: distance to a segment from the manubrium towards the shoulder
        p0, p1 = (s * 0.07, -0.58), (s * 0.62 * bw / 0.86, -0.7)
        ex, ey = p1[0] - p0[0], p1[1] - p0[1]
        t = np.clip(((u - p0[0]) * ex + (v - p0[1]) * ey) / (ex * ex + ey * ey), 0, 1)
        dist = np.hypot(u - p0[0] - t * ex, v - p0[1] - t * ey)
        A += 0.07 * _sig((0.028 + 0.012 * (1 - t) - dist) / 0.012)
        if female:  # breast shadows over both bases: a benign basal density in normals too
            A += 0.05 * body * _sig((1 - ((u - s * 0.5) / 0.34) ** 2 - ((v - dome0 - 0.1) / 0.22) ** 2) / 0.3)

    # lung texture, vessel markings (random walks from the hila), hilar shadows; nodules in ANY class
    A += 0.012 * lung_e * _smooth_noise(ir, (h, w), 1.2)
    acc = np.zeros((h, w), np.float32)
    for s in (-1, 1):
        for _ in range(14):
            ang = ir.uniform(-1.2, 1.4) + ir.normal(0, 0.05, 30).cumsum()
            steps = np.linspace(0, ir.uniform(0.15, 0.45), 30)
            r, c = to_px(s * (0.18 + 0.9 * steps * np.cos(ang)), -0.05 + 0.8 * steps * np.sin(ang))
            ok = (r >= 0) & (r < h - 1) & (c >= 0) & (c < w - 1)
            np.add.at(acc, (np.round(r[ok]).astype(int), np.round(c[ok]).astype(int)), np.linspace(1, 0.2, 30)[ok])
    A += 0.05 * lung_e * np.clip(ndi.gaussian_filter(acc, 0.6) * 2.5, 0, 1.5)
    A += 0.05 * np.exp(-(((au - 0.19) / 0.07) ** 2 + ((v + 0.02) / 0.1) ** 2))
    for _ in range(ir.poisson(NODULE_RATE)):
        s = ir.choice([-1, 1])
        nu, nv, rr = s * ir.uniform(0.2, 0.5) * lw, ir.uniform(-0.45, 0.25), ir.uniform(0.012, 0.03)
        A += ir.uniform(0.05, 0.12) * lung_e * np.exp(-((u - nu) ** 2 + (v - nv) ** 2) / rr**2)

    if spec["label"] == "pneumonia":
        # patchy airspace opacity: smoothed noise thresholded inside soft regions, lower zones favoured
        noise = _smooth_noise(ir, (h, w), 0.04 * S)
        contrast = pr.uniform(*OPACITY_CONTRAST) * ir.uniform(0.85, 1.15)
        region = np.zeros_like(u)
        for _ in range(1 + pr.binomial(2, 0.3)):
            s = pr.choice([-1, 1])
            cu, cv = s * (0.37 * lw + pr.uniform(-0.1, 0.1)), 0.4 * lh - 0.8 * lh * pr.random() ** 1.5
            rad = pr.uniform(*OPACITY_RADIUS)
            region = np.maximum(region, np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / rad**2))
        patch = np.clip((region + 0.35 * noise * np.sqrt(region) - 0.25) / 0.4, 0, 1)
        A += contrast * 0.27 * patch * patch * (3 - 2 * patch) * lung_e

    # low-frequency non-uniformity (heel effect, scatter), exposure, quantum noise, an L/R lead marker
    A += 0.025 * _lowfreq(ir, yy / h, xx / w) + 0.03 * ir.uniform(-1, 1) * (yy / h - 0.5)
    A = ndi.zoom(A, 2, order=1, mode="nearest", grid_mode=True)
    body = ndi.zoom(body, 2, order=0, mode="nearest", grid_mode=True) > 0.5
    D = np.clip(ir.uniform(-0.03, 0.04) + A * ir.uniform(1.05, 1.35), 0, 1) ** ir.uniform(0.8, 1.2)
    D = D + ir.standard_normal((H, W), np.float32) * ir.uniform(0.008, 0.02) * (0.5 + D)
    mr, mc = int(ir.uniform(0.05, 0.12) * H), int((0.08 if ir.random() < 0.5 else 0.85) * W)
    D[mr : mr + 10, mc : mc + 7] = 0.95
    D[mr : mr + 7, mc + 2 : mc + 7] = 0.15  # an "L"-shaped lead marker
    return np.clip(D, 0, 1).astype(np.float32), body


def chest_stored(spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """The 12-bit stored values exactly as written to the file (MONOCHROME1 inverted), and the body mask."""
    D, body = render_chest(spec)
    raw = np.round(60 + D * 3950).astype(np.uint16)  # 0..4095, bright = dense, as MONOCHROME2
    if spec["photometric"] == "MONOCHROME1":
        raw = 4095 - raw  # a viewer that inverts MONOCHROME1 shows the same picture
    return raw, body


def _write_chest(spec: dict, out: Path) -> None:
    raw, body = chest_stored(spec)
    seed, pid = spec["seed"], spec["patient_id"]
    real = raw.astype(np.float64) * spec["slope"] + spec["intercept"]
    lo, hi = np.percentile(real[body], [0.5, 99.5])  # window on the patient, not the air around them
    cr = spec["modality"] == "CR"
    sop_class = ComputedRadiographyImageStorage if cr else DigitalXRayImageStorageForPresentation
    date = (BASE_DATE + datetime.timedelta(days=7 * spec["patient"] + 30 * spec["image"])).strftime("%Y%m%d")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, _uid(seed, "cxr", pid, spec["image"], "sop")
    ds.StudyInstanceUID = _uid(seed, "cxr", pid, spec["image"], "study")
    ds.SeriesInstanceUID = _uid(seed, "cxr", pid, spec["image"], "series")
    ds.Modality, ds.PatientID, ds.PatientName = spec["modality"], pid, f"DEMO^{pid}"
    ds.PatientSex, ds.PatientBirthDate = "O", ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "090000"
    ds.AccessionNumber, ds.StudyID = f"A{spec['patient'] + 1:05d}{spec['image'] + 1}", "1"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.StudyDescription, ds.Manufacturer = "CHEST (SYNTHETIC DEMO)", "graystem-demo"
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", spec["view"]
    ds.PatientOrientation = ["L", "F"]  # columns towards the patient's left (heart on the image right), rows to feet
    spacing = round(350.0 / max(spec["shape"]), 4)  # ~35 cm field of view
    ds.PixelSpacing = ds.ImagerPixelSpacing = [spacing, spacing]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if not cr:
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.set_pixel_data(raw, spec["photometric"], 12, generate_instance_uid=False)
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = spec["slope"], spec["intercept"], "US"
    ds.WindowCenter, ds.WindowWidth = round((lo + hi) / 2, 1), round(max(hi - lo, 1.0), 1)
    ds.BurnedInAnnotation = "NO"
    if spec["rle"]:
        ds.compress(RLELossless, raw, generate_instance_uid=False)
    ds.save_as(out, enforce_file_format=True)


# ============================================================ ultrasound =================================
def us_specs(seed: int = 0, n_scale: float = 1.0) -> list[dict]:
    rng = _rng(seed, _DS["ultrasound"])
    n_pat = max(6, round(N_US_PATIENTS * n_scale))
    labels = ["lesion"] * round(US_POSITIVE * n_pat) + ["normal"] * (n_pat - round(US_POSITIVE * n_pat))
    rng.shuffle(labels)
    splits = _split(labels, rng)
    repeat = _exact_flags(rng, n_pat, US_REPEAT)
    specs = [{"patient": p, "image": k, "patient_id": f"U{p + 1:04d}", "label": labels[p], "split": splits[p],
              "seed": seed} for p in range(n_pat) for k in range(2 if repeat[p] else 1)]
    n = len(specs)
    # 60% DICOM (half gray, 30% RGB, 20% YBR_FULL of those), 40% NIfTI; exact counts, shuffled
    kinds = ["nifti"] * round(0.4 * n)
    n_dcm = n - len(kinds)
    n_rgb, n_ybr = max(1, round(0.3 * n_dcm)), max(1, round(0.2 * n_dcm))
    kinds += ["RGB"] * n_rgb + ["YBR_FULL"] * n_ybr + ["MONOCHROME2"] * (n_dcm - n_rgb - n_ybr)
    rng.shuffle(kinds)
    for s, kind in zip(specs, kinds, strict=True):
        ext = ".nii.gz" if kind == "nifti" else ".dcm"
        s.update(file=f"studies/{s['patient_id']}_{s['image'] + 1}{ext}", kind=kind,
                 n_frames=int(rng.integers(4, 7)), sector=bool(rng.random() < 0.6),
                 depth_cm=round(float(rng.uniform(4, 9)), 1))
    return specs


def _glyphs(img, mask_out, rng, r0, c0, n_chars, value):
    """Burn pseudo-text (random 5x7 glyphs) at (r0, c0), only where mask_out is True."""
    for i in range(n_chars):
        if rng.random() < 0.15:
            continue  # a space
        g = rng.random((7, 5)) < 0.45
        rs, cs = slice(r0, r0 + 7), slice(c0 + 6 * i, c0 + 6 * i + 5)
        sub = img[rs, cs]
        m = g[: sub.shape[0], : sub.shape[1]] & mask_out[rs, cs]
        sub[m] = value


def _cross(img, r, c, color, size=4):
    img[r - size : r + size + 1, c] = color
    img[r, c - size : c + size + 1] = color


_US_DEPTH_PX = {True: (28, 206), False: (24, 204)}  # sector / linear: first tissue row, imaged depth in px


def _us_geometry(spec, rng):
    """Output-pixel -> tissue-grid (depth, lateral) coordinates and the imaging-region mask."""
    H, W = US_SHAPE
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    if spec["sector"]:  # curved/phased array: fan with apex above the image
        x0, y0, r0, r1 = W / 2 + rng.uniform(-4, 4), -10.0, 38.0, 244.0
        tmax = np.deg2rad(rng.uniform(27, 31))
        r, t = np.hypot(xx - x0, yy - y0), np.arctan2(xx - x0, yy - y0)
        region = (r >= r0) & (r <= r1) & (np.abs(t) <= tmax)
        z, lat = (r - r0) / (r1 - r0), (t + tmax) / (2 * tmax)
    else:  # linear array: rectangle
        top, bot, left, right = 24, 228, 48, 272
        region = (yy >= top) & (yy < bot) & (xx >= left) & (xx < right)
        z, lat = (yy - top) / (bot - top), (xx - left) / (right - left)
    return z, lat, region


def render_us(spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """Frames as uint8, (T, H, W) for gray kinds or (T, H, W, 3) RGB for RGB/YBR_FULL (converted on write),
    and the (H, W) mask of the imaging region."""
    rng = _rng(spec["seed"], _DS["ultrasound"], spec["patient"], spec["image"])
    H, W = US_SHAPE
    z, lat, region = _us_geometry(spec, rng)
    M, Dz, Lx = 8, 208, 256  # tissue grid with a margin for motion
    zz, xx = np.mgrid[0 : Dz + 2 * M, 0 : Lx + 2 * M].astype(np.float32)
    zz -= M
    xx -= M

    # echogenicity: skin line, 3-5 layers with wavy bright fascia, striated texture, depth attenuation
    bounds = np.sort(rng.uniform(12, Dz - 20, int(rng.integers(3, 6))))
    level = rng.uniform(0.35, 1.0, len(bounds) + 1)
    E = np.full_like(zz, level[0]) + 1.2 * np.exp(-((zz - 3) / 2.0) ** 2)
    for k, b in enumerate(bounds):
        bz = b + rng.uniform(2, 7) * np.sin(2 * np.pi * xx / rng.uniform(120, 400) + rng.uniform(0, 6.3))
        E += (level[k + 1] - level[k]) * _sig((zz - bz) / 1.5) + rng.uniform(0.4, 1.4) * np.exp(-((zz - bz) / 1.3) ** 2)
    stri = ndi.gaussian_filter(rng.standard_normal(zz.shape).astype(np.float32), (1.0, 10.0))
    E *= np.clip(1 + 0.2 * _lowfreq(rng, zz / Dz, xx / Lx) + 3.0 * stri * rng.uniform(0, 1), 0.2, None)

    def blob(zc, xc, a, b, ang, irregular, edge):
        dzr, dxr = zz - zc, xx - xc
        rz, rx = np.cos(ang) * dzr - np.sin(ang) * dxr, np.sin(ang) * dzr + np.cos(ang) * dxr
        rho, phi = np.hypot(rz / b, rx / a), np.arctan2(rz / b, rx / a)
        reff = 1 + sum(irregular * rng.uniform(-1, 1) / k * np.cos(k * phi + rng.uniform(0, 6.3)) for k in range(2, 7))
        return _sig((reff - rho) / edge)

    def posterior(zc, xc, a, b, amount):  # acoustic shadow (<0) or enhancement (>0) below a structure
        return 1 + amount * _sig((zz - zc - 0.7 * b) / 3) * np.exp(-(((xx - xc) / (0.8 * a)) ** 2))

    if rng.random() < US_NUISANCE_PROB:  # benign, smooth, mildly dark lobule (looks like a faint lesion)
        a = rng.uniform(10, 28)
        zc, xc = rng.uniform(50, Dz - 40), rng.uniform(0.2, 0.8) * Lx
        E *= 1 - rng.uniform(0.1, 0.3) * blob(zc, xc, a, a * rng.uniform(0.4, 0.7), rng.uniform(-0.3, 0.3), 0.03, 0.15)
    if rng.random() < US_NUISANCE_PROB * 0.6:  # vessel: anechoic tube with bright walls and enhancement below
        zc, slope, rv = rng.uniform(40, Dz - 40), rng.uniform(-0.15, 0.15), rng.uniform(3, 8)
        d = np.abs(zz - zc - slope * (xx - Lx / 2))
        E = E * (1 - 0.9 * _sig((rv - d) / 0.8)) + 0.6 * np.exp(-(((d - rv) / 1.2) ** 2))
        E *= 1 + 0.3 * _sig((zz - zc - slope * (xx - Lx / 2) - rv) / 3)
    if rng.random() < US_NUISANCE_PROB * 0.5:  # bright reflector (calcification/bone) with a shadow
        zc, xc, a = rng.uniform(40, Dz - 60), rng.uniform(0.2, 0.8) * Lx, rng.uniform(5, 15)
        E = E * posterior(zc, xc, a, 2, -0.6) + 1.5 * blob(zc, xc, a, 2.0, 0, 0.05, 0.2)
    if spec["label"] == "lesion":  # hypoechoic mass with a soft/irregular edge, maybe shadow/enhancement
        a = rng.uniform(*LESION_RADIUS)
        b, zc, xc = a * rng.uniform(0.55, 0.95), rng.uniform(45, Dz - 50), rng.uniform(0.25, 0.75) * Lx
        mask = blob(zc, xc, a, b, rng.uniform(-0.4, 0.4), rng.uniform(0.0, 0.35), rng.uniform(0.05, 0.25))
        E *= 1 - rng.uniform(*LESION_CONTRAST) * mask
        E *= posterior(zc, xc, a, b, rng.choice([-1, 0, 1]) * rng.uniform(0.15, 0.4))
    E *= np.exp(-rng.uniform(0.4, 1.2) * zz / Dz) * (1 + rng.uniform(0.1, 0.5) * zz / Dz)  # attenuation vs TGC

    # speckle: complex Gaussian fields blurred to the resolution cell (wider laterally) -> Rayleigh envelope.
    # It moves with the tissue; rotating slowly between two independent fields decorrelates it over frames.
    def cnoise():
        c = ndi.gaussian_filter(rng.standard_normal((2, *zz.shape), np.float32), (0, 1.0, 1.8))
        return (c[0] + 1j * c[1]) / np.sqrt(2 * c[0].var())

    C1, C2 = E * cnoise(), E * cnoise()
    # display compression: a power law (gamma ~0.5) shows speckle as bright grains, like a scanner's
    # compression curve does; a pure log map of Rayleigh data looks like dark worms instead
    gamma = rng.uniform(0.45, 0.6)
    gain = rng.uniform(0.85, 1.15) * 0.45 / 0.62**gamma
    zq, xq = z[region] * (Dz - 1) + M, lat[region] * (Lx - 1) + M
    off, frames = np.zeros(2), []
    for t in range(spec["n_frames"]):
        off = off + rng.normal(0, 0.6, 2) + [0.8 * np.sin(2 * np.pi * t / 6), 0]  # drift + breathing
        off = np.clip(off, -M + 1, M - 1)
        a = 0.25 * t  # radians of decorrelation per frame
        env = np.abs(ndi.map_coordinates(np.cos(a) * C1 + np.sin(a) * C2, [zq + off[0], xq + off[1]], order=1))
        img = np.zeros((H, W), np.float32)
        img[region] = np.clip(gain * env**gamma, 0, 1) * 255
        frames.append(img)
    gray = np.round(np.stack(frames)).astype(np.uint8)

    # burned-in annotations: gray pseudo-text and a depth scale outside the region (same on every frame)
    ann, outside = np.zeros((H, W), np.uint8), ~region
    # (text rows 3-19 and the columns used below lie outside the region's bounding box, so a reader that
    # crops to SequenceOfUltrasoundRegions drops all of it; only the colour calipers are inside)
    _glyphs(ann, outside, rng, 3, 4, int(rng.integers(6, 11)), 200)
    _glyphs(ann, outside, rng, 12, 4, int(rng.integers(4, 9)), 170)
    _glyphs(ann, outside, rng, 3, W - 60, int(rng.integers(5, 9)), 185)
    top, depth_px = _US_DEPTH_PX[spec["sector"]]
    px_per_cm = depth_px / spec["depth_cm"]
    for k in range(int(spec["depth_cm"]) + 1):
        r = int(top + k * px_per_cm)
        if r < H:
            ann[r, W - 14 : W - (6 if k % 5 == 0 else 10)] = 220
    gray = np.where(ann > 0, ann, gray)
    if spec["kind"] in ("MONOCHROME2", "nifti"):
        if rng.random() < 0.3:  # a gray caliper inside the image, unrelated to the label
            ys, xs = np.nonzero(region[20:-20, 20:-20])
            i = int(rng.integers(len(ys)))
            for f in gray:
                _cross(f, ys[i] + 20, xs[i] + 20, 230)
        return gray, region

    # colour kinds: yellow caliper crosses joined by a green dotted line, amber scale bar, green text
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    ys, xs = np.nonzero(region[20:-20, 20:-20])
    for _ in range(int(rng.integers(1, 3))):
        (r1_, c1_), (r2_, c2_) = [(ys[i] + 20, xs[i] + 20) for i in rng.integers(len(ys), size=2)]
        n = int(max(abs(r2_ - r1_), abs(c2_ - c1_)) // 4)
        for f in rgb:
            for j in range(1, n):
                f[round(r1_ + (r2_ - r1_) * j / n), round(c1_ + (c2_ - c1_) * j / n)] = (0, 220, 0)
            _cross(f, r1_, c1_, (255, 255, 0))
            _cross(f, r2_, c2_, (255, 255, 0))
    bar = np.linspace(255, 0, 120)[:, None] * np.array([1.0, 0.75, 0.3])
    rgb[:, 60:180, 4:10] = np.round(bar[:, None, :]).astype(np.uint8)
    green = np.zeros((H, W), np.uint8)
    _glyphs(green, outside, rng, 12, W - 60, int(rng.integers(5, 9)), 1)
    rgb[:, green > 0] = (60, 230, 60)
    return rgb, region


def _write_us(spec: dict, out: Path) -> None:
    frames, region = render_us(spec)
    sp_cm = spec["depth_cm"] / _US_DEPTH_PX[spec["sector"]][1]
    if spec["kind"] == "nifti":
        # (X, Y, T): vol[x, y, t] = frame_t[H-1-y, x], so +y (anterior in RAS) is the image's top
        vol = np.ascontiguousarray(frames[:, ::-1, :].transpose(2, 1, 0))
        img = nib.Nifti1Image(vol, np.diag([sp_cm * 10, sp_cm * 10, 1.0, 1.0]))
        img.header.set_xyzt_units("mm")
        img.set_qform(img.affine, code=1)
        img.set_sform(img.affine, code=1)
        nib.save(img, out)
        return

    seed, pid = spec["seed"], spec["patient_id"]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage
    ds.SOPInstanceUID = _uid(seed, "us", pid, spec["image"], "sop")
    ds.StudyInstanceUID = _uid(seed, "us", pid, spec["image"], "study")
    ds.SeriesInstanceUID = _uid(seed, "us", pid, spec["image"], "series")
    ds.Modality, ds.PatientID, ds.PatientName = "US", pid, f"DEMO^{pid}"
    ds.PatientSex, ds.PatientBirthDate = "O", ""
    date = (BASE_DATE + datetime.timedelta(days=5 * spec["patient"] + 60 * spec["image"])).strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "100000"
    ds.AccessionNumber, ds.StudyID = f"B{spec['patient'] + 1:05d}{spec['image'] + 1}", "1"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.StudyDescription, ds.Manufacturer = "US SOFT TISSUE (SYNTHETIC DEMO)", "graystem-demo"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BurnedInAnnotation = "YES"
    ds.FrameTime, ds.CineRate = 33.3, 30
    ds.FrameIncrementPointer = 0x00181063  # (0018,1063) Frame Time
    if spec["kind"] == "YBR_FULL":
        frames = convert_color_space(frames, "RGB", "YBR_FULL")
    photometric = "MONOCHROME2" if spec["kind"] == "MONOCHROME2" else spec["kind"]
    ds.set_pixel_data(frames, photometric, 8, generate_instance_uid=False)
    if frames.shape[0] == 1:
        ds.NumberOfFrames = 1
    # where the tissue image is, in pixels, and its physical size (cm/pixel)
    rows, cols = np.nonzero(region.any(axis=1))[0], np.nonzero(region.any(axis=0))[0]
    reg = Dataset()
    reg.RegionSpatialFormat, reg.RegionDataType, reg.RegionFlags = 1, 1, 0
    reg.RegionLocationMinX0, reg.RegionLocationMinY0 = int(cols[0]), int(rows[0])
    reg.RegionLocationMaxX1, reg.RegionLocationMaxY1 = int(cols[-1]), int(rows[-1])
    reg.PhysicalUnitsXDirection = reg.PhysicalUnitsYDirection = 3  # cm
    reg.PhysicalDeltaX = reg.PhysicalDeltaY = round(sp_cm, 6)
    reg.ReferencePixelX0, reg.ReferencePixelY0 = int((cols[0] + cols[-1]) // 2), int(rows[0])
    ds.SequenceOfUltrasoundRegions = [reg]
    ds.save_as(out, enforce_file_format=True)


# ============================================================ driver =====================================
_MAKERS = {"chest_xray": (chest_specs, _write_chest), "ultrasound": (us_specs, _write_us)}


def _marker(seed: int, n_scale: float) -> str:
    return f"graystem demo data version={VERSION} seed={seed} n_scale={n_scale}\n"


def make_demo(root: Path = Path("data/demo"), which=DATASETS, seed: int = 0, *, n_scale: float = 1.0,
              force: bool = False, verbose: bool = False) -> dict:
    """Write the demo data sets under root and return {name: path of its labels.csv}.

    A data set whose `.complete` marker matches (version, seed, n_scale) is left alone unless force; otherwise
    its folder is removed and rewritten, so an interrupted run is repaired. n_scale < 1 makes a smaller set
    (same formats, fewer patients) for tests."""
    root = Path(root)
    which = (which,) if isinstance(which, str) else tuple(which)
    out = {}
    for name in which:
        if name not in _MAKERS:
            raise ValueError(f"unknown demo data set {name!r}; choose from {', '.join(DATASETS)}")
        folder, manifest = root / name, root / name / "labels.csv"
        marker = folder / ".complete"
        out[name] = manifest
        if not force and marker.is_file() and marker.read_text() == _marker(seed, n_scale):
            if verbose:
                print(f"{name}: already complete in {folder}")
            continue
        t0 = time.perf_counter()
        if folder.exists():
            shutil.rmtree(folder)
        make_specs, write = _MAKERS[name]
        specs = make_specs(seed, n_scale)
        for s in specs:
            path = folder / s["file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            write(s, path)
        with open(manifest, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["image", "label", "patient_id", "split"])
            for s in specs:
                w.writerow([s["file"], s["label"], s["patient_id"], s["split"]])
        marker.write_text(_marker(seed, n_scale))  # last: its presence means the folder is whole
        if verbose:
            print(f"{name}: {len(specs)} files, {len({s['patient_id'] for s in specs})} patients "
                  f"-> {manifest} ({time.perf_counter() - t0:.1f} s)")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write the synthetic demo data sets (deterministic).")
    ap.add_argument("--root", type=Path, default=Path("data/demo"))
    ap.add_argument("--only", choices=DATASETS, help="write only this data set")
    ap.add_argument("--force", action="store_true", help="rewrite even if already complete")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the patients to make (tests: 0.1)")
    args = ap.parse_args(argv)
    make_demo(args.root, (args.only,) if args.only else DATASETS, args.seed, n_scale=args.scale, force=args.force,
              verbose=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
