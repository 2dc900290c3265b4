"""DICOM reader tests on real pydicom / pydicom-data files and on small files written here with exact values."""

import json

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from pipeline.errors import ImageReadError
from pipeline.io import ReaderOptions, count_frames, nonzero_slices, read_gray
from pipeline.io.dicom import read_dicom_header

INFO_KEYS = {"format", "photometric", "modality", "frames", "frame", "voi_applied", "inverted",
             "bits_stored", "shape", "crop"}  # fmt: skip


def data(name):
    path = get_testdata_file(name)
    assert path is not None, f"{name} missing: pip install pydicom-data"
    return path


def lum(rgb):
    rgb = rgb.astype(np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


# ---------------------------------------------------------------- real files


@pytest.fixture(scope="module")
def rg1():
    return read_gray(data("RG1_UNCR.dcm"))


def test_cr_monochrome1_shape_rows_first_and_info(rg1):
    image, info = rg1
    assert image.dtype == np.float32 and image.shape == (1955, 1841)  # MONAI would give 1841x1955
    assert set(info.as_dict()) == INFO_KEYS
    assert info.format == "dicom" and info.photometric == "MONOCHROME1" and info.modality == "CR"
    assert info.inverted and info.voi_applied and info.bits_stored == 15
    assert info.frames == 1 and info.frame == 0
    assert info.shape == (1955, 1841) and info.crop is None
    json.dumps(info.as_dict())


def test_cr_bones_bright_lungs_dark(rg1):
    image, _ = rg1
    right_lung, left_lung = image[400:800, 400:640], image[400:800, 1200:1440]  # regions chosen on a preview
    mediastinum = image[400:1200, 860:980]
    assert right_lung.mean() < 0.75 * mediastinum.mean()
    assert left_lung.mean() < 0.75 * mediastinum.mean()


def test_cr_equals_pydicom_reference(rg1):
    ds = pydicom.dcmread(data("RG1_UNCR.dcm"))
    windowed = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    reference = (2**ds.BitsStored - 1) - windowed  # MONOCHROME1: mirror in the window's output range
    np.testing.assert_array_equal(rg1[0], reference.astype(np.float32))


def test_cr_voi_none_inverts_data_range():
    image, info = read_gray(data("RG3_UNCR.dcm"), options=ReaderOptions(voi="none"))
    raw = pixel_array(data("RG3_UNCR.dcm")).astype(np.float64)
    assert not info.voi_applied and info.inverted
    np.testing.assert_array_equal(image, (raw.max() + raw.min() - raw).astype(np.float32))


@pytest.mark.parametrize("lossless, uncompressed", [("RG1_J2KR.dcm", None), ("RG3_J2KR.dcm", "RG3_UNCR.dcm")])
def test_cr_lossless_j2k_identical(rg1, lossless, uncompressed):
    expected = rg1[0] if uncompressed is None else read_gray(data(uncompressed))[0]
    np.testing.assert_array_equal(read_gray(data(lossless))[0], expected)


def test_us_rgb_luminance_and_lossless_j2k():
    image, info = read_gray(data("US1_UNCR.dcm"))
    rgb = pixel_array(data("US1_UNCR.dcm"))
    assert image.shape == (480, 640) and info.photometric == "RGB" and not info.voi_applied
    np.testing.assert_allclose(image, lum(rgb), atol=1e-4)
    j2k, j2k_info = read_gray(data("US1_J2KR.dcm"))  # stored as YBR_RCT; the codec returns RGB
    assert j2k_info.photometric == "YBR_RCT"
    np.testing.assert_array_equal(j2k, image)


def test_palette_us_multiframe_rle_and_region_crop():
    single, info = read_gray(data("OBXXXX1A.dcm"))
    assert count_frames(data("OBXXXX1A.dcm")) == 1 and count_frames(data("OBXXXX1A_2frame.dcm")) == 2
    # The tissue region (RegionDataType 1) is x 120..800, y 60..518; x 800 is one past the edge.
    assert info.crop == (60, 519, 120, 800) and single.shape == (459, 680)
    ds = pydicom.dcmread(data("OBXXXX1A.dcm"))
    np.testing.assert_allclose(single, lum(apply_color_lut(ds.pixel_array, ds))[60:519, 120:800], atol=1e-2)
    np.testing.assert_array_equal(read_gray(data("OBXXXX1A_rle.dcm"))[0], single)
    middle, minfo = read_gray(data("OBXXXX1A_2frame.dcm"))
    assert minfo.frame == 1 and minfo.frames == 2 and middle.shape == (459, 680)
    for k in (0, 1):
        np.testing.assert_array_equal(
            read_gray(data("OBXXXX1A_rle_2frame.dcm"), frame=k)[0],
            read_gray(data("OBXXXX1A_2frame.dcm"), frame=k)[0],
        )
    full, finfo = read_gray(data("OBXXXX1A.dcm"), options=ReaderOptions(crop_us_region=False))
    assert full.shape == (600, 800) and finfo.crop is None
    assert full[:60].max() > 0  # the burnt-in header text the crop removes


def test_palette_big_endian_equals_little_endian():
    # pydicom 3.0.2's apply_color_lut misreads big-endian OW palettes; the reader corrects it.
    np.testing.assert_array_equal(read_gray(data("OBXXXX1A_expb.dcm"))[0], read_gray(data("OBXXXX1A.dcm"))[0])
    np.testing.assert_array_equal(
        read_gray(data("OBXXXX1A_expb_2frame.dcm"), frame=0)[0],
        read_gray(data("OBXXXX1A_2frame.dcm"), frame=0)[0],
    )


def test_palette_face():
    image, info = read_gray(data("OT-PAL-8-face.dcm"))
    ds = pydicom.dcmread(data("OT-PAL-8-face.dcm"), force=True)  # no meta header: implicit VR little endian
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    assert info.photometric == "PALETTE COLOR" and image.shape == (480, 640)
    np.testing.assert_allclose(image, lum(apply_color_lut(ds.pixel_array, ds)), atol=1e-2)


@pytest.mark.parametrize(
    "name, atol",
    [
        ("SC_rgb_expb.dcm", 0),  # big endian
        ("SC_rgb_rle.dcm", 0),
        ("SC_rgb_jpeg_gdcm.dcm", 0),  # JPEG lossless, RGB
        ("SC_ybr_full_uncompressed.dcm", 2),  # YBR -> RGB conversion rounds
        ("SC_ybr_full_422_uncompressed.dcm", 2),
        ("SC_rgb_jpeg_dcmtk.dcm", 2),  # JPEG baseline, YBR_FULL
    ],
)
def test_colour_variants_same_luminance(name, atol):
    reference = read_gray(data("SC_rgb.dcm"))[0]
    image, info = read_gray(data(name))
    assert image.shape == (100, 100) and not info.inverted
    np.testing.assert_allclose(image, reference, atol=atol, rtol=0)


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_bigendian.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
    ],
)
def test_mr_encodings_equal_little_endian(name):
    np.testing.assert_array_equal(read_gray(data(name))[0], read_gray(data("MR_small.dcm"))[0])


