import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from perceiver_med.errors import ScanError, UserError
from perceiver_med.io import discover, read_scan
from perceiver_med.io.limits import DEFAULT_MAX_VOXELS, max_voxels, parse_max_voxels, set_max_voxels, voxel_budget
from perceiver_med.io.orientation import from_display
from perceiver_med.inputs.arrays import make_grid
from perceiver_med.inputs.preprocess import PreprocessConfig
from tests.conftest import index_volume, write_series


def test_shuffled_series_with_opaque_names_is_one_volume_in_slice_order(tmp_path):
    volume = index_volume(slices=12)
    rng = np.random.default_rng(0)
    write_series(tmp_path / "ct", volume, order=rng.permutation(12))
    found = discover(tmp_path)
    assert len(found.scans) == 1 and not found.skipped
    scan = found.scans[0]
    assert scan.kind == "volume" and scan.shape == (12, 16, 16) and scan.ordering == "position"
    image = read_scan(scan)
    np.testing.assert_allclose(image.voxels[:, 0, 0], volume[:, 0, 0])
    assert image.spacing[0] == 2.0


def test_series_stacked_along_the_normal_not_by_file_name(tmp_path):
    volume = index_volume(slices=10)
    # z runs downwards (feet first): the volume still comes out inferior -> superior
    write_series(tmp_path / "ct", volume[::-1].copy(), spacing=-3.0)
    array = read_scan(discover(tmp_path).scans[0]).voxels
    np.testing.assert_allclose(array[:, 0, 0], volume[:, 0, 0])


def test_two_series_in_one_folder_are_two_scans(tmp_path):
    uid_a = write_series(tmp_path / "mixed", index_volume(slices=9), name=lambda k: f"a{k}")
    uid_b = write_series(tmp_path / "mixed", index_volume(slices=11), name=lambda k: f"b{k}")
    found = discover(tmp_path)
    assert sorted((s.series_uid, s.shape[0]) for s in found.scans) == sorted([(uid_a, 9), (uid_b, 11)])
    assert all(s.id.endswith(s.series_uid) for s in found.scans)


def test_identical_positions_are_not_stacked(tmp_path):
    write_series(tmp_path / "dup", index_volume(slices=3), spacing=0.0)
    found = discover(tmp_path)
    assert [s.kind for s in found.scans] == ["image"] * 3
    assert "not stacked" in found.scans[0].warnings[0]


def test_missing_positions_fall_back_to_instance_number_with_a_warning(tmp_path):
    volume = index_volume(slices=9)
    write_series(tmp_path / "nopos", volume, order=[3, 1, 4, 0, 5, 8, 2, 6, 7], positions=False)
    scan = discover(tmp_path).scans[0]
    assert scan.ordering == "instance" and "InstanceNumber" in scan.warnings[0]
    array = read_scan(scan).voxels
    np.testing.assert_allclose(array[:, 0, 0], volume[:, 0, 0])


def test_bad_files_are_skipped_with_reasons_and_good_ones_kept(tmp_path):
    write_series(tmp_path / "ct", index_volume(slices=9))
    (tmp_path / "notes.txt").write_text("not a scan")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "broken.nii.gz").write_bytes(b"garbage")
    found = discover(tmp_path)
    assert len(found.scans) == 1
    reasons = {s.file.name: s.reason for s in found.skipped}
    assert set(reasons) == {"notes.txt", "broken.png", "broken.nii.gz"}
    assert "not a DICOM, MetaImage, NIfTI, PNG or JPEG" in reasons["notes.txt"]
    rows = found.records()
    assert {r["status"] for r in rows} == {"ok", "skipped"} and len(rows) == 12


def _nifti(path, display, flip_x=False):
    data, affine = from_display(display, (2.0, 0.8, 0.8))
    if flip_x:  # same anatomy, stored with the first voxel axis reversed and a negative x step
        data = data[::-1].copy()
        affine = affine.copy()
        affine[0, 3] = affine[0, 0] * (data.shape[0] - 1)
        affine[0, 0] *= -1
    nib.save(nib.Nifti1Image(data, affine), path)


def test_nifti_with_a_flipped_affine_gives_the_same_array(tmp_path):
    display = np.random.default_rng(0).normal(size=(10, 12, 14)).astype(np.float32)
    _nifti(tmp_path / "a.nii.gz", display)
    _nifti(tmp_path / "b.nii", display, flip_x=True)
    scans = {s.id: s for s in discover(tmp_path).scans}
    a = read_scan(scans["a.nii.gz"]).voxels
    b = read_scan(scans["b.nii"]).voxels
    np.testing.assert_array_equal(a, display)
    np.testing.assert_array_equal(b, display)


