"""Segmentation masks -> points: one point per connected component, at its centroid in LPS mm.

Oracles: spheres drawn at known voxel centres of scans whose geometry the test writes by hand (a DICOM series,
a NIfTI stored in a permuted and flipped order with its mask stored in another), so each centre's LPS point is
known without the reader; the sphere's volume for its diameter; the nodule-points phantom, whose masks and
points.csv come from one drawing; hand-broken masks for the skips.
"""
import csv
import math
import shutil

import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread

from perceiver_med.workflows.folders import split_folder
from perceiver_med.errors import UserError
from perceiver_med.io import discover, read_scan
from perceiver_med.io.orientation import LPS_FROM_RAS
from perceiver_med.inputs.masks import components, grid_mismatch, parse_mask_labels, points_from_masks
from perceiver_med.inputs.splits import read_splits
from perceiver_med.synth.nodules import write_points
from tests.conftest import write_series
from tests.io.test_geometry import _stored, _stored_to_display

SERIES_SHAPE = (10, 28, 30)  # slices, rows, cols of the DICOM series
PIXEL, STEP = 0.8, 2.0  # conftest's ct_slice: PixelSpacing 0.8, axial, first pixel at x = y = -100
SPHERES = {1: ((3, 8, 7), 3.0), 2: ((6, 18, 20), 4.5)}  # label value: (voxel centre (slice, row, col), radius mm)


def series_lps(index):
    """LPS mm of a voxel of the series, from what was written: x along columns, y along rows, z = slice * step."""
    k, r, c = index
    return np.array([-100.0 + c * PIXEL, -100.0 + r * PIXEL, k * STEP])


def draw_spheres(shape, spacing, spheres=SPHERES) -> np.ndarray:
    """Label map (display index order): each value a ball of its radius (mm) about its voxel centre."""
    grid = np.indices(shape).astype(float)
    labels = np.zeros(shape, np.uint8)
    for value, (centre, radius) in spheres.items():
        distance = np.sqrt(sum(((grid[a] - centre[a]) * spacing[a]) ** 2 for a in range(3)))
        labels[distance <= radius] = value
    return labels


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def point_of(row):
    return np.array([float(row[c]) for c in ("coordX", "coordY", "coordZ")])


@pytest.fixture
def series(tmp_path):
    """A DICOM series of one patient (scans/P1/) and a NIfTI label map of two spheres on its grid (masks/P1.nii.gz),
    stored as NIfTI usually is: (column, row, slice), RAS."""
    uid = write_series(tmp_path / "scans" / "P1", np.full(SERIES_SHAPE, -800.0, np.float32), spacing=STEP,
                       patient_id="PAT-1")
    labels = draw_spheres(SERIES_SHAPE, (STEP, PIXEL, PIXEL))
    lps = np.array([[PIXEL, 0, 0, -100.0], [0, PIXEL, 0, -100.0], [0, 0, STEP, 0.0], [0, 0, 0, 1]])
    (tmp_path / "masks").mkdir()
    nib.save(nib.Nifti1Image(labels.transpose(2, 1, 0), LPS_FROM_RAS @ lps), tmp_path / "masks" / "P1.nii.gz")
    return tmp_path, uid, labels


def test_spheres_in_a_dicom_series_give_their_lps_centres_and_diameters(series):
    root, uid, labels = series
    result = points_from_masks(root / "masks", root / "scans", root / "points.csv", "1=benign,2=malignant")
    rows = read_rows(root / "points.csv")
    assert [r["seriesuid"] for r in rows] == [uid, uid] and [r["label"] for r in rows] == ["benign", "malignant"]
    assert [r["patient_id"] for r in rows] == ["PAT-1", "PAT-1"] and result.label_source.startswith("--mask-labels")
    image = read_scan(discover(root / "scans").scans[0])
    voxel_mm3 = PIXEL * PIXEL * STEP
    for row, (value, (centre, radius)) in zip(rows, SPHERES.items()):
        # a ball about a voxel centre is symmetric there: its centroid is that centre, in the reader's terms too
        np.testing.assert_allclose(point_of(row), series_lps(centre), atol=1e-4)
        np.testing.assert_allclose(image.to_patient(centre), series_lps(centre), atol=1e-4)
        voxels = int((labels == value).sum())
        assert int(row["voxels"]) == voxels and int(row["mask_value"]) == value
        assert float(row["diameter_mm"]) == pytest.approx((6 * voxels * voxel_mm3 / math.pi) ** (1 / 3), abs=1e-3)
        # the equal-volume diameter is the ball's own, within what voxels of 0.8 x 0.8 x 2 mm can draw
        assert float(row["diameter_mm"]) == pytest.approx(2 * radius, rel=0.06)
    only = points_from_masks(root / "masks", root / "scans", root / "two.csv", "2=malignant")
    assert [r["mask_value"] for r in read_rows(root / "two.csv")] == ["2"]  # values not named are left out
    assert any("label values 1 are not in --mask-labels" in note for note in only.notes)


