"""The lung phantom's difficulty: small nodules that differ between the classes only in shape."""
from __future__ import annotations

import numpy as np
import pytest

from perceiver_med.inputs.cache import prepare
from perceiver_med.io import discover
from perceiver_med.inputs.labels import folder_label
from perceiver_med.inputs.arrays import grid_slices
from perceiver_med.inputs.preprocess import PreprocessConfig
from perceiver_med.inputs.samples import Sample
from perceiver_med.synth.phantoms import DIFFICULTIES, LUNG_CENTRES, nodule_masks


def _nodules(difficulty, label, count=20):
    rng = np.random.default_rng(7)
    return [nodule_masks(label, rng, difficulty) for _ in range(count)]


def test_hard_nodules_are_3_to_6_pixels_and_show_in_3_to_5_grid_tiles():
    hard = DIFFICULTIES["hard"]
    depth, rows, cols = hard.shape
    tiles = set(grid_slices(depth))
    for label in ("benign", "malignant"):
        for core, _ in _nodules(hard, label):
            shown = [k for k in tiles if core[k].any()]
            assert 3 <= len(shown) <= 5
            zs, ys, xs = np.nonzero(core)
            middle = core[int(np.round(zs.mean()))]
            radius = np.sqrt(middle.sum() / np.pi)  # of a disc with the core's area in its middle slice
            assert 2.5 <= radius <= 6.5 if label == "benign" else 2.0 <= radius <= 7.5
            # near the middle of one lung: within spread_mm (+ a pixel) of a lung centre
            centre_x = (xs.mean() / (cols - 1) - 0.5)
            offset_mm = min(abs(centre_x - c) for c in LUNG_CENTRES) * (cols - 1) * hard.spacing[2]
            assert offset_mm <= hard.spread_mm + hard.spacing[2]


def test_hard_classes_share_size_and_differ_in_shape():
    """Size gives nothing away (the easy phantom's benign nodules were half the size); spicules do."""
    hard = DIFFICULTIES["hard"]
    benign, malignant = _nodules(hard, "benign", 30), _nodules(hard, "malignant", 30)
    size = {name: np.array([core.sum() for core, _ in masks]) for name, masks in
            (("benign", benign), ("malignant", malignant))}
    assert abs(np.median(size["benign"]) / np.median(size["malignant"]) - 1) < 0.35
    assert size["benign"].max() > size["malignant"].min() and size["malignant"].max() > size["benign"].min()
    assert not any(spicules.any() for _, spicules in benign)
    assert all(spicules.sum() > 0 for _, spicules in malignant)


@pytest.mark.parametrize("difficulty", ["medium", "hard"])
def test_synth_lung_difficulty_writes_small_nodule_series(tmp_path, run_cli, difficulty):
    data = tmp_path / "lung"
    code, out, err = run_cli("synth", "lung", data, "--patients", 2, "--difficulty", difficulty.upper())
    assert code == 0, err
    found = discover(data)
    assert sorted(folder_label(scan, found.root) for scan in found.scans) == ["benign", "malignant"]
    for scan in found.scans:
        assert scan.kind == "volume" and len(scan.files) == 24
    grid = prepare(Sample(found.scans[0].path), PreprocessConfig(input="grid", size=64), use_cache=False)
    assert grid.shape == (1, 192, 192)
    # tiles are the 64x64 slices themselves, not resized: the nodule keeps its 3-6 pixel radius
    assert run_cli("synth", "knee", tmp_path / "knee", "--difficulty", "hard")[0] == 2


# ---------------------------------------------------------------- nodule points (`synth lung --points`)
POINTS_PATIENTS = 6


@pytest.fixture(scope="module")
def points_sets(tmp_path_factory):
    """The same six phantom patients as DICOM series and as NIfTI volumes, with masks."""
    from perceiver_med.synth.phantoms import synth

    root = tmp_path_factory.mktemp("points")
    synth("lung", root / "dicom", POINTS_PATIENTS, "dicom", 5, points=True, masks=True)
    synth("lung", root / "nifti", POINTS_PATIENTS, "nifti", 5, points=True)
    return root


def _points(folder):
    from perceiver_med.csvfiles import read_csv

    table = read_csv(folder / "points.csv", "points file", [])
    return table.columns, [row.cells for row in table.rows]