def test_dicom_series_and_nifti_of_one_volume_give_the_same_grid(tmp_path):
    volume = index_volume(slices=13, rows=20, cols=24)
    volume[:, 2:5, 3:9] = 300  # an asymmetric mark: rows and columns must agree too
    write_series(tmp_path / "dicom", volume, order=np.random.default_rng(1).permutation(13))
    _nifti(tmp_path / "vol.nii.gz", volume)
    config = PreprocessConfig(input="grid", size=16)
    grids = [make_grid(read_scan(scan).voxels, config) for scan in discover(tmp_path).scans]
    assert len(grids) == 2
    np.testing.assert_allclose(grids[0], grids[1], atol=1e-5)


def test_4d_nifti_uses_the_first_volume_with_a_warning(tmp_path):
    data = np.stack([np.full((4, 5, 9), v, np.float32) for v in (1, 2)], axis=-1)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "fmri.nii.gz")
    scan = discover(tmp_path).scans[0]
    image = read_scan(scan)
    assert image.voxels.shape == (9, 5, 4) and np.all(image.voxels == 1)
    assert any("4D" in w for w in image.warnings)


# ---------------------------------------------------------------- one bad slice, named; the series read without it


def _truncate(path, by=100):
    data = path.read_bytes()
    path.write_bytes(data[:-by])


def test_a_series_with_a_truncated_slice_is_read_from_the_other_slices(tmp_path):
    volume = index_volume(slices=24)
    write_series(tmp_path / "ct", volume, name=lambda k: f"{k % 7919:04d}.dcm")
    _truncate(tmp_path / "ct" / "0007.dcm")
    found = discover(tmp_path)
    assert len(found.scans) == 1
    scan = found.scans[0]
    assert scan.kind == "volume" and scan.shape == (23, 16, 16) and len(scan.files) == 23
    assert scan.warnings[0] == ("slice 0007.dcm is left out (truncated pixel data: the file holds 412 of the 512 "
                                "bytes that Rows, Columns, frames, samples and BitsAllocated declare): the series "
                                "is read from the other 23 slices.")
    [skip] = found.skipped
    assert skip.file.name == "0007.dcm"
    assert skip.reason.startswith("truncated pixel data: the file holds 412 of the 512 bytes")
    assert skip.reason.endswith("the rest of its series (ct/" + scan.series_uid + ") is read without this slice.")
    rows = {row["file"]: row for row in found.records()}
    assert rows["ct/0007.dcm"]["status"] == "skipped" and rows["ct/0008.dcm"]["shape"] == "23x16x16"
    image = read_scan(scan)  # what inspect said is what is read
    assert image.voxels.shape == scan.shape
    np.testing.assert_allclose(image.voxels[:, 0, 0], np.delete(volume[:, 0, 0], 7))
    assert any("uneven slice spacing" in w for w in image.warnings)


def test_a_series_mostly_unreadable_is_skipped_saying_why_for_every_file(tmp_path):
    write_series(tmp_path / "ct", index_volume(slices=5), name=lambda k: f"{k % 7919:04d}.dcm")
    for k in (0, 1, 2):
        _truncate(tmp_path / "ct" / f"{k:04d}.dcm")
    found = discover(tmp_path)
    assert not found.scans and len(found.skipped) == 5
    reasons = {s.file.name: s.reason for s in found.skipped}
    assert reasons["0000.dcm"].startswith("truncated pixel data")
    assert reasons["0004.dcm"].startswith("its series is skipped: 3 of its 5 slices are unreadable (first 0000.dcm")


def test_a_slice_that_fails_only_when_decoded_names_the_file(tmp_path):
    write_series(tmp_path / "ct", index_volume(slices=10), name=lambda k: f"{k % 7919:04d}.dcm")
    scan = discover(tmp_path).scans[0]
    (tmp_path / "ct" / "0003.dcm").unlink()  # gone between discovery and reading
    with pytest.raises(ScanError, match=r"^0003\.dcm: vanished before it could be read$"):
        read_scan(scan)


# ---------------------------------------------------------------- one convention: (slices, rows, cols)


