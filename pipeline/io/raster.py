"""PNG / JPEG / TIFF / BMP -> 2-D float32 via Pillow, keeping 16-bit precision (values 0..65535).

Colour and palette images become Rec.601 luminance (alpha dropped). EXIF orientation is applied, because
that is how a viewer shows a phone or camera JPEG. Multi-page TIFFs expose their pages as frames.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import ImageReadError
from pipeline.io.info import REC601, ReadInfo

_BITS = {"1": 1, "L": 8, "LA": 8, "P": 8, "PA": 8, "RGB": 8, "RGBA": 8}  # 'I' / 'F' give no bit depth


def _open(path):
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageReadError(path, f"not readable as an image ({type(e).__name__}: {e})") from e


def count_frames(path) -> int:
    with _open(path) as img:
        return int(getattr(img, "n_frames", 1))


def _to_gray(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("P", "PA"):  # palette: expand to colour first, the indices themselves mean nothing
        img = img.convert("RGBA" if "transparency" in img.info or mode == "PA" else "RGB")
        mode = img.mode
    if mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        rgb = np.asarray(img.convert("RGB") if mode not in ("RGB", "RGBA", "RGBX") else img)[..., :3]
        return rgb.astype(np.float64) @ REC601
    if mode in ("LA", "La"):
        return np.asarray(img)[..., 0].astype(np.float64)
    if mode == "1":
        img = img.convert("L")
    # L, I;16*, I, F: numpy gets the native integer/float values, so 16-bit stays 16-bit
    return np.asarray(img).astype(np.float64)


def read(path, pick, options):
    with _open(path) as img:
        n = int(getattr(img, "n_frames", 1))
        index = pick(n)
        try:
            if index:
                img.seek(index)
            fmt_mode = img.mode
            image = _to_gray(ImageOps.exif_transpose(img))
        except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated / corrupt data surfaces here
            raise ImageReadError(path, f"cannot decode image ({type(e).__name__}: {e})") from e
    if image.ndim != 2:
        raise ImageReadError(path, f"unexpected image shape {image.shape} (mode {fmt_mode})")
    info = ReadInfo(format="raster", frames=n, frame=index, shape=image.shape, photometric=fmt_mode,
                    bits_stored=16 if fmt_mode.startswith("I;16") else _BITS.get(fmt_mode))
    return image.astype(np.float32), info