def _read_series_with_pydicom(folder):
    """(HU volume (slices, rows, cols), voxel index (i, j, k) -> LPS mm function, datasets in slice order),
    from the series' own ImagePositionPatient / ImageOrientationPatient / PixelSpacing."""
    import pydicom

    slices = [pydicom.dcmread(file) for file in folder.iterdir()]
    orientation = np.array(slices[0].ImageOrientationPatient, float)
    normal = np.cross(orientation[:3], orientation[3:])
    slices.sort(key=lambda ds: float(normal @ np.array(ds.ImagePositionPatient, float)))
    volume = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])
    positions = np.array([ds.ImagePositionPatient for ds in slices], float)
    row_mm, col_mm = (float(v) for v in slices[0].PixelSpacing)
    # columns of the voxel -> LPS matrix: next column, next row, next slice
    matrix = np.stack([orientation[:3] * col_mm, orientation[3:] * row_mm, positions[1] - positions[0]], axis=1)
    return volume, positions[0], matrix, slices


def _check_nodule_centre(volume, ijk, label, others=()):
    """The voxel of a point is inside a nodule (bright, apart from the chest wall and the other points), and the
    point is the nodule's centre: the HU-weighted centroid of the nodule, within half a voxel."""
    from scipy import ndimage

    voxel = tuple(int(v) for v in np.round(ijk[::-1]))  # (slice, row, col)
    components, _ = ndimage.label(volume > -450)  # halfway between lung (-850 HU) and nodules (-100..50 HU)
    nodule = components == components[voxel]
    assert volume[voxel] > -300 and nodule.sum() < 5000  # not the body
    assert all(components[tuple(int(v) for v in np.round(o[::-1]))] != components[voxel] for o in others)
    if label == "malignant":  # take the spicules off before the centroid (they leave the mass on one side)
        opened, _ = ndimage.label(ndimage.binary_opening(nodule, structure=np.ones((1, 3, 3), bool)))
        nodule = ndimage.binary_dilation(opened == opened[voxel]) & nodule
    centroid = np.array(ndimage.center_of_mass(np.clip(volume + 850, 0, None) * nodule))
    # benign ellipsoids are symmetric: a half-voxel slip (corner vs centre of a voxel) would show
    tolerance = 0.3 if label == "benign" else 1.0
    assert np.abs(centroid - ijk[::-1]).max() <= tolerance, (label, centroid, ijk[::-1])


def test_points_are_nodule_centres_in_the_dicom_series(points_sets):
    columns, points = _points(points_sets / "dicom")
    assert columns == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "label", "patient_id"]
    series = {folder.name: folder for folder in (points_sets / "dicom" / "scans").iterdir()}
    assert len(series) == POINTS_PATIENTS
    for patient, folder in series.items():
        volume, origin, matrix, slices = _read_series_with_pydicom(folder)
        mine = [p for p in points if p["patient_id"] == patient]
        assert 1 <= len(mine) <= 4
        assert {p["seriesuid"] for p in mine} == {slices[0].SeriesInstanceUID}
        assert {ds.PatientID for ds in slices} == {patient}
        centres = [np.linalg.solve(matrix, [float(p[c]) for c in ("coordX", "coordY", "coordZ")] - origin)
                   for p in mine]
        for n, (point, ijk) in enumerate(zip(mine, centres)):
            _check_nodule_centre(volume, ijk, point["label"], centres[:n] + centres[n + 1:])
    assert any(len([p for p in points if p["patient_id"] == patient]) >= 2 for patient in series)
    assert {p["label"] for p in points} == {"benign", "malignant"}