def test_dicom_and_nifti_of_one_volume_report_the_same_shape_and_spacing(tmp_path):
    volume = index_volume(slices=13, rows=20, cols=24)
    write_series(tmp_path / "dicom", volume)
    _nifti(tmp_path / "vol.nii.gz", volume)
    scans = {s.format: s for s in discover(tmp_path).scans}
    assert scans["dicom"].shape == scans["nifti"].shape == (13, 20, 24)
    assert scans["dicom"].spacing == pytest.approx(scans["nifti"].spacing) == (2.0, 0.8, 0.8)
    for scan in scans.values():
        image = read_scan(scan)
        assert image.voxels.shape == scan.shape and image.spacing == scan.spacing


def _sagittal_series(folder, volume):
    """The display volume (slices=z, rows=y, cols=x) written as sagittal DICOM slices (one per x)."""
    from pydicom.uid import generate_uid

    from tests.conftest import ct_slice

    folder.mkdir(parents=True)
    uid = generate_uid()
    slices, rows, cols = volume.shape  # display voxel (k, r, c) sits at LPS (-(cols-1-c)*0.8, -(rows-1-r)*0.8, 2k)
    # sagittal: image rows run head -> foot (-S), image columns anterior -> posterior (+P), one image per c
    for n, c in enumerate(np.random.default_rng(2).permutation(cols)):
        plane = volume[::-1, :, c]  # (image rows = k from the top, image columns = r)
        ds = ct_slice(plane, None, uid, instance=int(c) + 1, orientation=(0, 1, 0, 0, 0, -1))
        ds.ImagePositionPatient = [-(cols - 1 - float(c)) * 0.8, -(rows - 1) * 0.8, (slices - 1) * 2.0]
        ds.PixelSpacing = [2.0, 0.8]
        ds.save_as(folder / f"s{n:03d}", enforce_file_format=True)


def test_a_sagittal_series_reports_its_display_shape_and_reads_only_what_a_grid_needs(tmp_path):
    from perceiver_med.inputs.preprocess import model_input, scan_input

    rng = np.random.default_rng(0)
    volume = np.round(rng.normal(size=(12, 10, 14)) * 100).astype(np.float32)
    _sagittal_series(tmp_path / "sag", volume)
    _nifti(tmp_path / "same.nii.gz", volume)
    scans = {s.format: s for s in discover(tmp_path).scans}
    sagittal = scans["dicom"]
    assert sagittal.shape == (12, 10, 14)
    array = read_scan(sagittal).voxels
    assert array.shape == sagittal.shape
    reference = read_scan(scans["nifti"]).voxels
    np.testing.assert_array_equal(array, reference)
    for config in (PreprocessConfig(input="grid", size=8, window=None), PreprocessConfig(input="image", size=8)):
        for scan in scans.values():
            whole = read_scan(scan)
            np.testing.assert_array_equal(scan_input(scan, config), model_input(whole, config))


@pytest.mark.parametrize("codes", ["RAS", "LPI", "ASR", "SPL", "IRA"])
def test_nifti_read_slice_by_slice_equals_the_whole_volume_in_any_storage_orientation(tmp_path, codes):
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

    from perceiver_med.inputs.preprocess import model_input, scan_input

    rng = np.random.default_rng(1)
    ras = rng.normal(size=(11, 13, 15)).astype(np.float32)
    transform = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(codes)))
    data = apply_orientation(ras, transform)
    affine = np.diag([0.9, 1.1, 2.0, 1.0]) @ inv_ornt_aff(transform, ras.shape)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "v.nii")
    scan = discover(tmp_path).scans[0]
    whole = read_scan(scan)
    assert whole.voxels.shape == scan.shape == (15, 13, 11)
    for config in (PreprocessConfig(input="grid", size=8, window=None), PreprocessConfig(input="image", size=8)):
        np.testing.assert_array_equal(scan_input(scan, config), model_input(whole, config))


def test_nifti_scaling_is_applied_once(tmp_path):
    image = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4))
    image.header.set_slope_inter(2.0, 10.0)
    nib.save(image, tmp_path / "s.nii")
    array = read_scan(discover(tmp_path).scans[0]).voxels
    assert array.min() == 10.0 and array.max() == 23 * 2 + 10


