"""The reader contract and its registry: which reader reads which file, and what a new reader needs."""
import dataclasses
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from perceiver_med.errors import ScanError
from perceiver_med.io import discover, dicom, dicom_series, nifti, raster, formats, read_label_map, read_scan
from perceiver_med.io.descriptions import describe_scan
from perceiver_med.io.image import placed
from perceiver_med.io.orientation import LPS_FROM_RAS
from perceiver_med.io.reader import ImageHeader, Reader
from tests.conftest import ct_slice


def _one_of_each(folder: Path) -> dict[str, Reader]:
    """A file of every format perceiver-med reads, named as users name them, and the reader each belongs to."""
    picture = (np.arange(48, dtype=np.uint8).reshape(6, 8) * 5)
    Image.fromarray(picture).save(folder / "knee.png")
    Image.fromarray(picture).save(folder / "knee.jpg", quality=95)
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 2.0, 1.0])), folder / "ct.nii.gz")
    nib.save(nib.Nifti1Image(volume, np.eye(4)), folder / "ct.nii")
    ct_slice(np.zeros((8, 8)), 0.0, "1.2.3.1").save_as(folder / "IM0001", enforce_file_format=True)  # no extension
    ct_slice(np.zeros((8, 8)), 0.0, "1.2.3.2").save_as(folder / "slice.dcm", enforce_file_format=True)
    return {"knee.png": raster.READER, "knee.jpg": raster.READER, "ct.nii.gz": nifti.READER,
            "ct.nii": nifti.READER, "IM0001": dicom_series.READER, "slice.dcm": dicom_series.READER}


def test_the_registry_picks_each_files_reader_and_reads_each_scan_with_it(tmp_path):
    expected = _one_of_each(tmp_path)
    assert {name: formats.reader_for(tmp_path / name) for name in expected} == expected
    found = discover(tmp_path)
    assert not found.skipped and len(found.scans) == len(expected)
    for scan in found.scans:
        reader = formats.reader_of(scan.format)
        assert reader is expected[scan.files[0].name]
        image = read_scan(scan)
        assert image.voxels.shape == scan.shape and image.format == scan.format


def test_a_file_no_reader_reads_is_skipped_with_the_formats_that_are_read(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "picture", format="PNG")  # a PNG without its name
    ct_slice(np.zeros((8, 8)), 0.0, "1.2.3").save_as(tmp_path / "a.dcm", enforce_file_format=True)
    reasons = {skip.file.name: skip.reason for skip in discover(tmp_path).skipped}
    assert reasons == {"notes.txt": "not a DICOM, MetaImage, NIfTI, PNG or JPEG file (.txt)",
                       "picture": "not a DICOM, MetaImage, NIfTI, PNG or JPEG file (no extension)"}
    assert formats.formats_read() == "DICOM, MetaImage, NIfTI, PNG or JPEG"


class NumpyReader(Reader):
    """A format perceiver-med does not read (NumPy .npy pictures): one class, one registry entry."""

    name, formats_read, formats = "NumPy", "NumPy", ("npy",)

    def claims(self, path):
        return path.suffix == ".npy"

    def header(self, path):
        array = np.load(path, mmap_mode="r")
        return ImageHeader("npy", "image", tuple(array.shape))

    def read(self, scan, pick=None):
        array = np.load(scan.files[0]).astype(np.float32)
        return placed(array, LPS_FROM_RAS, array.T.shape, format="npy", ordering="image", assumed=("orientation",))


def test_a_reader_added_to_the_registry_is_used_by_discovery_reading_and_skip_reasons(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "READERS", (NumpyReader(),) + formats.READERS)
    picture = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "picture.npy", picture)
    (tmp_path / "notes.txt").write_text("hello")
    found = discover(tmp_path)
    assert [(s.id, s.format, s.shape) for s in found.scans] == [("picture.npy", "npy", (3, 4))]
    np.testing.assert_array_equal(read_scan(found.scans[0]).voxels, picture)
    assert found.skipped[0].reason == "not a DICOM, MetaImage, NIfTI, NumPy, PNG or JPEG file (.txt)"


# ---------------------------------------------------------------- typed DICOM headers


def test_a_dicom_header_is_a_frozen_typed_record_of_the_file():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    header = dicom.header(path)
    assert (header.rows, header.columns, header.frames, header.modality) == (ds.Rows, ds.Columns, 1, "CT")
    assert header.series_uid == ds.SeriesInstanceUID and header.position == tuple(map(float, ds.ImagePositionPatient))
    assert header.pixel_spacing == tuple(map(float, ds.PixelSpacing)) and header.has_geometry and header.problem == ""
    with pytest.raises(dataclasses.FrozenInstanceError):
        header.rows = 1


# ---------------------------------------------------------------- label maps


def test_read_label_map_gives_a_nifti_label_maps_voxels_and_its_lps_affine(tmp_path):
    labels = np.zeros((6, 7, 5), np.int16)
    labels[1:3, 2:4, 1:4], labels[4, 5, 3] = 1, 2
    affine = np.array([[0.7, 0, 0, -40.0], [0, 0.7, 0, 12.0], [0, 0, 2.5, -200.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(labels[..., None], affine), tmp_path / "mask.nii.gz")  # a trailing axis of one
    label_map = read_label_map(tmp_path / "mask.nii.gz")
    np.testing.assert_array_equal(label_map.labels, labels)
    np.testing.assert_allclose(label_map.affine, LPS_FROM_RAS @ affine)
    assert label_map.whole  # a NIfTI label map covers its whole scan; a DICOM SEG only its slices


def test_read_label_map_refuses_what_is_no_label_map_with_the_reason(tmp_path):
    probabilities = np.full((4, 4, 4), 0.25, np.float32)
    nib.save(nib.Nifti1Image(probabilities, np.eye(4)), tmp_path / "probabilities.nii.gz")
    with pytest.raises(ScanError, match="not a label map: its values are not whole numbers"):
        read_label_map(tmp_path / "probabilities.nii.gz")
    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    image.set_sform(None, code=0)
    image.set_qform(None, code=0)
    nib.save(image, tmp_path / "unplaced.nii.gz")
    with pytest.raises(ScanError, match="no qform or sform code"):
        read_label_map(tmp_path / "unplaced.nii.gz")


# ---------------------------------------------------------------- descriptions for the report


def test_describe_scan_reads_a_series_folders_tags_and_nothing_from_other_formats(tmp_path):
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "a.dcm")
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    description = describe_scan(tmp_path, ds.SeriesInstanceUID)
    assert (description.modality, description.manufacturer) == ("CT", ds.Manufacturer)
    assert description.pixel_spacing == tuple(map(float, ds.PixelSpacing))
    assert description.slice_thickness == float(ds.SliceThickness)
    assert describe_scan(tmp_path, "1.2.3.another.series") is None
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), tmp_path / "b.nii.gz")
    assert describe_scan(tmp_path / "b.nii.gz") is None