def test_points_are_nodule_centres_in_the_nifti_scans_and_masks(points_sets):
    import nibabel as nib

    columns, points = _points(points_sets / "nifti")
    assert columns[0] == "path" and columns[1:] == ["coordX", "coordY", "coordZ", "diameter_mm", "label",
                                                     "patient_id"]
    _, dicom_points = _points(points_sets / "dicom")
    for row, twin in zip(points, dicom_points, strict=True):  # the same anatomy: the same points
        assert [row[c] for c in columns[1:]] == [twin[c] for c in columns[1:]]
    for patient in sorted({p["patient_id"] for p in points}):
        mine = [p for p in points if p["patient_id"] == patient]
        image = nib.load(points_sets / "nifti" / mine[0]["path"])  # relative to the CSV
        mask = nib.load(points_sets / "dicom" / "masks" / f"{patient}.nii.gz")
        np.testing.assert_allclose(mask.affine, image.affine)
        volume = np.asarray(image.dataobj, np.float32).transpose(2, 1, 0)  # (k, j, i)
        labels = np.asarray(mask.dataobj).transpose(2, 1, 0)
        # NIfTI is RAS: LPS (x, y) negated
        centres = [(np.linalg.inv(image.affine) @ [-float(p["coordX"]), -float(p["coordY"]), float(p["coordZ"]), 1])[:3]
                   for p in mine]
        for n, (point, ijk) in enumerate(zip(mine, centres)):
            _check_nodule_centre(volume, ijk, point["label"], centres[:n] + centres[n + 1:])
            # the value names the point's class: 1 benign, 2 malignant
            assert labels[tuple(int(v) for v in np.round(ijk[::-1]))] == {"benign": 1, "malignant": 2}[point["label"]]
        assert set(np.unique(labels)) == {0} | {{"benign": 1, "malignant": 2}[p["label"]] for p in mine}


def test_points_dicom_and_nifti_read_the_same(points_sets):
    """Through the tool's own readers, the DICOM series and the NIfTI (LPS -> RAS affine) give one array and one
    geometry, and that geometry puts every point on its nodule."""
    from perceiver_med.io import read_scan

    dicom_scans = {scan.patient_id: scan for scan in discover(points_sets / "dicom" / "scans").scans}
    nifti_scans = discover(points_sets / "nifti" / "scans").scans
    assert len(dicom_scans) == len(nifti_scans) == POINTS_PATIENTS
    _, points = _points(points_sets / "nifti")
    for scan in nifti_scans[:2]:
        patient = scan.path.name.split(".")[0]
        from_nifti, from_dicom = read_scan(scan), read_scan(dicom_scans[patient])
        np.testing.assert_array_equal(from_nifti.voxels, from_dicom.voxels)
        np.testing.assert_allclose(from_nifti.affine, from_dicom.affine, atol=1e-4)
        for point in (p for p in points if p["patient_id"] == patient):
            lps = [float(point[c]) for c in ("coordX", "coordY", "coordZ")]
            index = np.linalg.inv(from_dicom.affine) @ [*lps, 1]  # (slice, row, col)
            assert from_dicom.voxels[tuple(int(v) for v in np.round(index[:3]))] > -300


def test_points_patients_differ_in_geometry_and_files_are_shuffled(points_sets):
    geometries, directions = set(), set()
    for folder in (points_sets / "dicom" / "scans").iterdir():
        _, origin, matrix, slices = _read_series_with_pydicom(folder)
        first = slices[0]
        assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        positions = np.array([ds.ImagePositionPatient for ds in slices], float)
        steps = np.diff(positions[:, 2])
        np.testing.assert_allclose(steps, float(first.SpacingBetweenSlices), atol=1e-3)
        assert float(first.SpacingBetweenSlices) <= float(first.SliceThickness)
        assert 1.0 <= float(first.SliceThickness) <= 2.5 and 40 <= len(slices) <= 120
        pixel = float(first.PixelSpacing[0])
        assert 0.6 <= pixel <= 0.9 and first.PixelSpacing[0] == first.PixelSpacing[1]
        assert 96 <= first.Columns == first.Rows <= 128
        geometries.add((pixel, float(first.SliceThickness), len(slices)))
        # file names say nothing of the order: sorted by name, the slices are not in position order
        by_name = [float(pydicom_z) for pydicom_z in _z_by_file_name(folder)]
        assert by_name != sorted(by_name) and by_name != sorted(by_name, reverse=True)
        numbers = [int(ds.InstanceNumber) for ds in slices]
        directions.add(numbers[0] < numbers[-1])
    assert len(geometries) == POINTS_PATIENTS
    assert len({g[0] for g in geometries}) > 1 and len({g[1] for g in geometries}) > 1
    assert directions == {True, False}  # instance numbers run head to feet in some series, feet to head in others