@pytest.mark.parametrize(
    "name, shape",
    [("JPGExtended.dcm", (1024, 256)), ("JPEG-LL.dcm", (1024, 256)), ("SC_rgb_jpeg_dcmtk.dcm", (100, 100))],
)
def test_jpeg_decodes(name, shape):
    image, _ = read_gray(data(name))
    assert image.shape == shape and np.isfinite(image).all() and image.max() > image.min()


def test_jpeg_lossless_signed_matches_pixel_array():
    image, info = read_gray(data("JPEG-LL.dcm"))
    ds = pydicom.dcmread(data("JPEG-LL.dcm"))
    np.testing.assert_array_equal(image, apply_modality_lut(ds.pixel_array, ds).astype(np.float32))


def test_multiframe_mr_frames_and_jpeg_ls():
    path = data("emri_small.dcm")
    assert count_frames(path) == 10 and nonzero_slices(path) == list(range(10))
    frames = pixel_array(path)
    for k in (0, 7):
        np.testing.assert_array_equal(read_gray(path, frame=k)[0], frames[k].astype(np.float32))
    assert read_gray(path)[1].frame == 5
    np.testing.assert_array_equal(read_gray(data("emri_small_jpeg_ls_lossless.dcm"), frame=7)[0], frames[7])


def test_cine_one_frame_of_120_ybr_jpeg_with_region():
    path = data("color3d_jpeg_baseline.dcm")
    image, info = read_gray(path, frame=60)
    r0, r1, c0, c1 = info.crop
    assert (
        info.frames == 120 and info.photometric == "YBR_FULL_422" and image.shape == (r1 - r0, c1 - c0)
    )
    np.testing.assert_allclose(image, lum(pixel_array(path, index=60))[r0:r1, c0:c1], atol=1e-3)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's one-frame path reader trips on deflate first