def test_a_single_coronal_nifti_slice_is_a_2d_image_with_superior_at_the_top(tmp_path):
    data = np.zeros((6, 1, 5), np.float32)  # x (R), y (A) a single coronal plane, z (S)
    data[:, 0, 4] = 7  # the most superior row
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "coronal.nii")
    scan = discover(tmp_path).scans[0]
    array = read_scan(scan).voxels
    assert scan.kind == "image" and array.shape == scan.shape == (5, 6)
    assert np.all(array[0] == 7) and not array[1:].any()


def test_a_cifti_file_is_skipped_with_a_reason(tmp_path):
    source = Path(nib.__file__).parent / "tests" / "data" / "row_major.dconn.nii"
    shutil.copyfile(source, tmp_path / "row_major.dconn.nii")
    write_series(tmp_path / "ct", index_volume(slices=9))
    found = discover(tmp_path)
    assert len(found.scans) == 1
    assert found.skipped[0].reason == "a CIFTI-2 file: brain surface or connectivity data, not an image volume"


# ---------------------------------------------------------------- the voxel budget


def test_scans_over_the_voxel_budget_are_skipped_from_their_headers(tmp_path):
    write_series(tmp_path / "long", index_volume(slices=11))  # 2816 voxels
    write_series(tmp_path / "short", index_volume(slices=9))
    header = nib.Nifti1Header()
    header.set_data_shape((32767, 32767, 32767))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    (tmp_path / "claims.nii").write_bytes(header.binaryblock + bytes(4))
    with voxel_budget(16 * 16 * 10):
        found = discover(tmp_path)
    assert [s.shape for s in found.scans] == [(9, 16, 16)]
    reasons = {s.file.name: s.reason for s in found.skipped}
    assert "32767x32767x32767" in reasons["claims.nii"] and "set PERCEIVER_MED_MAX_VOXELS" in reasons["claims.nii"]
    long_reasons = {r for name, r in reasons.items() if name != "claims.nii"}
    assert len(long_reasons) == 1 and "series of 11 slices, 11x16x16: 2,816 voxels, over the budget of 2,560" \
        in long_reasons.pop()


def test_a_png_bomb_is_refused_from_its_header(tmp_path):
    from tests.test_hostile_files import png_claiming

    png_claiming(tmp_path / "claims.png", 20000, 20000)
    found = discover(tmp_path)
    assert not found.scans and "20000x20000" in found.skipped[0].reason


def test_a_truncated_png_is_found_by_inspect_and_odd_png_modes_read_as_grey(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).save(tmp_path / "cut.png")
    _truncate(tmp_path / "cut.png", 30)
    Image.fromarray(rng.integers(0, 255, (20, 10, 2), dtype=np.uint8), mode="LA").save(tmp_path / "la.png")
    found = discover(tmp_path)
    assert [s.file.name for s in found.skipped] == ["cut.png"] and "truncated PNG" in found.skipped[0].reason
    for scan in found.scans:
        array = read_scan(scan).voxels
        assert array.shape == scan.shape == (20, 10)


def test_a_malformed_budget_is_a_usage_error():
    for text in ("-5", "lots", "1.5"):
        with pytest.raises(UserError, match="PERCEIVER_MED_MAX_VOXELS"):
            parse_max_voxels(text)
    assert parse_max_voxels("1_000") == parse_max_voxels("1e3") == 1000 and parse_max_voxels(" ") is None
    with pytest.raises(ValueError):
        set_max_voxels(0)


def test_the_library_reads_its_budget_from_the_caller_never_from_the_environment(tmp_path, monkeypatch):
    """PERCEIVER_MED_MAX_VOXELS is the command line's default for --max-voxels; a library caller gives the
    budget itself (voxel_budget), and the block's end restores the one before."""
    write_series(tmp_path / "ct", index_volume(slices=9))  # 9 x 16 x 16 = 2,304 voxels
    monkeypatch.setenv("PERCEIVER_MED_MAX_VOXELS", "100")
    assert len(discover(tmp_path).scans) == 1
    with voxel_budget(2000):
        assert not discover(tmp_path).scans
        with voxel_budget(None):  # None: the budget stays as it is
            assert max_voxels() == 2000
    assert max_voxels() == DEFAULT_MAX_VOXELS and len(discover(tmp_path).scans) == 1


