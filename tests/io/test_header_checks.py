"""Headers are checked before they are trusted: a scan with no information (constant, or not numbers) and a scan
whose stated spacing is not a size are skipped with a reason, through the installed command, for every input kind.

Oracles: the fixture runs' own predictions (tests/fixtures/legacy_runs/expected) for the good scan beside the bad
ones, and a DICOM series written from the fixture NIfTI, which must predict as that NIfTI did.
"""
from __future__ import annotations

import csv
import gzip
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from pydicom.uid import generate_uid

from tests.conftest import ct_slice

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_runs"
KNEE_PNG = "OAI9000038_BaseLine_3_de3d1_SAG_3D_DESS_WE_RIGHT.nii.gz_1.png"


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _expected(run: str) -> list[dict]:
    return _rows(LEGACY / "expected" / run / "predict.csv")


def _flat(text: str) -> str:
    """Console output with the table drawing and line breaks taken out, so that a wrapped reason reads whole."""
    for mark in "│┃┡┩┏┓┗┛━─╇╈┬┴┼╭╮╰╯|":
        text = text.replace(mark, " ")
    return " ".join(text.split())


def test_predict_skips_scans_with_no_information_or_no_pixel_size_and_predicts_the_rest(tmp_path, run_installed):
    run = tmp_path / "run"
    shutil.copytree(LEGACY / "runs" / "knee-perceiver", run)
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(LEGACY / "data" / "knee" / "scans" / KNEE_PNG, scans / KNEE_PNG)
    knee = np.asarray(Image.open(scans / KNEE_PNG).convert("L"), np.float32)
    slope = ct_slice(knee, 0.0, generate_uid(), modality="CR")
    slope.RescaleSlope = 0
    slope.save_as(scans / "slope0.dcm", enforce_file_format=True)
    for name, spacing in (("spacing0.dcm", ["0", "0"]), ("negative.dcm", ["-0.5", "-0.5"])):
        image = ct_slice(knee, 0.0, generate_uid(), modality="CR")
        image.PixelSpacing = spacing
        image.save_as(scans / name, enforce_file_format=True)
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(scans / "grey.png")
    nib.save(nib.Nifti1Image(np.full((64, 64, 1), np.nan, np.float32), np.eye(4)), scans / "nan.nii.gz")

    code, out, err = run_installed("predict", run, scans, "--out", tmp_path / "p.csv", "--device", "cpu")

    assert code == 0, err
    rows = _rows(tmp_path / "p.csv")
    assert [Path(r["path"]).name for r in rows] == [KNEE_PNG]
    expected = next(r for r in _expected("knee-perceiver") if Path(r["path"]).name == KNEE_PNG)
    assert abs(float(rows[0]["prob_right"]) - float(expected["prob_right"])) < 1e-6
    said = _flat(out)
    assert "5 file(s) skipped" in said
    for reason, example in (("RescaleSlope is 0", "slope0.dcm"), ("PixelSpacing is 0\\0", "spacing0.dcm"),
                            ("PixelSpacing is -0.5\\-0.5", "negative.dcm"),
                            ("constant: every voxel has the value 128", "grey.png"),
                            ("4,096 of its 4,096 voxels are not numbers", "nan.nii.gz")):
        assert reason in said and example in said, (reason, said)


def _ct_series(folder: Path, volume_ras: nib.Nifti1Image, pixel_spacing=None) -> str:
    """The NIfTI's voxels as an axial DICOM CT series with the same geometry (LPS = RAS with x, y negated)."""
    data = np.asarray(volume_ras.dataobj, np.float32)
    affine = volume_ras.affine
    spacing = float(f"{-affine[0, 0]:.8g}")  # a DICOM decimal string holds 16 characters
    assert np.allclose(affine[:3, :3], np.diag([-spacing, -spacing, affine[2, 2]]), atol=1e-6)
    corner = (-affine[0, 3], -affine[1, 3])
    uid = generate_uid()
    folder.mkdir(parents=True)
    for k in range(data.shape[2]):
        # voxel (i, j, k) lies at LPS (x0 + i * spacing, y0 + j * spacing): row j, column i of slice k
        ds = ct_slice(np.clip(data[:, :, k].T, -1024, None), float(affine[2, 3] + k * affine[2, 2]), uid,
                      instance=k + 1, position_xy=corner)
        ds.PixelSpacing = pixel_spacing or [spacing, spacing]
        ds.save_as(folder / f"{k:04d}.dcm", enforce_file_format=True)
    return uid