def test_deflated_transfer_syntax():
    image, _ = read_gray(data("image_dfl.dcm"))
    np.testing.assert_array_equal(image, pydicom.dcmread(data("image_dfl.dcm")).pixel_array)


def test_read_dicom_header():
    ds = read_dicom_header(data("RG1_UNCR.dcm"))
    assert ds.PatientID == "9RG1" and "PixelData" not in ds and ds.Rows == 1955


# ---------------------------------------------------------------- files written here


def write(path, pixels, *, photometric="MONOCHROME2", bits_stored=None, signed=None, raw=None, **attrs):
    """Write a minimal valid DICOM file; ``pixels`` is (rows, cols) or (frames, rows, cols)."""
    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality = "P1", "OT"
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i" if signed is None else signed)
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes() if raw is None else raw
    ds.save_as(path, enforce_file_format=True)
    return path


def lut_item(descriptor, values):
    item = Dataset()
    item.add_new(0x00283002, "US", descriptor)  # LUTDescriptor: ambiguous VR, so spelled out
    item.add_new(0x00283006, "US", values)  # LUTData
    return item


def test_signed_16_bit_with_rescale(tmp_path):
    stored = np.array([[-32768, -1000, 0], [1, 1234, 32767]], dtype=np.int16)
    path = write(tmp_path / "a.dcm", stored, RescaleSlope=2, RescaleIntercept=-10)
    image, info = read_gray(path)
    np.testing.assert_array_equal(image, stored.astype(np.float64) * 2 - 10)
    assert not info.voi_applied and not info.inverted and info.bits_stored == 16


def test_bits_stored_12_of_16_masks_and_sign_extends(tmp_path):
    junk = np.array([[0xF005, 0x1FFF, 0x2800]], dtype=np.uint16)  # garbage above bit 11 must be ignored
    unsigned = write(tmp_path / "u.dcm", np.zeros((1, 3), np.uint16), bits_stored=12, raw=junk.tobytes())
    np.testing.assert_array_equal(read_gray(unsigned)[0], [[5, 4095, 2048]])
    # -1, 2047, -2048 in 12-bit two's complement
    twelve = np.array([[0x0FFF, 0x07FF, 0x0800]], dtype=np.uint16)
    signed = write(tmp_path / "s.dcm", np.zeros((1, 3), np.int16), bits_stored=12, raw=twelve.tobytes())
    np.testing.assert_array_equal(read_gray(signed)[0], [[-1, 2047, -2048]])


@pytest.fixture
def two_windows(tmp_path):
    pixels = np.array([[0, 100, 150, 200, 1000, 4000]], dtype=np.uint16)
    return write(tmp_path / "w.dcm", pixels, bits_stored=12, WindowCenter=[100, 1000], WindowWidth=[200, 2000],
                 VOILUTFunction="LINEAR_EXACT")  # fmt: skip


def test_two_windows_voi_index(two_windows):
    x = np.array([0, 100, 150, 200, 1000, 4000], dtype=np.float64)
    for index, (c, w) in enumerate([(100, 200), (1000, 2000)]):
        expected = np.clip(((x - c) / w + 0.5) * 4095, 0, 4095)  # LINEAR_EXACT, output 0..2^12-1
        image, info = read_gray(two_windows, options=ReaderOptions(voi_index=index))
        np.testing.assert_allclose(image[0], expected, rtol=1e-6)
        assert info.voi_applied
    assert read_gray(two_windows)[0][0, 1] == 2047.5
    np.testing.assert_array_equal(read_gray(two_windows, options=ReaderOptions(voi="none"))[0][0], x)
    with pytest.raises(ImageReadError, match="voi_index=2"):
        read_gray(two_windows, options=ReaderOptions(voi_index=2))


