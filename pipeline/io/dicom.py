"""DICOM -> 2-D float32 image as a radiology viewer displays it, built on pydicom >= 3's own pixel functions.

Order (PS3.4 grayscale pipeline): decode one frame -> [US region crop] -> modality LUT -> VOI LUT/window ->
MONOCHROME1 inversion. Colour (RGB, YBR_*, PALETTE COLOR) becomes Rec.601 luminance and gets no LUTs.
Unlike MONAI's PydicomReader, nothing is transposed: rows stay rows.
"""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, apply_windowing, pixel_array
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pipeline.errors import ImageReadError
from pipeline.io.info import REC601, ReadInfo

TISSUE = 1  # RegionDataType of a 2-D tissue image (PS3.3 C.8.5.5.1.2)


def _reason(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"


def read_dicom_header(path) -> Dataset:
    """Everything before the pixel data; force=True also accepts files without preamble/meta header."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as e:  # pydicom raises many types for a damaged file; report one line
        raise ImageReadError(path, f"not readable as DICOM ({_reason(e)})") from e
    if not ds.file_meta.get("TransferSyntaxUID"):
        # No meta header: decoders and OW LUT data need a syntax; take the encoding the parser detected.
        implicit, little = ds.original_encoding
        if little is not None:
            ds.file_meta.TransferSyntaxUID = (
                ImplicitVRLittleEndian
                if implicit
                else ExplicitVRLittleEndian
                if little
                else ExplicitVRBigEndian
            )
    return ds


def _n_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return 1


def count_frames(path) -> int:
    return _n_frames(read_dicom_header(path))


def _decode_frame(path, ds: Dataset, index: int) -> np.ndarray:
    """Decode only frame ``index`` straight from the file, so a long cine is not decoded in full.

    raw=False lets pydicom convert YBR_FULL/YBR_FULL_422 to RGB (it also does so for uncompressed data, and
    the JPEG 2000 codec already returns RGB for YBR_RCT/YBR_ICT), so any 3-sample result is RGB.
    """
    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    kwargs = {} if tsyntax is None else {"transfer_syntax_uid": tsyntax}
    try:
        arr = pixel_array(str(path), index=index, raw=False, **kwargs)
    except Exception:
        # pydicom's path reader skips what dcmread handles (deflated syntax, odd structures): load it all.
        try:
            full = pydicom.dcmread(path, force=True)
            full.file_meta = ds.file_meta
            arr = pixel_array(full, index=index, raw=False)
        except Exception as e:  # missing codec, truncated or corrupt pixel data
            name = getattr(tsyntax, "name", tsyntax)
            raise ImageReadError(path, f"cannot decode pixel data ({name}): {_reason(e)}") from e
    if arr.ndim not in (2, 3):
        raise ImageReadError(path, f"unexpected decoded frame shape {arr.shape}")
    return arr


def _us_region(ds: Dataset, rows: int, cols: int) -> list[int] | None:
    """[r0, r1, c0, c1) of the largest tissue region (else the largest region); None without regions.

    RegionLocationMax* are inclusive and some scanners write one past the edge, hence the clipping.
    """
    boxes = []
    for reg in ds.get("SequenceOfUltrasoundRegions") or []:
        try:
            c0, r0 = max(int(reg.RegionLocationMinX0), 0), max(int(reg.RegionLocationMinY0), 0)
            c1, r1 = min(int(reg.RegionLocationMaxX1) + 1, cols), min(int(reg.RegionLocationMaxY1) + 1, rows)
        except (AttributeError, TypeError, ValueError):
            continue
        if r1 > r0 and c1 > c0:
            boxes.append((reg.get("RegionDataType") == TISSUE, (r1 - r0) * (c1 - c0), [r0, r1, c0, c1]))
    if not boxes:
        return None
    tissue = [b for b in boxes if b[0]] or boxes
    return max(tissue, key=lambda b: b[1])[2]


def _shallow_copy(ds: Dataset) -> Dataset:
    """A copy whose top-level elements can be replaced without touching ``ds``."""
    out = Dataset()
    out.update(ds)
    out.file_meta = ds.file_meta
    out.set_original_encoding(*ds.original_encoding)
    return out


def _palette_dataset(ds: Dataset) -> Dataset:
    """pydicom 3.0.2's apply_color_lut reads non-segmented OW palette data as little-endian even in a
    big-endian file (OBXXXX1A_expb.dcm comes out 256x too dark): hand it byte-swapped copies."""
    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    if tsyntax is None or tsyntax.is_little_endian:
        return ds
    out = _shallow_copy(ds)
    for colour in ("Red", "Green", "Blue", "Alpha"):
        key = f"{colour}PaletteColorLookupTableData"
        bits = ds.get(f"{colour}PaletteColorLookupTableDescriptor", [0, 0, 8])[2]
        if key in ds and ds[key].VR == "OW" and bits > 8:
            swapped = np.frombuffer(ds[key].value, ">u2").astype("<u2").tobytes()
            out[key] = DataElement(ds[key].tag, "OW", swapped)
    return out


def _frame_dataset(ds: Dataset, index: int) -> Dataset:
    """Enhanced multi-frame objects keep rescale and window in functional groups, which pydicom's LUT
    functions don't look at: copy them (shared, then this frame's) to the top level of a shallow copy."""
    groups = []
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and index < len(per_frame):
        groups.append(per_frame[index])
    if not groups:
        return ds
    out = _shallow_copy(ds)
    for group in groups:
        for seq, keys in (
            ("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept", "RescaleType")),
            ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth", "VOILUTFunction")),
        ):
            if group.get(seq):
                for key in keys:
                    if key in group[seq][0]:
                        out[key] = group[seq][0][key]
    return out


def _n_windows(ds: Dataset) -> int:
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return 0
    return min(ds["WindowCenter"].VM, ds["WindowWidth"].VM)


def _apply_voi(x: np.ndarray, ds: Dataset, options, path):
    """Return (array, applied, (lo, hi) output range or None). 'window' forces WindowCenter/Width even
    where a VOI LUT Sequence exists, and is an error without one."""
    if options.voi == "none":
        return x, False, None
    has_lut = bool(ds.get("VOILUTSequence"))
    n_windows = _n_windows(ds)
    if options.voi == "window" and not n_windows:
        raise ImageReadError(path, "voi=window but the file has no WindowCenter/WindowWidth")
    use_lut = has_lut and options.voi == "auto"
    available = len(ds.VOILUTSequence) if use_lut else n_windows
    if not available:
        return x, False, None
    i = options.voi_index
    if i >= available:
        kind = "VOI LUT Sequence items" if use_lut else "window(s)"
        raise ImageReadError(path, f"voi_index={i} but the file has {available} {kind}")
    try:
        if use_lut:
            if x.dtype.kind == "f" and np.array_equal(x, np.round(x)):
                x = x.astype(np.int64)  # a LUT indexes integers; slope 1 / intercept 0 still gives floats
            depth = int(ds.VOILUTSequence[i].LUTDescriptor[2])
            return apply_voi_lut(x, ds, index=i, prefer_lut=True), True, (0.0, 2.0**depth - 1)
        y = apply_windowing(x, ds, index=i)
        # The window's output range as pydicom defines it (depends on bits and rescale): probe with extremes.
        with np.errstate(over="ignore"):
            lo, hi = apply_windowing(np.array([-1e300, 1e300]), ds, index=i)
        return y, True, (float(lo), float(hi))
    except ImageReadError:
        raise
    except Exception as e:
        raise ImageReadError(path, f"cannot apply VOI ({_reason(e)})") from e


def read(path, pick, options):
    ds = read_dicom_header(path)
    if "Rows" not in ds or "Columns" not in ds:
        # force=True "reads" any bytes, so for a file without the DICM prefix this usually means not DICOM
        what = "DICOM without an image" if ds.preamble is not None else "not a DICOM image (no DICM prefix)"
        raise ImageReadError(path, f"{what}: no Rows/Columns")
    n = _n_frames(ds)
    index = pick(n)
    arr = _decode_frame(path, ds, index)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper() or None

    crop = _us_region(ds, *arr.shape[:2]) if options.crop_us_region else None
    if crop is not None:
        arr = arr[crop[0] : crop[1], crop[2] : crop[3]]

    voi_applied = inverted = False
    if photometric == "PALETTE COLOR" and arr.ndim == 2:
        try:
            arr = apply_color_lut(arr, _palette_dataset(ds))
        except Exception as e:
            raise ImageReadError(path, f"cannot apply the palette ({_reason(e)})") from e
    if arr.ndim == 3:
        if arr.shape[2] != 3:
            raise ImageReadError(path, f"{arr.shape[2]} samples per pixel not supported")
        image = arr.astype(np.float64) @ REC601
    else:
        fds = _frame_dataset(ds, index)
        try:
            x = apply_modality_lut(arr, fds)
        except Exception as e:
            raise ImageReadError(path, f"cannot apply the modality LUT ({_reason(e)})") from e
        x, voi_applied, out_range = _apply_voi(x, fds, options, path)
        image = np.asarray(x, dtype=np.float64)
        # Low values are bright in MONOCHROME1, and in MONOCHROME2 shown through an INVERSE Presentation LUT
        # Shape (DX requires INVERSE with MONOCHROME1 as a restatement, not a second inversion)
        shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
        if photometric == "MONOCHROME1" or (photometric == "MONOCHROME2" and shape == "INVERSE"):
            # mirror within the VOI output range when one defines it, else within this frame's data range
            lo, hi = out_range if out_range else (float(image.min()), float(image.max()))
            image = (hi + lo) - image
            inverted = True

    bits = ds.get("BitsStored")
    info = ReadInfo(format="dicom", frames=n, frame=index, shape=image.shape, photometric=photometric,
                    modality=str(ds.get("Modality") or "").strip() or None, voi_applied=bool(voi_applied),
                    inverted=inverted, bits_stored=int(bits) if bits is not None else None,
                    crop=None if crop is None else tuple(crop))
    return image.astype(np.float32), info