# ---------------------------------------------------------------- what is not a regular file


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_only_regular_files_are_read_and_the_rest_is_reported(tmp_path):
    import signal

    def hung(*_):
        raise TimeoutError("discover waited on the named pipe")

    signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    write_series(tmp_path / "ct", index_volume(slices=9))
    os.mkfifo(tmp_path / "pipe")
    os.symlink(tmp_path / "loop2", tmp_path / "loop1")
    os.symlink(tmp_path / "loop1", tmp_path / "loop2")
    os.symlink(tmp_path / "nowhere.nii", tmp_path / "broken.nii")
    os.symlink(tmp_path / "ct", tmp_path / "linked_folder")
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.eye(4)), tmp_path / "elsewhere.nii")
    os.symlink(tmp_path / "elsewhere.nii", tmp_path / "linked_file.nii")
    try:
        found = discover(tmp_path)  # a named pipe opened for reading would block here
    finally:
        signal.alarm(0)
    reasons = {s.file.name: s.reason for s in found.skipped}
    assert reasons == {
        "pipe": "not a regular file (named pipe)",
        "loop1": "a symbolic link loop: it never reaches a file",
        "loop2": "a symbolic link loop: it never reaches a file",
        "broken.nii": "a broken symbolic link: its target does not exist",
        "linked_folder": "a symbolic link to a folder: not followed (pass the folder itself to read it)",
    }
    assert sorted(s.id for s in found.scans)[1:] == ["elsewhere.nii", "linked_file.nii"]  # a linked file is read


def test_a_file_vanishing_between_listing_and_reading_is_a_skip(tmp_path, monkeypatch):
    import importlib

    discover_module = importlib.import_module("perceiver_med.io.discover")
    write_series(tmp_path / "ct", index_volume(slices=9))
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), tmp_path / "gone.nii.gz")
    (tmp_path / "gone.png").write_bytes(b"")
    listed = discover_module.list_files

    def list_then_delete(root):
        result = listed(root)
        (tmp_path / "gone.nii.gz").unlink()
        (tmp_path / "gone.png").unlink()
        return result

    monkeypatch.setattr(discover_module, "list_files", list_then_delete)
    found = discover(tmp_path)
    assert {s.file.name: s.reason for s in found.skipped} == {
        "gone.nii.gz": "vanished before it could be read", "gone.png": "vanished before it could be read"}
    assert len(found.scans) == 1


def test_an_unreadable_folder_is_reported_not_dropped(tmp_path):
    write_series(tmp_path / "ct", index_volume(slices=9))
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "scan.png").write_bytes(b"")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as root: chmod 000 does not stop this user from reading the folder")
        found = discover(tmp_path)
    finally:
        locked.chmod(0o755)
    assert [(s.file.name, s.reason) for s in found.skipped] == [("locked", "folder not read: permission denied")]
    assert len(found.scans) == 1


def test_an_odd_sized_slice_or_a_copy_of_a_slice_does_not_break_its_series_into_images(tmp_path):
    from tests.conftest import ct_slice

    uid = write_series(tmp_path / "ct", index_volume(slices=10), name=lambda k: f"{k % 7919:04d}.dcm")
    ct_slice(np.zeros((8, 8)), 40.0, uid, instance=99).save_as(tmp_path / "ct" / "odd.dcm", enforce_file_format=True)
    shutil.copyfile(tmp_path / "ct" / "0003.dcm", tmp_path / "ct" / "copy_of_0003.dcm")
    found = discover(tmp_path)
    assert [s.shape for s in found.scans] == [(10, 16, 16)]
    reasons = {s.file.name: s.reason for s in found.skipped}
    assert reasons["copy_of_0003.dcm"] == "the same image as 0003.dcm (same SOPInstanceUID), which is read instead"
    assert reasons["odd.dcm"].startswith("8x8 pixels, unlike the 16x16 of the rest of its series; the rest of")
    assert "slice odd.dcm is left out (8x8 pixels" in found.scans[0].warnings[0]


def test_a_folder_that_cannot_be_listed_is_reported_even_when_running_as_root(tmp_path, monkeypatch):
    import errno

    write_series(tmp_path / "ct", index_volume(slices=9))
    (tmp_path / "locked").mkdir()
    scandir = os.scandir

    def refusing(path="."):
        if os.fspath(path) == str(tmp_path / "locked"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)  # what chmod 000 does to a user other than root
    found = discover(tmp_path)
    assert [(s.file.name, s.reason) for s in found.skipped] == [("locked", "folder not read: permission denied")]
    assert len(found.scans) == 1
    with pytest.raises(UserError, match="permission denied"):
        discover(tmp_path / "locked")