def test_linear_and_sigmoid_window(tmp_path):
    x = np.array([[0, 50, 100, 101, 150, 255]], dtype=np.uint8)
    lin = read_gray(write(tmp_path / "l.dcm", x, WindowCenter=100, WindowWidth=101))[0][0]
    # LINEAR (PS3.3 C.11.2.1.2.1): c - 0.5 and w - 1, below c-0.5-(w-1)/2 -> 0, above c-0.5+(w-1)/2 -> 255
    expected = np.clip(((x[0] - 99.5) / 100 + 0.5) * 255, 0, 255)
    np.testing.assert_allclose(lin, expected, rtol=1e-6)
    sigmoid = write(tmp_path / "s.dcm", x, WindowCenter=100, WindowWidth=50, VOILUTFunction="SIGMOID")
    sig = read_gray(sigmoid)[0][0]
    np.testing.assert_allclose(sig, 255 / (1 + np.exp(-4 * (x[0] - 100.0) / 50)), rtol=1e-6)


def test_voi_window_policy_requires_a_window(tmp_path):
    path = write(tmp_path / "n.dcm", np.zeros((2, 2), np.uint8))
    assert not read_gray(path)[1].voi_applied
    with pytest.raises(ImageReadError, match="no WindowCenter"):
        read_gray(path, options=ReaderOptions(voi="window"))


def test_voi_lut_sequence_and_monochrome1(tmp_path):
    pixels = np.array([[0, 10, 11, 12, 13, 50]], dtype=np.uint16)
    seq = Sequence([lut_item([4, 10, 16], [100, 200, 300, 400])])  # 4 entries, first maps value 10
    mono2 = write(tmp_path / "v2.dcm", pixels, VOILUTSequence=seq, WindowCenter=1, WindowWidth=1)
    image, info = read_gray(mono2)  # auto prefers the LUT over the window
    np.testing.assert_array_equal(image[0], [100, 100, 200, 300, 400, 400])
    assert info.voi_applied
    mono1 = write(tmp_path / "v1.dcm", pixels, photometric="MONOCHROME1", VOILUTSequence=seq)
    image, info = read_gray(mono1)
    np.testing.assert_array_equal(image[0], 65535 - np.array([100, 100, 200, 300, 400, 400]))
    assert info.inverted
    # voi=window ignores the LUT and uses the window instead
    windowed = read_gray(mono2, options=ReaderOptions(voi="window"))[0][0]
    np.testing.assert_array_equal(windowed, [0, 65535, 65535, 65535, 65535, 65535])


def test_modality_lut_sequence(tmp_path):
    item = lut_item([4, 0, 16], [5, 50, 500, 5000])
    item.ModalityLUTType = "US"
    pixels = np.array([[0, 1, 2, 3, 7]], dtype=np.uint8)
    path = write(tmp_path / "m.dcm", pixels, ModalityLUTSequence=Sequence([item]))
    np.testing.assert_array_equal(read_gray(path)[0][0], [5, 50, 500, 5000, 5000])


