"""Nodule points and point-centred grids in millimetres.

Oracles: an analytic anatomy sampled at two scanners' spacings (the grids must agree), a bright sphere at a
known point (it must sit at the centre of the middle tile), the phantom's own nodule masks (a point must fall
in its nodule's voxels, for DICOM and NIfTI alike), and hand-made CSV files.
"""
import csv
import math
from pathlib import Path

import numpy as np
import pytest

from perceiver_med.workflows.folders import split_folder
from perceiver_med.errors import ScanError, UserError
from perceiver_med.io import discover, read_scan
from perceiver_med.io.image import ScanImage
from perceiver_med.inputs.cache import find_scan
from perceiver_med.inputs.points import match_points, parse_point, read_points
from perceiver_med.inputs.arrays import point_grid
from perceiver_med.inputs.preprocess import PreprocessConfig
from perceiver_med.inputs.splits import read_splits
from perceiver_med.synth.nodules import MASK_VALUES, write_points

TILE = 32
POINT = np.array([12.0, -20.0, -150.0])  # LPS mm


def anatomy(x, y, z):
    """HU at LPS mm: lung, an 8 mm nodule at POINT, a 5 mm one beside it, a vessel tilted through the planes."""
    hu = np.full(np.broadcast(x, y, z).shape, -850.0, np.float32)
    d = np.sqrt((x - POINT[0]) ** 2 + (y - POINT[1]) ** 2 + (z - POINT[2]) ** 2)
    hu[d <= 4.0] = 0.0
    hu[np.sqrt((x - POINT[0] - 9) ** 2 + (y - POINT[1] + 6) ** 2 + (z - POINT[2] - 3) ** 2) <= 2.5] = 0.0
    vessel_x, vessel_y = POINT[0] - 10 + 0.4 * (z - POINT[2]), POINT[1] + 8
    hu[np.hypot(x - vessel_x, y - vessel_y) <= 1.5] = -100.0
    return hu


def scanned(pixel_mm, thickness_mm, shape=(36, 90, 90), origin_offset=(0.3, -0.2, 0.4)):
    """The anatomy as a scanner of that pixel spacing and slice thickness records it: each voxel the mean of the
    anatomy over its slab (slice profile), in the display convention, with its affine to LPS."""
    depth, rows, cols = shape
    origin = POINT - np.array([cols / 2 * pixel_mm, rows / 2 * pixel_mm, depth / 2 * thickness_mm]) \
        + np.array(origin_offset)
    k, r, c = np.meshgrid(np.arange(depth), np.arange(rows), np.arange(cols), indexing="ij")
    x, y = origin[0] + c * pixel_mm, origin[1] + r * pixel_mm
    volume = np.zeros(shape, np.float32)
    offsets = (np.arange(8) + 0.5) / 8 - 0.5
    for sub_z in offsets:  # the slab
        for sub_x, sub_y in [(-0.25, -0.25), (0.25, 0.25), (-0.25, 0.25), (0.25, -0.25)]:  # the pixel
            volume += anatomy(x + sub_x * pixel_mm, y + sub_y * pixel_mm, origin[2] + (k + sub_z) * thickness_mm)
    volume /= len(offsets) * 4
    affine = np.eye(4)
    affine[:3, :3] = [[0, 0, pixel_mm], [0, pixel_mm, 0], [thickness_mm, 0, 0]]  # columns: slice, row, col
    affine[:3, 3] = origin
    return ScanImage(voxels=volume, affine=affine, spacing=(thickness_mm, pixel_mm, pixel_mm), modality="CT",
                     ordering="position", format="dicom", num_slices=depth)


CONFIG = PreprocessConfig(input="point", size=TILE, window="lung", fov_mm=40.0, slice_mm=2.0)


def tiles(grid):
    return grid[0].reshape(3, TILE, 3, TILE).transpose(0, 2, 1, 3).reshape(9, TILE, TILE)