def test_a_series_without_a_true_pixel_size_is_skipped_in_point_mode_not_read_with_another_field_of_view(
        tmp_path, run_installed):
    run = tmp_path / "run"
    shutil.copytree(LEGACY / "runs" / "lung-points-perceiver", run)
    nifti = nib.load(LEGACY / "data" / "lung" / "scans" / "LUNG0000.nii.gz")
    spacing = f"{-nifti.affine[0, 0]:.8g}"
    scans = tmp_path / "scans"
    good = _ct_series(scans / "good", nifti)
    zero = _ct_series(scans / "zero", nifti, ["0", "0"])
    negative = _ct_series(scans / "negative", nifti, [f"-{spacing}", f"-{spacing}"])
    expected = _expected("lung-points-perceiver")[0]
    point = [expected[c] for c in ("coordX", "coordY", "coordZ")]
    points = tmp_path / "points.csv"
    points.write_text("seriesuid,coordX,coordY,coordZ\n" + "".join(f"{uid},{','.join(point)}\n"
                                                                    for uid in (good, zero, negative)))

    code, out, err = run_installed("predict", run, scans, "--points", points, "--out", tmp_path / "p.csv",
                                   "--device", "cpu")

    assert code == 0, err
    rows = _rows(tmp_path / "p.csv")
    assert [r["seriesuid"] for r in rows] == [good]  # not the same point, read with 1 mm pixels, off-centre
    # the series of the same voxels and geometry predicts as the NIfTI did (DICOM stores 16-bit integers)
    assert abs(float(rows[0]["prob_malignant"]) - float(expected["prob_malignant"])) < 1e-3
    said = _flat(out)
    assert "PixelSpacing is 0\\0" in said and f"PixelSpacing is -{spacing}\\-{spacing}" in said


def test_a_point_is_refused_in_a_scan_whose_pixel_spacing_was_assumed(tmp_path, run_installed):
    volume = np.random.default_rng(0).normal(-600, 200, (12, 32, 32)).astype(np.float32)
    uid = generate_uid()
    (tmp_path / "ct").mkdir()
    for k in range(len(volume)):
        ds = ct_slice(volume[k], 2.0 * k, uid, instance=k + 1)
        del ds.PixelSpacing
        ds.save_as(tmp_path / "ct" / f"{k:02d}.dcm", enforce_file_format=True)
    centre = "-88,-88,12"  # the middle voxel at the 0.8 mm the other series use; at an assumed 1 mm, elsewhere

    code, out, err = run_installed("preview", tmp_path / "ct", "--point", centre, "--out", tmp_path / "view")

    assert code == 2, out
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "pixel spacing" in err and "cannot be placed" in err
    assert not list(tmp_path.glob("view*"))


def _nifti_with_pixdim(path: Path, pixdim, qform_code=1, sform_y=None) -> None:
    """A NIfTI whose stored pixdim[1:4] is exactly `pixdim` (nibabel would correct a 0 or a negative size), placed
    by its qform; with `sform_y`, by an sform whose second row is that instead."""
    image = nib.Nifti1Image(np.random.default_rng(0).normal(0, 1, (16, 16, 12)).astype(np.float32),
                            np.diag([0.8, 0.8, 2.0, 1.0]))
    image.set_sform(np.diag([0.8, 0.8, 2.0, 1.0]), code=0 if sform_y is None else 1)
    image.set_qform(np.diag([0.8, 0.8, 2.0, 1.0]), code=qform_code)
    stored = bytearray(image.header.binaryblock + b"\0" * 4 + np.asarray(image.dataobj).tobytes())
    stored[80:92] = struct.pack("<3f", *pixdim)
    stored[108:112] = struct.pack("<f", 352.0)  # vox_offset
    if sform_y is not None:
        stored[296:312] = struct.pack("<4f", *sform_y)
    path.write_bytes(gzip.compress(bytes(stored)))


def test_a_nifti_voxel_size_of_zero_or_below_is_refused_not_made_one_mm(tmp_path, run_installed):
    scans = tmp_path / "scans"
    scans.mkdir()
    _nifti_with_pixdim(scans / "good.nii.gz", [0.8, 0.8, 2.0])
    _nifti_with_pixdim(scans / "zero.nii.gz", [0.8, 0.0, 2.0])
    _nifti_with_pixdim(scans / "negative.nii.gz", [0.8, 0.8, -2.0])
    _nifti_with_pixdim(scans / "unplaced.nii.gz", [0.0, 0.0, 0.0], qform_code=0)
    _nifti_with_pixdim(scans / "sform.nii.gz", [0.8, 0.8, 2.0], qform_code=0, sform_y=[0.0, 0.0, 0.0, 0.0])

    code, out, err = run_installed("inspect", scans)

    assert code == 0, err
    said = _flat(out)
    assert "1 scan(s) read, 4 file(s) skipped" in said
    for reason in ("pixdim gives voxel axis 2 a size of 0 mm", "pixdim gives voxel axis 3 a size of -2 mm",
                   "pixdim gives voxel axis 1 a size of 0 mm", "its sform gives voxel axis 2 a size of 0 mm"):
        assert reason in said, (reason, said)