def test_monochrome1_inversion(tmp_path):
    pixels = np.array([[0, 100, 1000]], dtype=np.uint16)
    plain = read_gray(write(tmp_path / "p.dcm", pixels, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(plain[0][0], [1000, 900, 0])  # data range without a window
    assert plain[1].inverted and not plain[1].voi_applied
    windowed = write(tmp_path / "w.dcm", pixels, photometric="MONOCHROME1", WindowCenter=500, WindowWidth=1000,
                     VOILUTFunction="LINEAR_EXACT")  # fmt: skip
    # mirrored within the window's output range 0..65535, not the data range
    np.testing.assert_array_equal(read_gray(windowed)[0][0], [65535, 65535 - 6553.5, 0])


def test_presentation_lut_shape(tmp_path):
    """INVERSE inverts MONOCHROME2; with MONOCHROME1 (as DX files write it) it is no second inversion."""
    pixels = np.array([[0, 100, 1000]], dtype=np.uint16)
    inv2 = read_gray(write(tmp_path / "i2.dcm", pixels, PresentationLUTShape="INVERSE"))
    np.testing.assert_array_equal(inv2[0][0], [1000, 900, 0])
    assert inv2[1].inverted
    ident2 = read_gray(write(tmp_path / "d2.dcm", pixels, PresentationLUTShape="IDENTITY"))
    np.testing.assert_array_equal(ident2[0][0], [0, 100, 1000])
    inv1 = read_gray(write(tmp_path / "i1.dcm", pixels, photometric="MONOCHROME1", PresentationLUTShape="INVERSE"))
    np.testing.assert_array_equal(inv1[0][0], [1000, 900, 0])


def test_multiframe_selection(tmp_path):
    frames = np.stack([np.full((3, 4), k, np.uint16) for k in range(5)])
    path = write(tmp_path / "mf.dcm", frames)
    assert count_frames(path) == 5
    assert read_gray(path)[0].max() == 2 and read_gray(path)[1].frame == 2
    assert read_gray(path, options=ReaderOptions(frame="first"))[0].max() == 0
    assert read_gray(path, options=ReaderOptions(frame=3))[0].max() == 3
    image, info = read_gray(path, frame=4)
    assert image.shape == (3, 4) and (image == 4).all() and info.frame == 4 and info.frames == 5
    with pytest.raises(ImageReadError, match="frame 5 out of range"):
        read_gray(path, frame=5)


def test_enhanced_functional_groups(tmp_path):
    frames = np.stack([np.full((2, 2), 10, np.uint16)] * 2)
    shared, per_frame = Dataset(), []
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth, voi.VOILUTFunction = 20, 20, "LINEAR_EXACT"
    shared.FrameVOILUTSequence = Sequence([voi])
    for slope in (1, 2):
        group, pvt = Dataset(), Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = slope, 0, "US"
        group.PixelValueTransformationSequence = Sequence([pvt])
        per_frame.append(group)
    path = write(tmp_path / "e.dcm", frames, SharedFunctionalGroupsSequence=Sequence([shared]),
                 PerFrameFunctionalGroupsSequence=Sequence(per_frame))  # fmt: skip
    # frame 0: 10 -> at the window's lower edge -> 0; frame 1: 2 * 10 = 20 -> the centre -> half the output
    # range, which pydicom takes as the rescaled stored range 0..65535 * 2
    assert (read_gray(path, frame=0)[0] == 0).all()
    assert (read_gray(path, frame=1)[0] == 65535).all()


def test_ultrasound_region_crop(tmp_path):
    pixels = np.full((40, 60), 255, np.uint8)  # 255 stands for burnt-in text around the image
    pixels[10:30, 20:50] = 100
    regions = []
    for (x0, y0, x1, y1), kind in [((20, 10, 49, 29), 1), ((0, 0, 59, 39), 2)]:
        region = Dataset()
        region.RegionLocationMinX0, region.RegionLocationMinY0 = x0, y0
        region.RegionLocationMaxX1, region.RegionLocationMaxY1 = x1, y1
        region.RegionDataType, region.RegionSpatialFormat = kind, 1
        regions.append(region)
    path = write(tmp_path / "us.dcm", pixels, Modality="US", SequenceOfUltrasoundRegions=Sequence(regions))
    image, info = read_gray(path)  # the tissue region wins over the larger non-tissue one
    assert info.crop == (10, 30, 20, 50) and image.shape == (20, 30) and (image == 100).all()
    assert read_gray(path, options=ReaderOptions(crop_us_region=False))[0].max() == 255


def test_file_without_meta_header(tmp_path):
    ds = Dataset()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 2, 3, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.arange(6, dtype="<u2").tobytes()
    path = tmp_path / "IM0001"  # no extension, no preamble, no meta: implicit VR little endian
    ds.save_as(path, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"
    image, info = read_gray(path)
    np.testing.assert_array_equal(image, [[0, 1, 2], [3, 4, 5]])
    assert count_frames(path) == 1


def test_corrupt_compressed_pixel_data(tmp_path):
    path = write(tmp_path / "rle.dcm", np.zeros((4, 4), np.uint8), raw=encapsulate([b"\x00\x01\x02"]))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match="RLE Lossless") as err:
        read_gray(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["garbage.dcm", "garbage", "garbage.dicom", "empty.dcm"])
def test_non_dicom_garbage(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"" if name.startswith("empty") else b"this is not a medical image\n" * 20)
    with pytest.raises(ImageReadError) as err:
        read_gray(path)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="file not found"):
        read_gray(tmp_path / "nope.dcm")
