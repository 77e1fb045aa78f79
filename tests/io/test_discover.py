import nibabel as nib
import numpy as np

from perceiver_med.io import discover, read_scan
from perceiver_med.io.orientation import from_display
from perceiver_med.preprocess import PreprocessConfig, make_grid
from tests.conftest import index_volume, write_series


def test_shuffled_series_with_opaque_names_is_one_volume_in_slice_order(tmp_path):
    volume = index_volume(slices=12)
    rng = np.random.default_rng(0)
    write_series(tmp_path / "ct", volume, order=rng.permutation(12))
    found = discover(tmp_path)
    assert len(found.scans) == 1 and not found.skipped
    scan = found.scans[0]
    assert scan.kind == "volume" and scan.shape == (12, 16, 16) and scan.ordering == "position"
    array, meta = read_scan(scan)
    np.testing.assert_allclose(array[:, 0, 0], volume[:, 0, 0])
    assert meta["spacing"][0] == 2.0


def test_series_stacked_along_the_normal_not_by_file_name(tmp_path):
    volume = index_volume(slices=10)
    # z runs downwards (feet first): the volume still comes out inferior -> superior
    write_series(tmp_path / "ct", volume[::-1].copy(), spacing=-3.0)
    array, _ = read_scan(discover(tmp_path).scans[0])
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
    array, _ = read_scan(scan)
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
    assert "not a DICOM, NIfTI, PNG or JPEG" in reasons["notes.txt"]
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
    a, _ = read_scan(scans["a.nii.gz"])
    b, _ = read_scan(scans["b.nii"])
    np.testing.assert_array_equal(a, display)
    np.testing.assert_array_equal(b, display)


def test_dicom_series_and_nifti_of_one_volume_give_the_same_grid(tmp_path):
    volume = index_volume(slices=13, rows=20, cols=24)
    volume[:, 2:5, 3:9] = 300  # an asymmetric mark: rows and columns must agree too
    write_series(tmp_path / "dicom", volume, order=np.random.default_rng(1).permutation(13))
    _nifti(tmp_path / "vol.nii.gz", volume)
    config = PreprocessConfig(input="grid", size=16)
    grids = [make_grid(read_scan(scan)[0], config) for scan in discover(tmp_path).scans]
    assert len(grids) == 2
    np.testing.assert_allclose(grids[0], grids[1], atol=1e-5)


def test_4d_nifti_uses_the_first_volume_with_a_warning(tmp_path):
    data = np.stack([np.full((4, 5, 9), v, np.float32) for v in (1, 2)], axis=-1)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "fmri.nii.gz")
    scan = discover(tmp_path).scans[0]
    array, meta = read_scan(scan)
    assert array.shape == (9, 5, 4) and np.all(array == 1)
    assert any("4D" in w for w in meta["warnings"])
