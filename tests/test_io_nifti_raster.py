"""NIfTI and raster reader tests on files written here with known values."""

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ImageReadError
from pipeline.io import ReaderOptions, count_frames, nonzero_slices, read_gray


def save_nifti(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


def display(plane):
    """The documented convention: canonical (i, j) plane -> rows = j reversed, columns = i."""
    return np.flipud(np.asarray(plane).T)


# ---------------------------------------------------------------- NIfTI


def test_nifti_2d(tmp_path):
    data = np.arange(12, dtype=np.float32).reshape(4, 3)
    path = save_nifti(tmp_path / "a.nii", data)
    image, info = read_gray(path)
    np.testing.assert_array_equal(image, display(data))
    assert image.shape == (3, 4) and info.format == "nifti" and info.frames == 1
    assert count_frames(path) == 1 and nonzero_slices(path) == [0]
    json.dumps(info.as_dict())


def test_nifti_3d_slices_and_nonzero(tmp_path):
    data = np.zeros((4, 3, 5), np.int16)
    for k in (1, 2, 3):
        data[..., k] = np.arange(12).reshape(4, 3) + 100 * k
    path = save_nifti(tmp_path / "v.nii.gz", data)
    assert count_frames(path) == 5 and nonzero_slices(path) == [1, 2, 3]
    image, info = read_gray(path)
    assert info.frame == 2 and info.frames == 5
    np.testing.assert_array_equal(image, display(data[..., 2]))
    np.testing.assert_array_equal(read_gray(path, slice_index=3)[0], display(data[..., 3]))
    assert not read_gray(path, options=ReaderOptions(frame="first"))[0].any()
    with pytest.raises(ImageReadError, match="frame 5 out of range"):
        read_gray(path, slice_index=5)


def test_nifti_slice_axis(tmp_path):
    data = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    path = save_nifti(tmp_path / "v.nii", data)
    options = ReaderOptions(slice_axis=0)  # sagittal: plane (A, S)
    assert count_frames(path, options) == 4
    np.testing.assert_array_equal(read_gray(path, frame=1, options=options)[0], display(data[1]))


@pytest.mark.parametrize("shape", [(4, 3, 1, 6), (4, 3, 6)])
def test_nifti_2d_plus_time(tmp_path, shape):
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    path = save_nifti(tmp_path / "t.nii", data)
    assert count_frames(path) == 6
    image, info = read_gray(path, frame=4)
    np.testing.assert_array_equal(image, display(data.reshape(4, 3, 6)[..., 4]))
    assert info.frame == 4 and image.shape == (3, 4)


def test_nifti_orientation_anterior_top(tmp_path):
    # One bright voxel at the patient's left (i = 0 in RAS+) and most anterior (j = 2) position.
    ras = np.zeros((4, 3, 1), np.float32)
    ras[0, 2, 0] = 1
    image = read_gray(save_nifti(tmp_path / "ras.nii", ras))[0]
    assert image[0, 0] == 1 and image.sum() == 1  # anterior at the top, patient's left on image left
    # The same physical image stored LPS (i and j flipped) and with i/j swapped must display identically.
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps[:2, 3] = [3, 2]  # keep voxel centres on the same physical grid
    np.testing.assert_array_equal(read_gray(save_nifti(tmp_path / "lps.nii", ras[::-1, ::-1], lps))[0], image)
    swap = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    swapped = save_nifti(tmp_path / "swap.nii", ras.transpose(1, 0, 2), swap)
    np.testing.assert_array_equal(read_gray(swapped)[0], image)


def test_nifti_single_slice_read_equals_canonical(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.random((5, 6, 7)).astype(np.float32)
    affine = np.array([[0, 0, -2.0, 10], [-1.5, 0, 0, 5], [0, 1.2, 0, -3], [0, 0, 0, 1]])
    path = save_nifti(tmp_path / "oblique.nii", data, affine)
    canonical = nib.as_closest_canonical(nib.load(str(path))).get_fdata()
    assert count_frames(path) == canonical.shape[2]
    for k in range(canonical.shape[2]):
        expected = display(canonical[..., k]).astype(np.float32)
        np.testing.assert_array_equal(read_gray(path, frame=k)[0], expected)
    assert nonzero_slices(path) == [k for k in range(canonical.shape[2]) if canonical[..., k].any()]


def test_nifti_scaling(tmp_path):
    img = nib.Nifti1Image(np.array([[0, 1], [2, 300]], np.int16), np.eye(4))
    img.header.set_slope_inter(0.5, 10)
    nib.save(img, str(tmp_path / "s.nii"))
    image = read_gray(tmp_path / "s.nii")[0]
    np.testing.assert_array_equal(image, display(np.array([[10, 10.5], [11, 160]])))


def test_nifti_4d_volume_rejected(tmp_path):
    path = save_nifti(tmp_path / "4d.nii", np.zeros((3, 3, 3, 2), np.float32))
    with pytest.raises(ImageReadError, match="non-singleton"):
        read_gray(path)


# ---------------------------------------------------------------- raster


def test_png_8_bit_gray(tmp_path):
    data = np.array([[0, 1, 128], [200, 254, 255]], np.uint8)
    Image.fromarray(data).save(tmp_path / "g.png")
    image, info = read_gray(tmp_path / "g.png")
    np.testing.assert_array_equal(image, data)
    assert image.dtype == np.float32 and info.format == "raster" and info.bits_stored == 8
    assert count_frames(tmp_path / "g.png") == 1 and nonzero_slices(tmp_path / "g.png") == [0]
    json.dumps(info.as_dict())


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_gray_exact(tmp_path, suffix):
    data = np.array([[0, 1, 255, 256], [4095, 30000, 65534, 65535]], np.uint16)
    Image.fromarray(data).save(tmp_path / f"g{suffix}")
    image, info = read_gray(tmp_path / f"g{suffix}")
    np.testing.assert_array_equal(image, data)  # 16-bit precision kept
    assert info.bits_stored == 16


def test_rgb_and_rgba_luminance(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    Image.fromarray(rgb).save(tmp_path / "c.png")
    np.testing.assert_allclose(read_gray(tmp_path / "c.png")[0], expected, atol=1e-4)
    rgba = np.dstack([rgb, np.full((5, 7), 7, np.uint8)])  # alpha is dropped, not blended
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c4.png")
    np.testing.assert_allclose(read_gray(tmp_path / "c4.png")[0], expected, atol=1e-4)
    Image.fromarray(rgb).save(tmp_path / "c.bmp")
    np.testing.assert_allclose(read_gray(tmp_path / "c.bmp")[0], expected, atol=1e-4)


def test_palette_png_uses_colours_not_indices(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putdata([0, 1])
    img.save(tmp_path / "p.png")
    np.testing.assert_allclose(read_gray(tmp_path / "p.png")[0], [[0.299 * 255, 0.114 * 255]], atol=1e-4)


def test_jpeg_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.new("L", (40, 20), 128).save(tmp_path / "r.jpg", exif=exif)
    image, _ = read_gray(tmp_path / "r.jpg")
    assert image.shape == (40, 20)  # displayed upright: width and height swap


def test_content_beats_extension(tmp_path):
    data = np.array([[1, 2], [3, 4]], np.uint8)
    Image.fromarray(data).save(tmp_path / "x.png")
    (tmp_path / "really_png.dcm").write_bytes((tmp_path / "x.png").read_bytes())
    np.testing.assert_array_equal(read_gray(tmp_path / "really_png.dcm")[0], data)


@pytest.mark.parametrize("name", ["bad.png", "bad.jpg", "bad.nii", "bad.nii.gz", "bad.tiff"])
def test_garbage_raster_and_nifti(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"not an image at all " * 30)
    with pytest.raises(ImageReadError) as err:
        read_gray(path)
    assert str(path) in str(err.value)


def test_truncated_png(tmp_path):
    noise = np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "t.png")
    (tmp_path / "t.png").write_bytes((tmp_path / "t.png").read_bytes()[:500])
    with pytest.raises(ImageReadError, match="cannot decode"):
        read_gray(tmp_path / "t.png")


def test_reader_options_validated():
    from pipeline.errors import ConfigError

    for bad in ({"voi": "lut"}, {"frame": "last"}, {"frame": -1}, {"voi_index": -1}):
        with pytest.raises(ConfigError):
            ReaderOptions(**bad)
