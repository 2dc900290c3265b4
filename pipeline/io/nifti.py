"""NIfTI -> 2-D float32 slice in RAS+ orientation, reading one slice through nibabel's array proxy.

``nib.as_closest_canonical`` would load the whole volume to reorder it, so the reorientation is done by
hand: the canonical slice index is mapped back to the stored axis, only that slice is read from
``img.dataobj`` (which applies scl_slope/scl_inter), and the small block is then reoriented with
``apply_orientation``. The result equals slicing ``as_closest_canonical(img)`` (a test checks this).

Display convention: the 2-D plane keeps its two canonical axes (a, b), a < b; columns follow a, rows follow
b reversed, i.e. ``np.flipud(plane.T)``. An axial RAS+ slice thus shows anterior at the top and the
patient's left on the image left (neurological convention); coronal/sagittal show superior at the top.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, io_orientation

from pipeline.errors import ImageReadError
from pipeline.io.info import REC601, ReadInfo


def _load(path):
    try:
        return nib.load(str(path))
    except Exception as e:  # nibabel raises ImageFileError, ValueError, EOFError, zlib errors...
        raise ImageReadError(path, f"not readable as NIfTI ({type(e).__name__}: {e})") from e


def _geometry(img, path, slice_axis: int):
    """Return (orientation, stored shape padded to 3-D, canonical shape, canonical slice axis or None)."""
    shape = tuple(img.shape) + (1,) * max(0, 3 - len(img.shape))
    ornt = io_orientation(img.affine)
    if np.isnan(ornt).any():  # degenerate affine (e.g. zero pixdim): keep the stored order
        ornt = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    canon = [0, 0, 0]
    for axis in range(3):
        canon[int(ornt[axis, 0])] = shape[axis]
    canon_shape = tuple(canon) + shape[3:]
    # Singleton axes are dropped: X,Y,1,T (2-D + time) becomes a 3-D stack of 2-D frames.
    kept = [a for a, n in enumerate(canon_shape) if n > 1]
    if len(kept) < 2 or len(kept) > 3:
        raise ImageReadError(path, f"{len(kept)} non-singleton dimensions {img.shape}; need 2 or 3")
    if len(kept) == 2:
        return ornt, shape, canon_shape, None
    try:
        axis = kept[slice_axis]
    except IndexError:
        raise ImageReadError(path, f"slice_axis {slice_axis} invalid for a 3-D image {img.shape}") from None
    return ornt, shape, canon_shape, axis


def count_frames(path, options) -> int:
    img = _load(path)
    _, _, canon_shape, axis = _geometry(img, path, options.slice_axis)
    return 1 if axis is None else canon_shape[axis]


def _to_canonical(block: np.ndarray, ornt) -> np.ndarray:
    if block.dtype.names and {"R", "G", "B"} <= set(block.dtype.names):  # RGB24 NIfTI
        block = np.stack([block[c] for c in "RGB"], axis=-1).astype(np.float64) @ REC601
    return apply_orientation(np.asarray(block), ornt)


def _display(plane: np.ndarray) -> np.ndarray:
    return np.flipud(plane.T)


def read(path, pick, options):
    img = _load(path)
    ornt, shape, canon_shape, axis = _geometry(img, path, options.slice_axis)
    n = 1 if axis is None else canon_shape[axis]
    index = pick(n)
    slicer = [slice(None)] * len(img.shape)
    if axis is not None:
        stored_axis, k = axis, index
        if axis < 3:  # spatial: find the stored axis and undo a flip
            stored_axis = int(np.flatnonzero(ornt[:, 0] == axis)[0])
            k = index if ornt[stored_axis, 1] > 0 else canon_shape[axis] - 1 - index
        if stored_axis < len(slicer):
            slicer[stored_axis] = slice(k, k + 1)
    try:
        block = np.asanyarray(img.dataobj[tuple(slicer)])
    except Exception as e:  # truncated or corrupt data
        raise ImageReadError(path, f"cannot read NIfTI data ({type(e).__name__}: {e})") from e
    block = block.reshape(block.shape + (1,) * (len(shape) - block.ndim))
    plane = _to_canonical(block, ornt).squeeze()
    image = _display(plane).astype(np.float32)
    info = ReadInfo(format="nifti", frames=n, frame=index, shape=image.shape)
    return image, info


def nonzero_slices(path, options) -> list[int]:
    """Indices (canonical, along the slice axis) of slices with any nonzero voxel; reads the whole volume."""
    img = _load(path)
    ornt, shape, canon_shape, axis = _geometry(img, path, options.slice_axis)
    try:
        data = np.asanyarray(img.dataobj).reshape(shape)
    except Exception as e:
        raise ImageReadError(path, f"cannot read NIfTI data ({type(e).__name__}: {e})") from e
    canon = _to_canonical(data, ornt).reshape(canon_shape)
    if axis is None:
        return [0] if np.any(canon) else []
    others = tuple(a for a in range(canon.ndim) if a != axis)
    return [int(k) for k in np.flatnonzero(np.any(canon != 0, axis=others))]
