"""Synthetic ultrasound cines (gray/RGB/YBR_FULL DICOMs with burned-in annotations, NIfTI stacks)."""

from __future__ import annotations

import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import convert_color_space
from pydicom.uid import UltrasoundMultiFrameImageStorage
from scipy import ndimage as ndi

from pipeline.demo.common import _DS, BASE_DATE, _exact_flags, _lowfreq, _patients, _rng, _sig, _uid

# difficulty knobs. Measured: ImageNet EfficientNet-Lite0 fine-tuned at 128 px on the train split reaches
# AUROC ~0.92 per study on held-out data; see data/README.md
LESION_CONTRAST = (0.45, 0.85)  # ultrasound lesion darkening, fraction of the surrounding echogenicity
LESION_RADIUS = (12, 30)  # lesion semi-axis in tissue-grid pixels (the grid is ~ the image size)
US_NUISANCE_PROB = 0.45  # chance of a benign dark lobule / vessel / shadow in ANY study (nuisance)

N_US_PATIENTS, US_POSITIVE, US_REPEAT = 100, 0.5, 0.2  # 20% of patients have a 2nd study, ~120 studies
US_SHAPE = (240, 320)


def us_specs(seed: int = 0, n_scale: float = 1.0) -> list[dict]:
    rng, n_pat, labels, splits = _patients("ultrasound", seed, N_US_PATIENTS, US_POSITIVE, n_scale,
                                           "lesion", "normal")
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


def write_us(spec: dict, out: Path) -> None:
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