def _z_by_file_name(folder):
    import pydicom

    return [pydicom.dcmread(file, stop_before_pixels=True).ImagePositionPatient[2] for file in sorted(folder.iterdir())]


def test_points_classes_share_size_and_differ_in_shape(points_sets):
    """Diameters overlap between the classes; only malignant nodules reach out (spicules) past their radius."""
    import nibabel as nib
    from scipy import ndimage

    _, points = _points(points_sets / "dicom")
    reach = {"benign": [], "malignant": []}
    diameters = {"benign": [], "malignant": []}
    for patient in sorted({p["patient_id"] for p in points}):
        mask = nib.load(points_sets / "dicom" / "masks" / f"{patient}.nii.gz")
        labels = np.asarray(mask.dataobj)
        mine = [p for p in points if p["patient_id"] == patient]
        for point in mine:
            # the nodule: the connected part of its class's mask that holds its centre
            parts, _ = ndimage.label(labels == {"benign": 1, "malignant": 2}[point["label"]], np.ones((3, 3, 3)))
            centre = np.array([-float(point["coordX"]), -float(point["coordY"]), float(point["coordZ"])])
            voxel = np.round(nib.affines.apply_affine(np.linalg.inv(mask.affine), centre)).astype(int)
            ijk = np.argwhere(parts == parts[tuple(voxel)])
            assert parts[tuple(voxel)] > 0
            ras = nib.affines.apply_affine(mask.affine, ijk)
            radius = float(point["diameter_mm"]) / 2
            reach[point["label"]].append(np.linalg.norm(ras - centre, axis=1).max() / radius)
            diameters[point["label"]].append(float(point["diameter_mm"]))
    assert max(reach["benign"]) < 1.2 < 1.4 < min(reach["malignant"])
    for label in diameters:
        assert 4.0 <= min(diameters[label]) and max(diameters[label]) <= 12.0
    assert max(diameters["benign"]) > min(diameters["malignant"])
    assert max(diameters["malignant"]) > min(diameters["benign"])


def test_synth_points_through_the_installed_command(tmp_path, run_installed, run_cli):
    out = tmp_path / "lung"
    code, stdout, stderr = run_installed("synth", "lung", out, "--points", "--patients", 2, "--format", "nifti",
                                         "--masks")
    assert code == 0, stderr
    columns, points = _points(out)
    assert columns[0] == "path" and all((out / p["path"]).is_file() for p in points)
    assert sorted(path.name for path in (out / "masks").iterdir()) == ["LUNG0000.nii.gz", "LUNG0001.nii.gz"]
    code, stdout, stderr = run_installed("synth", "lung", tmp_path / "a", "--masks")
    assert code == 2 and stderr.strip() == "error: --masks needs --points: the masks outline the nodules listed " \
        "in points.csv"
    for bad in (["knee", tmp_path / "b", "--points"], ["lung", tmp_path / "c", "--points", "--format", "png"],
                ["lung", tmp_path / "d", "--points", "--difficulty", "hard"]):
        code, stdout, stderr = run_cli("synth", *bad)
        assert code == 2 and len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["lung"]  # nothing written for a refused command


@pytest.mark.parametrize("kind, fmt", [("knee", "dicom"), ("lung", "nifti")])
def test_a_set_of_unseen_patients_takes_other_patient_ids(tmp_path, kind, fmt):
    """demo predicts a second phantom set as unseen patients: its ids must not be the training set's."""
    import pydicom

    from perceiver_med.synth.phantoms import synth

    def patient_ids(root):
        if fmt == "dicom":
            return {pydicom.dcmread(f, stop_before_pixels=True).PatientID for f in root.rglob("*.dcm")}
        return {f.name.split(".")[0] for f in root.rglob("*.nii.gz")}

    train, _ = synth(kind, tmp_path / "train", 3, fmt, 0)
    unseen, _ = synth(kind, tmp_path / "unseen", 3, fmt, 0, first=3)  # the same seed: the ids alone must differ
    assert len(patient_ids(train)) == len(patient_ids(unseen)) == 3
    assert not patient_ids(train) & patient_ids(unseen)