def test_a_dicom_seg_covering_only_its_slices_gives_the_same_points(series):
    import highdicom
    from pydicom.sr.codedict import codes

    root, uid, labels = series
    sources = sorted((dcmread(p) for p in (root / "scans" / "P1").iterdir()), key=lambda d: d.ImagePositionPatient[2])
    for ds in sources:  # what a PACS series carries and conftest's minimal slices leave out
        ds.FrameOfReferenceUID, ds.SliceThickness = "1.2.3.4.5", STEP
        for name in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
                     "ReferringPhysicianName"):
            setattr(ds, name, "")
    descriptions = [highdicom.seg.SegmentDescription(
        segment_number=n, segment_label=f"nodule {n}",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Nodule, algorithm_type=highdicom.seg.SegmentAlgorithmTypeValues.MANUAL)
        for n in (1, 2)]
    seg = highdicom.seg.Segmentation(
        source_images=sources, pixel_array=np.stack([labels == 1, labels == 2], axis=-1).astype(np.uint8),
        segmentation_type=highdicom.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=highdicom.UID(), series_number=9, sop_instance_uid=highdicom.UID(), instance_number=1,
        manufacturer="test", manufacturer_model_name="test", software_versions="0", device_serial_number="0")
    shutil.rmtree(root / "masks")
    (root / "seg").mkdir()
    seg.save_as(root / "seg" / "anything.dcm")  # named by nothing: a SEG names the series it segments
    assert seg.NumberOfFrames < 2 * SERIES_SHAPE[0]  # the empty slices are not stored
    result = points_from_masks(root / "seg", root / "scans", root / "points.csv")
    rows = read_rows(root / "points.csv")
    assert not result.skipped and [r["seriesuid"] for r in rows] == [uid, uid]
    for row, (value, (centre, _)) in zip(rows, SPHERES.items()):
        assert int(row["mask_value"]) == value and int(row["voxels"]) == int((labels == value).sum())
        np.testing.assert_allclose(point_of(row), series_lps(centre), atol=1e-4)
    # a TCIA download keeps the SEG series beside its CT: MASKS may then be the scans folder itself
    (root / "seg" / "anything.dcm").replace(root / "scans" / "P1-seg.dcm")
    result = points_from_masks(root / "scans", root / "scans", root / "beside.csv")
    assert [item.mask.name for item in result.scans] == ["P1-seg.dcm"] and not result.skipped
    assert read_rows(root / "beside.csv") == rows


# A NIfTI scan: display (slice, row, col) -> LPS, oblique-free but with unequal spacings and an offset origin
SHAPE, SPACING, ORIGIN = (9, 16, 20), (2.5, 0.75, 0.7), np.array([-30.0, 12.0, -210.0])
DISPLAY = np.eye(4)
DISPLAY[:3, :3] = [[0, 0, SPACING[2]], [0, SPACING[1], 0], [SPACING[0], 0, 0]]
DISPLAY[:3, 3] = ORIGIN
SCAN_AXES = [(2, -1), (0, 1), (1, -1)]  # stored axis n runs along display axis a, + or - (test_geometry's notation)
MASK_AXES = [(1, 1), (2, -1), (0, -1)]  # the mask in yet another order: the same grid all the same
NIFTI_SPHERES = {1: ((3, 5, 6), 2.5), 3: ((6, 11, 14), 3.0)}


def write_nifti(path, display_volume, axes, affine=DISPLAY, dtype=None):
    ras = LPS_FROM_RAS @ affine @ _stored_to_display(axes, display_volume.shape)
    stored = _stored(display_volume, axes)
    nib.save(nib.Nifti1Image(stored.astype(dtype or stored.dtype), ras), path)


