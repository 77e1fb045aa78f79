"""MetaImage: the anatomy of test_geometry written as .mha and as .mhd + .raw / .zraw, in storage orders whose
direction matrices flip and permute the axes, read back as the same display array and affine as its DICOM series
and its NIfTI; discovery keeps a header with its data file and reads no voxels.

Two writers, so that the reader is not checked against itself: SimpleITK's (the organisers' tool), and one here
that writes the header text and the voxel bytes by hand from the MetaImage specification (TransformMatrix lists
each voxel axis' direction in turn; the data runs with the first axis fastest).
"""
import zlib

import numpy as np
import pytest

from perceiver_med.io import discover, read_scan
from perceiver_med.io.limits import voxel_budget
from tests.io.test_geometry import (PLANES, SAGITTAL, SHAPE, _stored, _stored_to_display, anatomy,
                                    assert_is_the_anatomy, only_scan, write_dicom_series, write_nifti)

UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.105756658031515062000744821260"  # a LUNA16-like series UID
STORAGE = {  # stored axis n (ITK's i, j, k) -> (display axis, +1 or -1)
    "display-order": ((2, 1), (1, 1), (0, 1)),  # i: columns, j: rows, k: slices, as LUNA16 stores them
    "feet-first": ((2, 1), (1, 1), (0, -1)),  # k runs down: a negative z direction
    "flipped-permuted": ((1, -1), (2, -1), (0, 1)),  # i: rows upwards, j: columns to the patient's right
    "sagittal": ((1, 1), (0, -1), (2, 1)),
}


def _world(axes):
    """Stored index (i, j, k, 1) -> LPS mm for the anatomy stored along `axes`, and the stored voxels (i, j, k)."""
    volume, affine, _ = anatomy()
    return affine @ _stored_to_display(axes, SHAPE), _stored(volume, axes)


def write_by_hand(header_path, axes, compressed=False, local=None):
    """The anatomy as a MetaImage written from the specification: .mha (data after the header) or .mhd + data."""
    world, stored = _world(axes)
    spacing = np.linalg.norm(world[:3, :3], axis=0)
    directions = world[:3, :3] / spacing
    data = np.round(stored).astype("<i2").transpose(2, 1, 0).tobytes()  # i (stored axis 0) runs fastest
    if compressed:
        data = zlib.compress(data)
    local = header_path.suffix == ".mha" if local is None else local
    data_name = "LOCAL" if local else header_path.with_suffix(".zraw" if compressed else ".raw").name
    lines = ["ObjectType = Image", "NDims = 3", "BinaryData = True", "BinaryDataByteOrderMSB = False",
             f"CompressedData = {compressed}"] + ([f"CompressedDataSize = {len(data)}"] if compressed else []) + [
        "TransformMatrix = " + " ".join(f"{v:.17g}" for v in directions.T.ravel()),  # one axis' direction at a time
        "Offset = " + " ".join(f"{v:.17g}" for v in world[:3, 3]), "CenterOfRotation = 0 0 0",
        "AnatomicalOrientation = RAI",  # LUNA16 writes this whatever the matrix; ITK goes by TransformMatrix
        "ElementSpacing = " + " ".join(f"{v:.17g}" for v in spacing),
        "DimSize = " + " ".join(str(n) for n in stored.shape), "ElementType = MET_SHORT",
        f"ElementDataFile = {data_name}"]
    text = ("\n".join(lines) + "\n").encode()
    if local:
        header_path.write_bytes(text + data)
    else:
        header_path.write_bytes(text)
        header_path.with_name(data_name).write_bytes(data)


def write_by_sitk(path, axes, compressed=True):
    import SimpleITK as sitk

    world, stored = _world(axes)
    spacing = np.linalg.norm(world[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.round(stored).astype(np.int16).transpose(2, 1, 0))  # numpy (k, j, i)
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in world[:3, 3]])
    image.SetDirection([float(v) for v in (world[:3, :3] / spacing).ravel()])  # row-major, columns are the axes
    sitk.WriteImage(image, str(path), useCompression=compressed)