def test_the_nodule_sits_at_the_centre_of_the_middle_tile():
    image = scanned(0.7, 1.25)
    grid = point_grid(image, POINT, CONFIG)
    assert grid.shape == (1, 3 * TILE, 3 * TILE)
    middle = tiles(grid)[4]
    # the nodule's pixels: brighter than lung by far, and joined to the tile's centre
    from scipy.ndimage import center_of_mass, label

    parts, _ = label(middle > 0.5)
    nodule = parts == parts[TILE // 2, TILE // 2]
    assert parts[TILE // 2, TILE // 2] > 0
    centre = np.array(center_of_mass(nodule))
    np.testing.assert_allclose(centre, [(TILE - 1) / 2] * 2, atol=0.5)
    # its area is that of an 8 mm disc in a 40 mm square (within a pixel ring)
    expected = math.pi * 4.0 ** 2 / (40.0 / TILE) ** 2
    assert abs(nodule.sum() - expected) < 2 * math.pi * 4.0 / (40.0 / TILE)
    # the 8 mm nodule reaches +-4 mm: the planes at 0 and +-2 mm show it, those at +-6 mm and beyond do not
    centres = [t[TILE // 2 - 1:TILE // 2 + 1, TILE // 2 - 1:TILE // 2 + 1].mean() for t in tiles(grid)]
    assert min(centres[3:6]) > 0.5 and max(centres[:2] + centres[7:]) < 0.3


def test_one_anatomy_at_1_mm_and_2_5_mm_slices_gives_the_same_grid():
    thin = point_grid(scanned(0.6, 1.0, shape=(60, 100, 100)), POINT, CONFIG)
    thick = point_grid(scanned(0.9, 2.5, shape=(24, 70, 70)), POINT, CONFIG)
    correlation = np.corrcoef(thin.ravel(), thick.ravel())[0, 1]
    assert correlation > 0.9
    # the oracle can fail: the same volumes' whole-slice grids (9 consecutive slices) cover other anatomy
    from perceiver_med.inputs.arrays import make_grid

    whole = [make_grid(image.voxels, PreprocessConfig(input="grid", size=TILE, window="lung"), modality="CT")
             for image in (scanned(0.6, 1.0, shape=(60, 100, 100)), scanned(0.9, 2.5, shape=(24, 70, 70)))]
    assert np.corrcoef(whole[0].ravel(), whole[1].ravel())[0, 1] < correlation - 0.1


def test_samples_outside_the_volume_are_air_and_a_point_outside_is_refused():
    image = scanned(0.7, 2.0, shape=(6, 40, 40))  # 12 mm deep, 28 mm wide: smaller than the grid
    grid = tiles(point_grid(image, POINT, CONFIG))
    assert grid[0].max() == 0.0 and grid[8].max() == 0.0  # planes -8 and +8 mm: beyond the 6 slices
    assert grid[4][0].max() == 0.0  # the top row of the middle tile: 20 mm anterior, outside the 14 mm half-width
    with pytest.raises(ScanError, match="outside this scan"):
        point_grid(image, POINT + [0, 0, 30], CONFIG)
    ras = POINT * [-1, -1, 1]  # LPS given as RAS: outside, and the message says the mirrored point fits
    with pytest.raises(ScanError, match=r"outside this scan .*x and y negated, lies inside: are the coordinates RAS"):
        point_grid(image, ras, CONFIG)
    with pytest.raises(ScanError, match=r"voxel \d+, \d+, 1\.43e\+30 of") as far:  # not a 30-digit number
        point_grid(image, POINT + [1e30, 0, 0], CONFIG)
    assert "RAS" not in str(far.value)  # its mirror is outside too


@pytest.fixture(scope="module", params=["dicom", "nifti"])
def phantom(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"points-{request.param}")
    write_points(out, 2, request.param, seed=3, masks=True)
    return request.param, out


def test_each_point_maps_to_a_voxel_of_its_own_nodule_and_back(phantom):
    fmt, out = phantom
    table = read_points(out / "points.csv")
    samples, skipped = match_points(table, discover(out / "scans"))
    assert not skipped and len(samples) == len(table.samples) >= 2
    for patient in sorted({s.patient_id for s in samples}):
        mine = [s for s in samples if s.patient_id == patient]
        image = read_scan(find_scan(mine[0].path, mine[0].series_uid))
        mask = read_scan(discover(out / "masks" / f"{patient}.nii.gz").scans[0])
        np.testing.assert_allclose(mask.affine, image.affine, atol=1e-3)
        for sample in mine:
            index = image.to_voxel(sample.point)
            np.testing.assert_allclose(image.to_patient(index), sample.point, atol=1e-6)
            # inside a nodule, of the point's class (the phantom's masks: 1 benign, 2 malignant)
            assert mask.voxels[tuple(np.round(index).astype(int))] == MASK_VALUES[sample.label]


def test_the_same_nodule_in_dicom_and_nifti_gives_the_same_grid(tmp_path):
    grids = []
    for fmt in ("dicom", "nifti"):
        (tmp_path / fmt).mkdir()
        write_points(tmp_path / fmt, 1, fmt, seed=5)
        table = read_points(tmp_path / fmt / "points.csv")
        samples, _ = match_points(table, discover(tmp_path / fmt / "scans"))
        grids.append(point_grid(read_scan(find_scan(samples[0].path, samples[0].series_uid)), samples[0].point,
                                CONFIG))
    # NIfTI stores rounded HU in int16, DICOM its own rescale: the same anatomy to within a grey level
    np.testing.assert_allclose(grids[0], grids[1], atol=0.01)


def _write(path: Path, text: str, bom: bool = False) -> Path:
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return path


def test_points_files_bad_rows_are_skipped_with_reasons_and_bad_files_refused(tmp_path, phantom):
    fmt, out = phantom
    good = read_points(out / "points.csv").samples[0]
    column = "seriesuid" if fmt == "dicom" else "path"
    reference = good.series_uid if fmt == "dicom" else good.path
    x, y, z = good.point
    # a LUNA16 annotations.csv with a label column; a BOM; a formula-escaped cell; a bad number; an unknown series
    text = (f"{column},coordX,coordY,coordZ,diameter_mm,label\n"
            f"{reference},{x!r},'{y!r},{z!r},5.0,benign\n"
            f"{reference},{x},abc,{z},5.0,benign\n"
            f"{'1.2.3.4' if fmt == 'dicom' else 'scans/nothing.nii.gz'},{x},{y},{z},,malignant\n")
    if y >= 0:
        text = text.replace(f"'{y!r}", repr(y))
    points = read_points(_write(tmp_path / "p.csv", text, bom=True))
    assert [sample.point for sample in points.samples] == [(x, y, z), (x, y, z)]
    assert len(points.skipped) == 1 and "p.csv:3" in points.skipped[0].reason and "coordY" in points.skipped[0].reason
    if fmt == "nifti":  # a path relative to the CSV's folder: the CSV sits beside scans/
        (tmp_path / "p.csv").replace(out / "p_test.csv")
        points = read_points(out / "p_test.csv")
    samples, skipped = match_points(points, discover(out / "scans"))
    assert len(samples) == 1 and samples[0].label == "benign"
    assert any("not found among the scans" in s.reason for s in skipped)
    (out / "p_test.csv").unlink(missing_ok=True)
    with pytest.raises(UserError, match="coordX,coordY,coordZ"):
        read_points(_write(tmp_path / "q.csv", "seriesuid,x,y,z\n1.2,1,2,3\n"))
    with pytest.raises(UserError, match="seriesuid or a path"):
        read_points(_write(tmp_path / "r.csv", "coordX,coordY,coordZ\n1,2,3\n"))
    assert parse_point(" 1.5, -2,3e1") == (1.5, -2.0, 30.0)
    with pytest.raises(UserError, match="three numbers"):
        parse_point("1,2")


def test_split_by_points_keeps_every_point_and_each_patient_in_one_split(tmp_path):
    (tmp_path / "d").mkdir()
    write_points(tmp_path / "d", 8, "dicom", seed=1)
    before = sorted(p for p in (tmp_path / "d").rglob("*"))
    result = split_folder(tmp_path / "d" / "scans", tmp_path / "s.csv", points_csv=tmp_path / "d" / "points.csv")
    assert sorted(p for p in (tmp_path / "d").rglob("*")) == before  # nothing written inside the input folder
    with open(tmp_path / "d" / "points.csv", newline="") as handle:
        given = list(csv.DictReader(handle))
    rows = read_splits(tmp_path / "s.csv")
    assert len(rows) == len(given) == len(result.rows)
    for row, record in zip(rows, given):  # every point back exactly, with its label and patient
        assert row.point == (float(record["coordX"]), float(record["coordY"]), float(record["coordZ"]))
        assert (row.label, row.patient_id, row.series_uid) == (record["label"], record["patient_id"],
                                                               record["seriesuid"])
    split_of = {}
    for row in rows:
        assert split_of.setdefault(row.patient_id, row.split) == row.split
    assert len(set(split_of.values())) == 3


# ---------------------------------------------------------------- the commands, through the installed script
@pytest.fixture(scope="module")
def point_run(tmp_path_factory):
    """A phantom with points, its splits and a tiny run trained on them (the installed script, as users run it)."""
    import os
    import subprocess

    from tests.conftest import installed_command

    root = tmp_path_factory.mktemp("points-cli")
    environment = {**os.environ, "PERCEIVER_MED_CACHE": str(root / "cache")}

    def run_installed(*args):
        done = subprocess.run([installed_command(), *map(str, args)], capture_output=True, text=True, timeout=300,
                              env=environment)
        return done.returncode, done.stdout, done.stderr

    code, _, stderr = run_installed("synth", "lung", root / "d", "--points", "--patients", 8, "--seed", 2)
    assert code == 0, stderr
    before = sorted((root / "d").rglob("*"))
    code, stdout, stderr = run_installed("split", root / "d" / "scans", "--points", root / "d" / "points.csv",
                                         "--out", root / "s.csv")
    assert code == 0, stderr
    code, stdout, stderr = run_installed("train", root / "s.csv", "--out", root / "run", "--epochs", 1, "--size", 16,
                                         "--slice-mm", 2.5, "--quiet", "--device", "cpu")
    assert code == 0, stderr
    return root, before


def _points(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_train_stores_the_point_grid_and_predict_writes_one_row_per_point(point_run, run_installed):
    import json

    root, before = point_run
    preprocess = json.loads((root / "run" / "config.json").read_text())["preprocess"]
    assert (preprocess["input"], preprocess["fov_mm"], preprocess["slice_mm"]) == ("point", 40.0, 2.5)
    code, stdout, stderr = run_installed("predict", root / "run", root / "d" / "scans", "--points",
                                         root / "d" / "points.csv", "--out", root / "preds.csv")
    assert code == 0, stderr
    given, written = _points(root / "d" / "points.csv"), _points(root / "preds.csv")
    assert len(written) == len(given)
    first = ",".join(f"{float(given[0][c]):.1f}" for c in ("coordX", "coordY", "coordZ"))
    assert first in stdout and f"{len(given)} point(s) predicted" in stdout  # each row of the table is a point
    for row, point in zip(written, given):
        assert [row[c] for c in ("seriesuid", "coordX", "coordY", "coordZ", "label")] == \
               [point[c] for c in ("seriesuid", "coordX", "coordY", "coordZ", "label")]
        assert abs(float(row["prob_benign"]) + float(row["prob_malignant"]) - 1) < 1e-9
    # the run's own predictions of its test split (in the frozen splits' order) are those predict makes
    coordinates = ("coordX", "coordY", "coordZ")
    frozen = [r for r in _points(root / "run" / "splits.csv") if r["split"] == "test"]
    trained = _points(root / "run" / "predictions_test.csv")
    assert len(frozen) == len(trained) > 0
    by_point = {tuple(float(row[c]) for c in coordinates): row for row in written}
    for split_row, run_row in zip(frozen, trained):
        assert [float(split_row[c]) for c in coordinates] == [float(run_row[c]) for c in coordinates]
        mine = by_point[tuple(float(split_row[c]) for c in coordinates)]
        assert abs(float(mine["prob_malignant"]) - float(run_row["prob_malignant"])) < 1e-4
    # evaluate re-reads the frozen splits, points included, and finds the same test scores
    code, stdout, stderr = run_installed("evaluate", root / "run", "--split", "test")
    assert code == 0, stderr
    assert sorted((root / "d").rglob("*")) == before  # nothing written inside the input folder


def test_preview_of_a_point_is_the_grid_train_used(point_run, run_installed):
    from perceiver_med.inputs.cache import prepare
    from perceiver_med.inputs.samples import Sample
    from perceiver_med.run.rundir import load_run_config

    root, _ = point_run
    first = _points(root / "d" / "points.csv")[0]
    series = root / "d" / "scans" / first["patient_id"]
    point = ",".join(first[c] for c in ("coordX", "coordY", "coordZ"))
    code, stdout, stderr = run_installed("preview", series, "--point", point, "--size", 16, "--slice-mm", 2.5,
                                         "--out", root / "pv")
    assert code == 0, stderr
    config = load_run_config(root / "run").preprocess
    expected = prepare(Sample(series, point=tuple(float(v) for v in point.split(","))), config, use_cache=False)
    np.testing.assert_array_equal(np.load(root / "pv.npy"), expected)
    # --run takes the run's preprocessing whole, and refuses an option that would change it
    code, stdout, stderr = run_installed("preview", series, "--point", point, "--run", root / "run", "--out",
                                         root / "pv-run")
    assert code == 0, stderr
    np.testing.assert_array_equal(np.load(root / "pv-run.npy"), expected)
    code, stdout, stderr = run_installed("preview", series, "--point", point, "--run", root / "run", "--size", 32,
                                         "--out", root / "pv-bad")
    assert code == 2 and "leave out --size" in stderr and not (root / "pv-bad.npy").exists()


def test_bad_points_are_skipped_with_a_reason_and_nothing_usable_is_exit_2(point_run, run_installed, tmp_path):
    root, _ = point_run
    given = _points(root / "d" / "points.csv")
    keys = ["seriesuid", "coordX", "coordY", "coordZ"]
    rows = [[given[0][k] for k in keys], ["1.2.3.999", *(given[1][k] for k in keys[1:])],
            [given[1]["seriesuid"], "abc", given[1]["coordY"], given[1]["coordZ"]]]
    mixed = tmp_path / "mixed.csv"
    mixed.write_text(",".join(keys) + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    code, stdout, stderr = run_installed("predict", root / "run", root / "d" / "scans", "--points", mixed,
                                         "--out", tmp_path / "p.csv")
    assert code == 0, stderr
    assert len(_points(tmp_path / "p.csv")) == 1
    assert "1.2.3.999 not found" in stdout.replace("\n", " ") or "1.2.3.999" in stdout
    assert "1 point(s) predicted, 2 point row(s) skipped" in " ".join(stdout.split())  # rows, not "files"
    # LPS given as RAS: no point inside any scan, and the message says what may be wrong
    ras = tmp_path / "ras.csv"
    ras.write_text(",".join(keys) + "\n" + "\n".join(
        f"{g['seriesuid']},{-float(g['coordX']) + 200},{-float(g['coordY']) + 200},{g['coordZ']}" for g in given))
    code, stdout, stderr = run_installed("predict", root / "run", root / "d" / "scans", "--points", ras,
                                         "--out", tmp_path / "q.csv")
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "RAS" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "q.csv").exists()
    no_coordinates = tmp_path / "none.csv"
    no_coordinates.write_text("seriesuid,x,y,z\n1.2,1,2,3\n")
    code, stdout, stderr = run_installed("predict", root / "run", root / "d" / "scans", "--points", no_coordinates,
                                         "--out", tmp_path / "r.csv")
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "coordX,coordY,coordZ" in stderr
    code, stdout, stderr = run_installed("predict", root / "run", root / "d" / "scans", "--out", tmp_path / "s.csv")
    assert code == 2 and "--points" in stderr


def test_explain_writes_one_overlay_per_point(point_run, run_installed, tmp_path):
    root, _ = point_run
    given = _points(root / "d" / "points.csv")
    patient = given[0]["patient_id"]
    code, stdout, stderr = run_installed("explain", root / "run", root / "d" / "scans" / patient, "--points",
                                         root / "d" / "points.csv", "--out", tmp_path / "ex")
    assert code == 0, stderr
    assert len(list((tmp_path / "ex").glob("*.png"))) == sum(g["patient_id"] == patient for g in given)
    assert "skipped" not in stdout  # the rows of scans not given were not asked for: they are not skips


def test_reading_only_the_slices_a_point_needs_gives_the_same_grid(phantom):
    from perceiver_med.inputs.preprocess import model_input, point_pick, scan_input

    fmt, out = phantom
    table = read_points(out / "points.csv")
    samples, _ = match_points(table, discover(out / "scans"))
    for sample in samples:
        scan = find_scan(sample.path, sample.series_uid)
        pick = point_pick(scan, CONFIG, sample.point)
        assert (pick is None) == (fmt == "nifti")  # discovery knows a DICOM series' geometry before reading
        if pick is not None:
            assert len(pick(scan.shape[0])) < scan.shape[0]
        whole = model_input(read_scan(scan), CONFIG, point=sample.point)
        np.testing.assert_array_equal(scan_input(scan, CONFIG, point=sample.point), whole)


def test_the_points_of_one_scan_read_together_give_each_points_own_grid(phantom, monkeypatch):
    """prepare_many decodes a scan once for all its points (the union of their slices): each grid must be the one
    that point alone gives, and a point outside its scan fails alone."""
    import perceiver_med.io as io
    from dataclasses import replace

    from perceiver_med.inputs.cache import prepare, prepare_many

    fmt, out = phantom
    table = read_points(out / "points.csv")
    samples, _ = match_points(table, discover(out / "scans"))
    first = samples[0]
    samples.append(replace(first, point=(first.point[0], first.point[1], 1e4)))
    reads = []
    real_read = io.read_scan
    monkeypatch.setattr(io, "read_scan", lambda scan, pick=None: reads.append(scan.path) or real_read(scan, pick))
    arrays, reasons = prepare_many(samples, CONFIG, workers=1)
    assert sorted(reads) == sorted({s.path for s in samples})  # one read per scan, not per point
    assert "lies outside this scan" in reasons[-1] and arrays[-1] is None
    monkeypatch.setattr(io, "read_scan", real_read)
    for sample, array, reason in zip(samples[:-1], arrays, reasons):
        assert reason == ""
        np.testing.assert_array_equal(array, prepare(sample, CONFIG, use_cache=False))
    again, _ = prepare_many(samples, CONFIG, workers=1)  # from the cache, the same arrays
    for before, after in zip(arrays[:-1], again):
        np.testing.assert_array_equal(before, after)