def test_a_permuted_flipped_nifti_and_its_differently_stored_mask_give_the_known_points(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    write_nifti(tmp_path / "imagesTr" / "lung_001_0000.nii.gz", np.zeros(SHAPE, np.float32) - 700, SCAN_AXES)
    labels = draw_spheres(SHAPE, SPACING, NIFTI_SPHERES)
    write_nifti(tmp_path / "labelsTr" / "lung_001.nii.gz", labels, MASK_AXES, dtype=np.float32)  # nnU-Net's names
    points_from_masks(tmp_path / "labelsTr", tmp_path / "imagesTr", tmp_path / "out" / "points.csv")
    rows = read_rows(tmp_path / "out" / "points.csv")
    image = read_scan(discover(tmp_path / "imagesTr").scans[0])
    assert [r["path"] for r in rows] == ["../imagesTr/lung_001_0000.nii.gz"] * 2  # relative to the CSV
    assert [r["patient_id"] for r in rows] == ["lung_001"] * 2  # the case, without nnU-Net's channel suffix
    assert [r["label"] for r in rows] == ["", ""]  # no --mask-labels, no class folders
    for row, (value, (centre, _)) in zip(rows, NIFTI_SPHERES.items()):
        known = ORIGIN + DISPLAY[:3, :3] @ centre
        np.testing.assert_allclose(point_of(row), known, atol=1e-3)  # NIfTI headers hold float32
        np.testing.assert_allclose(image.to_patient(centre), known, atol=1e-3)
        assert int(row["mask_value"]) == value


def test_masks_off_their_scans_grid_or_without_a_scan_are_skipped_with_the_reason(tmp_path):
    scans, masks = tmp_path / "scans", tmp_path / "masks"
    scans.mkdir()
    masks.mkdir()
    for name in ("good", "short", "shifted", "coarse"):
        write_nifti(scans / f"{name}.nii.gz", np.zeros(SHAPE, np.int16), SCAN_AXES)
    labels = draw_spheres(SHAPE, SPACING, NIFTI_SPHERES)
    write_nifti(masks / "good_seg.nii.gz", labels, MASK_AXES)
    write_nifti(masks / "short_mask.nii.gz", labels[:-1], MASK_AXES)  # one slice fewer
    shifted = DISPLAY.copy()
    shifted[:3, 3] += DISPLAY[:3, 2] / 2  # half a column over
    write_nifti(masks / "shifted.nii.gz", labels, MASK_AXES, affine=shifted)
    coarse = DISPLAY.copy()
    coarse[:3, :3] *= 2  # resampled to twice the spacing
    write_nifti(masks / "coarse.nii.gz", labels[:, ::2, ::2], MASK_AXES, affine=coarse)
    write_nifti(masks / "stranger.nii.gz", labels, MASK_AXES)
    (masks / "notes.txt").write_text("not a mask")
    result = points_from_masks(masks, scans, tmp_path / "points.csv")
    assert [item.mask.name for item in result.scans] == ["good_seg.nii.gz"]
    assert len(read_rows(tmp_path / "points.csv")) == len(NIFTI_SPHERES)
    reasons = {skip.file.name: skip.reason for skip in result.skipped}
    assert "not the whole scan" in reasons["short_mask.nii.gz"] and "8x16x20" in reasons["short_mask.nii.gz"]
    assert "0.5 voxel off the scan's grid" in reasons["shifted.nii.gz"]
    assert "voxel axes are not the scan's" in reasons["coarse.nii.gz"]
    assert "no scan named stranger" in reasons["stranger.nii.gz"]
    assert "not a NIfTI label map or a DICOM SEG" in reasons["notes.txt"]


def test_components_are_26_connected_within_each_value():
    labels = np.zeros((5, 5, 5), np.uint8)
    labels[1, 1, 1] = labels[2, 2, 2] = 1  # touching by a corner only: one lesion
    labels[1, 1, 4] = 1  # two voxels away: another
    labels[3, 3, 3] = 2  # a corner neighbour of another value: its own lesion
    found = components(labels, np.diag([2.0, 1.0, 1.0, 1.0]))
    assert [(c.value, c.voxels) for c in found] == [(1, 2), (1, 1), (2, 1)]
    assert found[0].centre == (3.0, 1.5, 1.5) and found[2].centre == (6.0, 3.0, 3.0)
    assert found[0].diameter_mm == pytest.approx((6 * 4.0 / math.pi) ** (1 / 3))
    assert parse_mask_labels("1=benign, 2 = malignant") == {1: "benign", 2: "malignant"}
    for bad in ("1=benign,x", "0=a", "1=a,1=b", "2="):
        with pytest.raises(UserError, match="VALUE=CLASS"):
            parse_mask_labels(bad)
    eye = np.eye(4)
    assert grid_mismatch(eye, (3, 3, 3), eye, (5, 5, 5), whole=False) == ""  # a SEG may cover a block
    assert "outside" in grid_mismatch(eye, (6, 3, 3), eye, (5, 5, 5), whole=False)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("mask-phantom")
    write_points(root, 8, "dicom", seed=1, masks=True)
    return root


def test_the_phantoms_masks_give_back_its_points_and_split_takes_them(phantom, run_cli, tmp_path):
    code, stdout, stderr = run_cli("points", phantom / "masks", "--scans", phantom / "scans", "--out",
                                   tmp_path / "p.csv", "--mask-labels", "1=benign,2=malignant")
    assert code == 0, stderr
    assert "labels from --mask-labels" in stdout and "0 file(s) skipped" in " ".join(stdout.split())
    given, got = read_rows(phantom / "points.csv"), read_rows(tmp_path / "p.csv")
    assert len(got) == len(given) and sorted(r["seriesuid"] for r in got) == sorted(r["seriesuid"] for r in given)
    for mine in got:
        # each component is one nodule of points.csv: the nearest of its scan's, with the same class
        same_scan = [r for r in given if r["seriesuid"] == mine["seriesuid"]]
        theirs = min(same_scan, key=lambda r: np.linalg.norm(point_of(mine) - point_of(r)))
        scan = next(s for s in discover(phantom / "scans" / theirs["patient_id"]).scans)
        voxel = max(scan.spacing)
        # the nodule's centre is where it was drawn; spicules and the voxel grid move the centroid a little
        assert np.linalg.norm(point_of(mine) - point_of(theirs)) < voxel
        assert (mine["patient_id"], mine["label"]) == (theirs["patient_id"], theirs["label"])
    # every component one row of the splits file, at its point, each patient in one split
    result = split_folder(phantom / "scans", tmp_path / "s.csv", points_csv=tmp_path / "p.csv")
    rows = read_splits(tmp_path / "s.csv")
    assert len(rows) == len(got) == len(result.rows)
    assert [row.point for row in rows] == [tuple(point_of(r)) for r in got]
    assert len({(row.patient_id, row.split) for row in rows}) == len({row.patient_id for row in rows})


def test_bad_input_is_one_line_exit_2_and_nothing_written(phantom, run_installed, tmp_path):
    before = sorted(phantom.rglob("*"))
    out = tmp_path / "p.csv"
    cases = [
        (["--mask-labels", "1=benign,oops"], "VALUE=CLASS"),
        (["--scans", phantom / "nowhere"], "does not exist"),
        (["--out", phantom / "scans" / "p.csv"], "inside the input folder"),
        (["--scans", phantom / "masks"], "a folder of their own"),
    ]
    for change, message in cases:
        options = {"--scans": phantom / "scans", "--out": out}
        extra = []
        for key, value in zip(change[::2], change[1::2]):
            if key in options:
                options[key] = value
            else:
                extra += [key, value]
        args = ["points", phantom / "masks", *[x for kv in options.items() for x in kv], *extra]
        code, stdout, stderr = run_installed(*args)
        assert code == 2 and len(stderr.strip().splitlines()) == 1 and message in stderr, (change, stderr)
        assert "Traceback" not in stderr
    # masks on no scan's grid: each skipped, then nothing usable is an error, not an empty file
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4)), wrong / "LUNG0000.nii.gz")
    code, stdout, stderr = run_installed("points", wrong, "--scans", phantom / "scans", "--out", out)
    assert code == 2 and "does not fit its scan" in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".p.csv*"))
    assert sorted(phantom.rglob("*")) == before
