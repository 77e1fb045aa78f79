import struct
import zlib

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from perceiver_med.errors import ScanError
from perceiver_med.io import dicom
from perceiver_med.io.limits import voxel_budget
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
    decoded = dicom.decode(get_testdata_file(name))
    assert decoded.pixels.shape == (64, 64)
    np.testing.assert_array_equal(decoded.pixels, _mr_small())
    assert decoded.geometry.modality == "MR"


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "SC_rgb_jpeg.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm"])
def test_lossy_and_colour_files_decode_to_grey(name):
    array = dicom.decode(get_testdata_file(name)).pixels
    assert array.ndim == 2 and array.dtype == np.float32 and np.isfinite(array).all() and array.std() > 0


def test_file_without_preamble_or_meta_header_reads(tmp_path):
    hu = np.arange(64, dtype=np.float32).reshape(8, 8)
    ds = ct_slice(hu, 0.0, "1.2.3")
    del ds.file_meta
    ds.preamble = None
    ds.save_as(tmp_path / "raw", implicit_vr=True, little_endian=True)
    assert (tmp_path / "raw").read_bytes()[:2] == b"\x08\x00"
    assert dicom.header(tmp_path / "raw").rows == 8
    array = dicom.decode(tmp_path / "raw").pixels
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
    decoded = dicom.decode(tmp_path / "a.dcm")
    np.testing.assert_array_equal(decoded.pixels, hu)
    assert decoded.geometry.modality == "CT" and decoded.geometry.pixel_spacing == (0.8, 0.8)


def test_monochrome1_is_inverted_so_dense_is_bright(tmp_path):
    values = np.linspace(0, 1000, 64).reshape(8, 8)
    ct_slice(values - 1024, 0.0, "1.2.3", photometric="MONOCHROME2").save_as(tmp_path / "m2.dcm",
                                                                             enforce_file_format=True)
    # the MONOCHROME1 twin stores the complementary values: the same picture on screen
    ct_slice(1000 - values - 1024, 0.0, "1.2.3", photometric="MONOCHROME1").save_as(tmp_path / "m1.dcm",
                                                                                   enforce_file_format=True)
    mono2 = dicom.decode(tmp_path / "m2.dcm").pixels
    mono1 = dicom.decode(tmp_path / "m1.dcm").pixels
    np.testing.assert_allclose(mono1 - mono1.min(), mono2 - mono2.min())


def test_multiframe_file_decodes_all_frames():
    decoded = dicom.decode(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    assert decoded.pixels.shape == (2, 100, 100) and decoded.geometry.frames == 2


# ---------------------------------------------------------------- header checks, before any pixel is decoded


def test_truncated_pixel_data_is_found_from_the_header_without_decoding():
    info = dicom.header(get_testdata_file("MR_truncated.dcm"))
    assert info.problem == ("truncated pixel data: the file holds 8,130 of the 8,192 bytes that Rows, Columns, "
                               "frames, samples and BitsAllocated declare")


def test_deflated_file_reads_like_pydicom_reads_it():
    path = get_testdata_file("image_dfl.dcm")
    array = dicom.decode(path).pixels
    np.testing.assert_array_equal(array, pydicom.dcmread(path).pixel_array.astype(np.float32))
    assert dicom.header(path).problem == ""


def test_a_deflated_header_is_read_without_inflating_the_pixel_data(tmp_path, monkeypatch):
    from tests.test_hostile_files import deflated_dicom

    path = deflated_dicom(tmp_path / "big.dcm", 4096, 4096)  # 16 MiB of pixels when inflated
    inflated = []
    original = dicom._Inflater._inflate

    def counting(self, most):
        chunk = original(self, most)
        inflated.append(len(chunk))
        return chunk

    monkeypatch.setattr(dicom._Inflater, "_inflate", counting)
    with voxel_budget(1 << 22), pytest.raises(ScanError, match="PERCEIVER_MED_MAX_VOXELS"):
        dicom.header(path)  # 4096^2 = 2^24 pixels: over the budget
    assert sum(inflated) < 1 << 20  # the header only (pydicom alone inflates the whole stream)
    assert dicom.header(path).problem == ""  # within the budget: the length is checked by a streamed count
    array = dicom.decode(path).pixels
    assert array.shape == (4096, 4096) and not array.any()


def test_deflated_data_that_expands_past_its_declared_size_is_refused(tmp_path):
    from tests.test_hostile_files import deflated_dicom

    path = deflated_dicom(tmp_path / "small.dcm", 64, 64)
    raw = path.read_bytes()
    # the same header, then far more data than Rows x Columns: a bomb hiding behind a small image size
    ds_start = raw.index(b"DICM") + 4
    meta_end = ds_start + 12 + int.from_bytes(raw[ds_start + 8:ds_start + 12], "little")
    body = zlib.decompress(raw[meta_end:], -zlib.MAX_WBITS)
    at = body.index(struct.pack("<HH", 0x7FE0, 0x0010))
    huge = body[:at] + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 64 << 20) + bytes(64 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    path.write_bytes(raw[:meta_end] + packer.compress(huge) + packer.flush())
    assert "far more than" in dicom.header(path).problem
    with pytest.raises(ScanError, match="far more than"):
        dicom.decode(path)


def test_a_compressed_frame_claiming_more_pixels_than_the_header_is_refused(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))  # a 1024 x 256 JPEG 2000 frame
    ds.Rows, ds.Columns = 512, 128  # the header now says less than the codestream will allocate
    ds.save_as(tmp_path / "j2k.dcm")
    assert "claims 1024x256 pixels, more than the 512x128" in dicom.header(tmp_path / "j2k.dcm").problem


