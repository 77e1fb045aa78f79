import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from perceiver_med.errors import ScanError
from perceiver_med.io import dicom
from tests.conftest import ct_slice


def _mr_small():
    return pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.astype(np.float32)


@pytest.mark.parametrize("name", [
    "MR_small.dcm",                    # explicit VR little endian
    "MR_small_implicit.dcm",           # implicit VR
    "MR_small_bigendian.dcm",          # explicit VR big endian
    "MR_small_RLE.dcm",                # RLE lossless (pylibjpeg-rle)
    "MR_small_jp2klossless.dcm",       # JPEG 2000 lossless (pylibjpeg-openjpeg)
    "MR_small_jpeg_ls_lossless.dcm",   # JPEG-LS lossless (pylibjpeg-libjpeg)
])
def test_lossless_transfer_syntaxes_decode_to_the_same_pixels(name):
    array, meta = dicom.decode(get_testdata_file(name))
    assert array.shape == (64, 64)
    np.testing.assert_array_equal(array, _mr_small())
    assert meta["modality"] == "MR"


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "SC_rgb_jpeg.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm"])
def test_lossy_and_colour_files_decode_to_grey(name):
    array, _ = dicom.decode(get_testdata_file(name))
    assert array.ndim == 2 and array.dtype == np.float32 and np.isfinite(array).all() and array.std() > 0


def test_file_without_preamble_or_meta_header_reads(tmp_path):
    hu = np.arange(64, dtype=np.float32).reshape(8, 8)
    ds = ct_slice(hu, 0.0, "1.2.3")
    del ds.file_meta
    ds.preamble = None
    ds.save_as(tmp_path / "raw", implicit_vr=True, little_endian=True)
    assert (tmp_path / "raw").read_bytes()[:2] == b"\x08\x00"
    assert dicom.header(tmp_path / "raw")["rows"] == 8
    array, _ = dicom.decode(tmp_path / "raw")
    np.testing.assert_array_equal(array, hu)


def test_rt_plan_without_meta_header_is_skipped_not_crashed():
    with pytest.raises(ScanError, match="no pixel data"):
        dicom.header(get_testdata_file("ExplVR_BigEndNoMeta.dcm"))


@pytest.mark.parametrize("name,reason", [
    ("test-SR.dcm", "no pixel data"), ("rtplan.dcm", "no pixel data"), ("waveform_ecg.dcm", "no pixel data"),
    ("dicomdirtests/DICOMDIR", "DICOMDIR"),
])
def test_non_image_dicom_is_refused_with_a_reason(name, reason):
    with pytest.raises(ScanError, match=reason):
        dicom.header(get_testdata_file(name))


def test_truncated_pixel_data_is_a_scan_error():
    with pytest.raises(ScanError, match="pixel data"):
        dicom.decode(get_testdata_file("MR_truncated.dcm"))


def test_garbage_is_not_dicom(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ScanError, match="not a DICOM"):
        dicom.header(path)


def test_modality_lut_gives_hounsfield_units(tmp_path):
    hu = np.full((8, 8), -1000.0)
    hu[2:6, 2:6] = 40
    ct_slice(hu, 0.0, "1.2.3").save_as(tmp_path / "a.dcm", enforce_file_format=True)
    array, meta = dicom.decode(tmp_path / "a.dcm")
    np.testing.assert_array_equal(array, hu)
    assert meta["modality"] == "CT" and meta["pixel_spacing"] == (0.8, 0.8)


def test_monochrome1_is_inverted_so_dense_is_bright(tmp_path):
    values = np.linspace(0, 1000, 64).reshape(8, 8)
    ct_slice(values - 1024, 0.0, "1.2.3", photometric="MONOCHROME2").save_as(tmp_path / "m2.dcm",
                                                                             enforce_file_format=True)
    # the MONOCHROME1 twin stores the complementary values: the same picture on screen
    ct_slice(1000 - values - 1024, 0.0, "1.2.3", photometric="MONOCHROME1").save_as(tmp_path / "m1.dcm",
                                                                                   enforce_file_format=True)
    mono2, _ = dicom.decode(tmp_path / "m2.dcm")
    mono1, _ = dicom.decode(tmp_path / "m1.dcm")
    np.testing.assert_allclose(mono1 - mono1.min(), mono2 - mono2.min())


def test_multiframe_file_decodes_all_frames():
    array, meta = dicom.decode(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    assert array.shape == (2, 100, 100) and meta["frames"] == 2