@pytest.mark.parametrize("storage", STORAGE)
@pytest.mark.parametrize("writer,name,compressed", [
    ("hand", "v.mhd", False), ("hand", "v.mhd", True), ("hand", "v.mha", True),
    ("sitk", "v.mha", True), ("sitk", "v.mhd", False)])
def test_a_metaimage_in_any_storage_order_reads_as_the_anatomy(tmp_path, storage, writer, name, compressed):
    (write_by_hand if writer == "hand" else write_by_sitk)(tmp_path / name, STORAGE[storage], compressed)
    scan = only_scan(tmp_path)
    image = read_scan(scan)
    assert (scan.format, image.format, image.ordering) == ("metaimage", "metaimage", "metaimage")
    assert scan.shape == image.voxels.shape and scan.spacing == pytest.approx(image.spacing)
    assert_is_the_anatomy(image)
    # only the slices asked for, the same as those slices of the whole volume
    some = read_scan(scan, lambda count: [count - 1, 0, 4])
    np.testing.assert_array_equal(some.voxels, image.voxels[[SHAPE[0] - 1, 0, 4]])
    assert some.slices == (SHAPE[0] - 1, 0, 4) and some.num_slices == SHAPE[0]
    np.testing.assert_array_equal(some.affine, image.affine)


def test_one_anatomy_as_dicom_nifti_and_metaimage_gives_one_array_and_one_affine(tmp_path):
    write_dicom_series(tmp_path / "dicom", PLANES[SAGITTAL][0])
    write_nifti(tmp_path / "v.nii.gz", ((1, -1), (2, 1), (0, -1)))
    write_by_hand(tmp_path / "hand.mhd", STORAGE["flipped-permuted"])
    write_by_sitk(tmp_path / "sitk.mha", STORAGE["feet-first"])
    images = [read_scan(scan) for scan in discover(tmp_path).scans]
    assert [image.format for image in images] == ["dicom", "metaimage", "metaimage", "nifti"]
    for image in images[1:]:
        np.testing.assert_array_equal(image.voxels, images[0].voxels)
        np.testing.assert_allclose(image.affine, images[0].affine, atol=1e-4)


def test_a_header_and_its_data_file_are_one_scan_named_by_its_series_uid(tmp_path):
    (tmp_path / "subset0").mkdir()
    write_by_hand(tmp_path / "subset0" / f"{UID}.mhd", STORAGE["display-order"])
    write_by_sitk(tmp_path / "patient-1.mha", STORAGE["display-order"])
    (tmp_path / "stray.raw").write_bytes(b"\0" * 64)  # no header names it
    found = discover(tmp_path)
    named, other = sorted(found.scans, key=lambda scan: scan.id, reverse=True)
    assert named.id == f"subset0/{UID}.mhd" and named.series_uid == UID
    assert [file.name for file in named.files] == [f"{UID}.mhd", f"{UID}.raw"]
    assert other.id == "patient-1.mha" and other.series_uid == "" and other.files == [tmp_path / "patient-1.mha"]
    [skip] = found.skipped
    assert skip.file.name == "stray.raw" and "no .mhd header" in skip.reason
    assert {(row["file"], row["scan"]) for row in found.records() if row["status"] == "ok"} == {
        (f"subset0/{UID}.mhd", named.id), (f"subset0/{UID}.raw", named.id), ("patient-1.mha", other.id)}
    # one header given alone still brings its data file
    [alone] = discover(tmp_path / "subset0" / f"{UID}.mhd").scans
    assert [file.name for file in alone.files] == [f"{UID}.mhd", f"{UID}.raw"]