def test_images_over_the_voxel_budget_are_refused_from_the_header(tmp_path):
    ct_slice(np.zeros((64, 64)), 0.0, "1.2.3").save_as(tmp_path / "a.dcm", enforce_file_format=True)
    with voxel_budget(4096), pytest.raises(ScanError) as refused:  # planes of at most 1024 pixels
        dicom.header(tmp_path / "a.dcm")
    assert "64x64" in str(refused.value) and "PERCEIVER_MED_MAX_VOXELS" in str(refused.value)
    assert "to at least 16,384" in str(refused.value)


@pytest.mark.parametrize("name", ["chrJapMulti.dcm", "chrKoreanMulti.dcm"])
def test_an_image_header_without_pixel_data_is_a_problem_found_by_the_header(name):
    from pydicom.data import get_charset_files

    assert dicom.header(get_charset_files(name)[0]).problem == "no pixel data element"


def test_rescale_is_applied_in_float32_without_a_float64_copy(tmp_path):
    hu = np.arange(-1000, 1000, 31, dtype=np.float32)[:64].reshape(8, 8)
    ds = ct_slice(hu, 0.0, "1.2.3")
    ds.RescaleSlope, ds.RescaleIntercept = 0.5, -1024
    ds.PixelData = np.round((hu + 1024) / 0.5).astype(np.uint16).tobytes()
    ds.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    array = dicom.decode(tmp_path / "a.dcm").pixels
    assert array.dtype == np.float32
    np.testing.assert_allclose(array, hu, atol=0.5)


# ---------------------------------------------------------------- reasons


def test_reasons_are_one_line_never_empty_and_never_cut_inside_a_word():
    from perceiver_med.io.limits import describe

    assert describe(MemoryError()) == "out of memory"
    assert describe(IndexError()) == "IndexError"
    long = ValueError("The number of bytes of pixel data is less than expected (8130 vs 8192 bytes) - the "
                      "dataset may be corrupted, have an invalid group 0028 element value, or the transfer "
                      "syntax may be incorrect\nsecond line")
    text = describe(long, limit=120)
    assert "\n" not in text and text.endswith("…") and len(text) <= 121
    assert text[:-1].split()[-1] in long.args[0].split()  # a whole word before the ellipsis


def test_a_deflated_file_decodes_to_pydicoms_own_pixels():
    from pydicom.pixels import apply_modality_lut

    path = get_testdata_file("image_dfl.dcm")  # Deflated Explicit VR Little Endian, read here as a stream
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    assert dicom.header(path).problem == ""
    np.testing.assert_array_equal(dicom.decode(path).pixels, apply_modality_lut(ds.pixel_array, ds))
