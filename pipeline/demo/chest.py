"""Synthetic chest radiographs (CR/DX DICOMs, MONOCHROME1/2, RLE, rescale slope) for the chest_xray demo."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation, RLELossless
from scipy import ndimage as ndi

from pipeline.demo.common import (
    _DS,
    BASE_DATE,
    _exact_flags,
    _lowfreq,
    _patients,
    _rng,
    _sig,
    _smooth_noise,
    _uid,
)

# difficulty knobs. Measured: ImageNet EfficientNet-Lite0 fine-tuned at 128 px on the train split reaches
# AUROC ~0.86 on held-out data; see data/README.md
OPACITY_CONTRAST = (0.45, 0.95)  # pneumonia patch brightness, as a fraction of the lung/soft-tissue gap
OPACITY_RADIUS = (0.08, 0.22)  # patch size, in half-widths of the image's short side
NODULE_RATE = 0.5  # Poisson mean of small bright nodules per chest image, BOTH classes (nuisance)

N_CHEST_PATIENTS, CHEST_POSITIVE = 150, 0.45  # 1-3 images each, ~300 images
CHEST_SIZES = ((256, 256), (320, 256), (288, 320))  # (rows, cols)


def chest_specs(seed: int = 0, n_scale: float = 1.0) -> list[dict]:
    """One dict per image: everything needed to render and store it (deterministic)."""
    rng, n_pat, labels, splits = _patients("chest_xray", seed, N_CHEST_PATIENTS, CHEST_POSITIVE, n_scale,
                                           "pneumonia", "normal")
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


def write_chest(spec: dict, out: Path) -> None:
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

