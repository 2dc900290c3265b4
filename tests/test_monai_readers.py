"""The project's readers as MONAI ImageReaders: LoadImage(reader=...) returns exactly read_gray's pixels."""

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImage
from PIL import Image
from pydicom.data import get_testdata_file

from pipeline.errors import ImageReadError
from pipeline.io import ReaderOptions, read_gray
from pipeline.io.monai_readers import DicomGrayReader, GrayReader, RasterGrayReader


@pytest.fixture(autouse=True)
def _meta_tensors():
    """A training run in the same process turns MONAI's meta tracking off (run.run); these tests read .meta."""
    from monai.data import get_track_meta, set_track_meta

    before = get_track_meta()
    set_track_meta(True)
    yield
    set_track_meta(before)


def data(name):
    path = get_testdata_file(name)
    assert path is not None, f"{name} missing: pip install pydicom-data"
    return path


def _same(path, reader, options=None, frame=None):
    expected, _ = read_gray(path, frame=frame, options=options)
    img = LoadImage(reader=reader, image_only=True)(path)
    assert tuple(img.shape) == expected.shape
    np.testing.assert_array_equal(img.numpy(), expected)
    chan = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)(path)
    assert tuple(chan.shape) == (1, *expected.shape)  # 1xHxW, rows first, as LoadGrayd
    np.testing.assert_array_equal(chan[0].numpy(), expected)
    return img


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "US1_J2KR.dcm", "OBXXXX1A_2frame.dcm", "OT-PAL-8-face.dcm"])
def test_load_image_equals_read_gray_on_real_dicoms(name):
    img = _same(data(name), GrayReader())
    assert img.meta["format"] == "dicom"
    _same(data(name), DicomGrayReader())


def test_monochrome1_rows_first_and_options_as_arguments():
    path = data("RG1_UNCR.dcm")
    img = _same(path, GrayReader())
    assert tuple(img.shape) == (1955, 1841) and bool(img.meta["inverted"])  # MONAI's PydicomReader: 1841x1955
    _same(path, GrayReader(voi="none"), ReaderOptions(voi="none"))


def test_frame_policy_is_a_reader_argument():
    path = data("OBXXXX1A_2frame.dcm")
    first = _same(path, GrayReader(frame="first"), ReaderOptions(frame="first"))
    second = _same(path, GrayReader(frame=1), ReaderOptions(frame=1))
    assert first.meta["frame"] == 0 and second.meta["frame"] == 1


def test_nifti_and_png_written_here(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 1000, size=(20, 24, 5)).astype(np.int16)
    nii = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), nii)
    for k in (0, 3):
        _same(nii, GrayReader(frame=k), ReaderOptions(frame=k))
    png = tmp_path / "img.png"
    Image.fromarray(rng.integers(0, 65535, size=(30, 17)).astype(np.uint16)).save(png)
    img = _same(png, RasterGrayReader())
    assert tuple(img.shape) == (30, 17)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(rng.integers(0, 255, size=(12, 9, 3)).astype(np.uint8)).save(rgb)
    _same(rgb, GrayReader())


def test_suffix_and_format_checks(tmp_path):
    assert GrayReader().verify_suffix("a.dcm") and GrayReader().verify_suffix("a.nii.gz")
    assert not DicomGrayReader().verify_suffix("a.png") and RasterGrayReader().verify_suffix("A.PNG")
    with pytest.raises(ImageReadError, match="reads dicom"):
        DicomGrayReader().read(_png(tmp_path))


def _png(tmp_path):
    p = tmp_path / "x.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(p)
    return str(p)