def test_discovery_reads_headers_only_and_bad_files_are_skipped_with_reasons(tmp_path):
    axes = STORAGE["display-order"]
    write_by_hand(tmp_path / "good.mha", axes, compressed=True)
    # the same header with its compressed data spoilt: discovered (headers only), refused on reading
    text = (tmp_path / "good.mha").read_bytes()
    start = text.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
    (tmp_path / "spoilt.mha").write_bytes(text[:start] + bytes(255 - b for b in text[start:]))
    (tmp_path / "cut.mha").write_bytes(text[:start + 40])  # a download cut short
    write_by_hand(tmp_path / "short.mhd", axes)
    raw = (tmp_path / "short.raw").read_bytes()
    (tmp_path / "short.raw").write_bytes(raw[:len(raw) // 2])
    write_by_hand(tmp_path / "lost.mhd", axes)
    (tmp_path / "lost.raw").unlink()
    (tmp_path / "notes.mha").write_text("not an image at all\n")
    (tmp_path / "rgb.mhd").write_text("ObjectType = Image\nNDims = 2\nDimSize = 4 4\nElementType = MET_UCHAR_ARRAY\n"
                                      "ElementNumberOfChannels = 3\nElementDataFile = rgb.raw\n")
    (tmp_path / "rgb.raw").write_bytes(b"\0" * 48)
    found = discover(tmp_path)
    assert sorted(scan.id for scan in found.scans) == ["good.mha", "spoilt.mha"]
    reasons = {skip.file.name: skip.reason for skip in found.skipped}
    assert "truncated MetaImage" in reasons["short.mhd"] and "1,680 of the 3,360 bytes" in reasons["short.mhd"]
    assert reasons["cut.mha"].startswith("truncated MetaImage: 40 of the ")
    assert reasons["lost.mhd"] == "its data file lost.raw (ElementDataFile) is not beside it"
    assert reasons["notes.mha"].startswith("not a DICOM, MetaImage, NIfTI, PNG or JPEG file")
    assert "3 values per voxel" in reasons["rgb.mhd"]
    assert reasons["short.raw"] == reasons["rgb.raw"].replace("rgb", "short") == (
        "the data file of short.mhd, which is not read (its own line says why)")
    spoilt = next(scan for scan in found.scans if scan.id == "spoilt.mha")
    from perceiver_med.errors import ScanError

    with pytest.raises(ScanError, match="corrupt MetaImage data"):
        read_scan(spoilt)
    assert_is_the_anatomy(read_scan(next(scan for scan in found.scans if scan.id == "good.mha")))


def test_a_metaimage_over_the_voxel_budget_is_skipped_before_decoding(tmp_path):
    write_by_sitk(tmp_path / "v.mha", STORAGE["display-order"])
    with voxel_budget(SHAPE[0] * SHAPE[1] * SHAPE[2] - 1):
        found = discover(tmp_path)
    assert not found.scans and "over the budget" in found.skipped[0].reason


def test_the_modality_a_header_gives_is_the_scans(tmp_path):
    write_by_hand(tmp_path / "ct.mhd", STORAGE["display-order"])
    text = (tmp_path / "ct.mhd").read_text().replace("NDims = 3", "NDims = 3\nModality = MET_MOD_CT")
    (tmp_path / "ct.mhd").write_text(text)
    write_by_hand(tmp_path / "plain.mha", STORAGE["display-order"])
    scans = {scan.id: scan for scan in discover(tmp_path).scans}
    assert (scans["ct.mhd"].modality, scans["plain.mha"].modality) == ("CT", "")
    assert read_scan(scans["ct.mhd"]).modality == "CT"


def test_a_cached_input_of_a_mhd_scan_follows_its_data_file(tmp_path):
    """The cache key covers the data file a header names: new voxels in the .raw are never served from the cache."""
    from perceiver_med.inputs.cache import cache_key
    from perceiver_med.inputs.preprocess import PreprocessConfig
    from perceiver_med.inputs.samples import Sample

    write_by_hand(tmp_path / "v.mhd", STORAGE["display-order"])
    sample, config = Sample(tmp_path / "v.mhd"), PreprocessConfig(input="grid", size=8)
    before = cache_key(sample, config)
    raw = bytearray((tmp_path / "v.raw").read_bytes())
    raw[:2] = b"\x00\x10"  # the same size, another first voxel
    (tmp_path / "v.raw").write_bytes(bytes(raw))
    assert cache_key(sample, config) != before
