"""Phantom data sets written as real DICOM / NIfTI / PNG files, deterministic per seed.

Knee: AP radiograph-like images whose laterality is anatomical. In the standard AP view the
patient faces the viewer, so the right knee's lateral side (where the fibula sits) is on the
image's left, and the left knee's on the image's right. The medial femoral condyle is larger.
Lung: CT volumes in Hounsfield units with a nodule that is either benign or malignant. The "easy"
phantom gives them away by size and a calcified core; the harder ones (`LungDifficulty`) draw both
classes at the same size and contrast, and only the shape tells them apart: smooth, or lobulated
with spicules. `synth lung --points` (nodules.py) writes several nodules per patient, and their centres;
`synth luna25` and `synth luna16` (luna.py) write such chests in those benchmarks' own files and tables.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy.ndimage import gaussian_filter

from perceiver_med.errors import UserError
from perceiver_med.io.orientation import from_display
from perceiver_med.synth.luna import write_luna16, write_luna25

FORMATS = ("dicom", "nifti", "png")
BENCHMARKS = {"luna16": write_luna16, "luna25": write_luna25}  # sets in a benchmark's own layout (luna.py)
KNEE_SIZE = 128
LUNG_SHAPE = (20, 80, 80)  # slices, rows, cols
LUNG_SPACING = (2.5, 2.0, 2.0)  # mm: slice, row, col (a 160 mm field of view: the phantom is small)
DX_SOP = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CT_SOP = "1.2.840.10008.5.1.4.1.1.2"


# ---------------------------------------------------------------- knee
def _ellipse(u, v, cu, cv, ru, rv):
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


def knee_image(side: str, rng: np.random.Generator, size: int = KNEE_SIZE) -> np.ndarray:
    """One AP knee radiograph in [0, 1]; `side` is 'left' or 'right'."""
    lateral = -1.0 if side == "right" else 1.0  # image x direction of the lateral side
    angle = np.deg2rad(rng.uniform(-12, 12))
    scale = rng.uniform(0.85, 1.15)
    shift = rng.uniform(-0.06, 0.06, size=2)
    y, x = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    x, y = x - shift[0], y - shift[1]
    # anatomy coordinates (u across, v down), centred on the joint line
    u = (np.cos(angle) * x + np.sin(angle) * y) / scale
    v = (-np.sin(angle) * x + np.cos(angle) * y) / scale
    width = rng.uniform(0.9, 1.1)
    soft = np.abs(u) < 0.30 * width - 0.05 * np.abs(v)
    femur_shaft = (np.abs(u) < 0.10 * width) & (v < -0.05)
    medial, lat = -lateral, lateral
    condyle_medial = _ellipse(u, v, medial * 0.09 * width, -0.015, 0.115 * width, 0.095)
    condyle_lateral = _ellipse(u, v, lat * 0.075 * width, -0.035, 0.075 * width, 0.065)
    flare = (np.abs(u) < (0.10 + 0.6 * np.clip(v + 0.22, 0, None)) * width) & (v < -0.02) & (v > -0.22)
    tibia_plateau = (np.abs(u) < 0.17 * width) & (v > 0.05) & (v < 0.11)
    tibia_shaft = (np.abs(u) < (0.09 + 0.5 * np.clip(0.2 - v, 0, 0.1)) * width) & (v >= 0.05)
    fibula_head = _ellipse(u, v, lat * 0.175 * width, 0.15, 0.055 * width, 0.04)
    fibula = (np.abs(u - lat * 0.17 * width + 0.03 * lat * (v - 0.15)) < 0.035 * width) & (v > 0.15)
    patella = _ellipse(u, v, lat * 0.04, -0.07, 0.075, 0.085)
    bone = femur_shaft | condyle_medial | condyle_lateral | flare | tibia_plateau | tibia_shaft
    image = 0.12 + 0.18 * soft + 0.40 * bone + 0.35 * (fibula | fibula_head) + 0.10 * patella
    marrow = ((np.abs(u) < 0.055 * width) & (v < -0.25)) | ((np.abs(u) < 0.05 * width) & (v > 0.25))
    image = image - 0.10 * marrow
    image = gaussian_filter(image, sigma=rng.uniform(0.6, 1.2) * size / 128)
    gain, gamma = rng.uniform(0.75, 1.15), rng.uniform(0.8, 1.25)
    image = np.clip(gain * image, 0, 1) ** gamma
    image = image + rng.normal(0, rng.uniform(0.01, 0.04), image.shape)
    return np.clip(image, 0, 1).astype(np.float32)


def _knee_plan(patients: int, rng, first: int = 0):
    plan = []
    for n in range(patients):
        patient = f"OAI{9000000 + (first + n) * 37 + int(rng.integers(0, 37)):07d}"
        sides = ["left", "right"] if rng.random() < 0.4 else [("left", "right")[int(rng.integers(0, 2))]]
        for side in sides:
            plan.append((first + n, patient, side, int(rng.integers(2, 4))))
    return plan


def write_knee(out: Path, patients: int = 40, fmt: str = "png", seed: int = 0, first: int = 0) -> int:
    """Write a knee laterality phantom set; returns the number of images. Patients are numbered from `first`."""
    rng = np.random.default_rng(seed)
    count = 0
    for n, patient, side, images in _knee_plan(patients, rng, first):
        series_uid = generate_uid(entropy_srcs=[str(seed), patient, side])
        for k in range(images):
            image = knee_image(side, rng)
            token = side.upper()
            if fmt == "png":
                name = f"{patient}_BaseLine_3_de3d1_SAG_3D_DESS_WE_{token}.nii.gz_{k}.png"
                Image.fromarray((image * 255).round().astype(np.uint8)).save(out / name)
            elif fmt == "nifti":
                data, affine = from_display(image, spacing=(0.5, 0.5))
                nib.save(nib.Nifti1Image(data, affine), out / f"{patient}_{token}_{k}.nii.gz")
            else:
                folder = out / patient
                folder.mkdir(exist_ok=True)
                ds = _dicom_base(DX_SOP, "DX", patient, n, series_uid, seed, f"{side}{k}")
                ds.ImageLaterality = "L" if side == "left" else "R"
                ds.PixelSpacing = [0.5, 0.5]
                ds.InstanceNumber = k + 1
                _set_pixels(ds, (image * 4095).round().astype(np.uint16), bits=12)
                ds.WindowCenter, ds.WindowWidth = 2048, 4096
                ds.save_as(folder / f"IMG{count:05d}.dcm", enforce_file_format=True)
            count += 1
    return count


# ---------------------------------------------------------------- lung
def lung_volume(label: str, rng: np.random.Generator, shape=LUNG_SHAPE) -> np.ndarray:
    """A chest CT phantom in HU with a benign or malignant nodule near the middle slice."""
    depth, rows, cols = shape
    z, y, x = np.mgrid[0:depth, 0:rows, 0:cols].astype(np.float32)
    y, x = y / (rows - 1) - 0.5, x / (cols - 1) - 0.5
    ax, ay = rng.uniform(0.40, 0.46), rng.uniform(0.28, 0.34)
    body = (x / ax) ** 2 + (y / ay) ** 2 <= 1
    volume = np.where(body, 40.0, -1000.0)
    lung_centres = (-0.19, 0.19)
    lungs = np.zeros(shape, bool)
    for cx in lung_centres:
        taper = 1 - 0.15 * np.abs(z / depth - 0.5)
        lungs |= ((x - cx) / (0.15 * taper)) ** 2 + ((y + 0.02) / (0.22 * taper)) ** 2 <= 1
    volume[lungs] = -850.0
    for _ in range(int(rng.integers(6, 12))):  # vessels: thin tubes drifting through the slices
        cx = rng.choice(lung_centres) + rng.uniform(-0.08, 0.08)
        cy, dx, dy = rng.uniform(-0.15, 0.12), rng.uniform(-0.004, 0.004), rng.uniform(-0.004, 0.004)
        tube = ((x - cx - dx * z) ** 2 + (y - cy - dy * z) ** 2) <= (rng.uniform(0.008, 0.015)) ** 2
        volume[tube & lungs] = 30.0
    # the nodule, in voxel units around a centre inside one lung
    zc = depth // 2 + int(rng.integers(-1, 2))
    cx = rng.choice(lung_centres) + rng.uniform(-0.04, 0.04)
    cy = rng.uniform(-0.08, 0.06)
    dz, dy, dx = (z - zc) * LUNG_SPACING[0], (y - cy) * rows * LUNG_SPACING[1], (x - cx) * cols * LUNG_SPACING[2]
    radius = np.sqrt(dz ** 2 + dy ** 2 + dx ** 2)
    theta, phi = np.arctan2(dy, dx), np.arctan2(dz, np.sqrt(dx ** 2 + dy ** 2))
    if label == "benign":
        r0 = rng.uniform(6, 10)
        nodule = radius <= r0
        volume[nodule] = 60.0
        volume[radius <= r0 * 0.55] = 700.0  # calcified core: a benign sign
    else:
        r0 = rng.uniform(12, 17)
        lobes = int(rng.integers(4, 7))
        edge = r0 * (1 + 0.25 * np.sin(lobes * theta + rng.uniform(0, 6)) * np.cos(phi) + 0.1 * np.sin(3 * phi))
        nodule = radius <= edge
        volume[nodule] = 30.0
        for _ in range(int(rng.integers(6, 10))):  # spicules radiating out of the mass
            a = rng.uniform(-np.pi, np.pi)
            along = dx * np.cos(a) + dy * np.sin(a)
            across = np.abs(-dx * np.sin(a) + dy * np.cos(a))
            spicule = (along > 0) & (along < r0 * 2.0) & (across < 1.5) & (np.abs(dz) < 4.0)
            volume[spicule & body] = 10.0
    volume = volume + rng.normal(0, 15, shape)
    return volume.astype(np.float32)


@dataclass(frozen=True)
class LungDifficulty:
    """A small-nodule phantom: both classes share size and contrast; only the shape (smooth or spiculated) differs.

    Args:
        nodule_mm: range of nodule radii in mm (0.7 mm pixels: 2.1-4.2 mm is 3-6 pixels).
        contrast: nodule HU above the lung parenchyma (-850 HU).
        spread_mm: in-plane distance of the nodule centre from the middle of its lung, at most.
    """

    nodule_mm: tuple[float, float] = (2.1, 4.2)
    contrast: float = 880.0
    spread_mm: float = 3.0
    shape: tuple[int, int, int] = (24, 64, 64)
    spacing: tuple[float, float, float] = (1.6, 0.7, 0.7)  # a 4 mm nodule shows in 3-5 of a grid's 9 slices


LUNG_CENTRES = (-0.2, 0.2)  # of the small-nodule phantom, as fractions of the width from the middle
# "easy": size and a calcified core give the class away; "medium" and "hard": 4.2-6.3 mm and 2.1-4.2 mm nodules
# (3-6 pixels on "hard") that differ only in shape, the benchmark of learning small lesions (benchmarks/README.md,
# "Learning small lesions")
DIFFICULTIES = {"easy": None, "medium": LungDifficulty(nodule_mm=(4.2, 6.3), spread_mm=2.0),
                "hard": LungDifficulty()}


def small_nodule_volume(label: str, rng: np.random.Generator, difficulty: LungDifficulty) -> np.ndarray:
    """A chest CT phantom in HU whose benign and malignant nodules differ only in shape."""
    depth, rows, cols = difficulty.shape
    slice_mm, row_mm, col_mm = difficulty.spacing
    z, y, x = np.mgrid[0:depth, 0:rows, 0:cols].astype(np.float32)
    y, x = y / (rows - 1) - 0.5, x / (cols - 1) - 0.5
    body = (x / rng.uniform(0.42, 0.48)) ** 2 + (y / rng.uniform(0.36, 0.42)) ** 2 <= 1
    volume = np.where(body, 40.0, -1000.0)
    lung_size = (0.16, 0.27)
    lungs = np.zeros(difficulty.shape, bool)
    for cx in LUNG_CENTRES:
        lungs |= ((x - cx) / lung_size[0]) ** 2 + (y / lung_size[1]) ** 2 <= 1
    volume[lungs] = -850.0
    for _ in range(int(rng.integers(4, 9))):  # vessels: thin tubes drifting through the slices, like spicules in-plane
        cx = rng.choice(LUNG_CENTRES) + rng.uniform(-0.1, 0.1)
        cy, dx, dy = rng.uniform(-0.2, 0.2), rng.uniform(-0.01, 0.01), rng.uniform(-0.01, 0.01)
        tube = ((x - cx - dx * z) ** 2 + (y - cy - dy * z) ** 2) <= (rng.uniform(0.012, 0.02)) ** 2
        volume[tube & lungs] = -850.0 + difficulty.contrast * rng.uniform(0.6, 0.9)
    core, spicules = nodule_masks(label, rng, difficulty)
    value = -850.0 + difficulty.contrast
    volume[spicules & body] = value - 0.2 * difficulty.contrast
    volume[core & body] = value
    volume = volume + rng.normal(0, 15, difficulty.shape)
    return volume.astype(np.float32)


def nodule_masks(label: str, rng: np.random.Generator, difficulty: LungDifficulty) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (core, spicules) of one nodule near the middle slice and the middle of one lung.

    Both classes draw the radius from the same range; benign cores are spheres, malignant ones lobulated with
    spicules about one pixel wide radiating out of them.
    """
    depth, rows, cols = difficulty.shape
    slice_mm, row_mm, col_mm = difficulty.spacing
    zc = depth // 2 + int(rng.integers(-1, 2))
    angle, distance = rng.uniform(-np.pi, np.pi), difficulty.spread_mm * np.sqrt(rng.uniform())
    cx = (rng.choice(LUNG_CENTRES) + 0.5) * (cols - 1) * col_mm + distance * np.cos(angle)  # mm
    cy = 0.5 * (rows - 1) * row_mm + distance * np.sin(angle)
    grid_z, grid_y, grid_x = np.mgrid[0:depth, 0:rows, 0:cols].astype(np.float32)
    dz, dy, dx = (grid_z - zc) * slice_mm, grid_y * row_mm - cy, grid_x * col_mm - cx
    radius = np.sqrt(dz ** 2 + dy ** 2 + dx ** 2)
    r0 = rng.uniform(*difficulty.nodule_mm)
    spicules = np.zeros(difficulty.shape, bool)
    if label == "benign":
        return radius <= r0, spicules
    theta, phi = np.arctan2(dy, dx), np.arctan2(dz, np.sqrt(dx ** 2 + dy ** 2))
    edge = r0 * (1 + 0.2 * np.sin(int(rng.integers(4, 7)) * theta + rng.uniform(0, 6)) * np.cos(phi))
    for _ in range(int(rng.integers(5, 8))):
        a = rng.uniform(-np.pi, np.pi)
        along = dx * np.cos(a) + dy * np.sin(a)
        across = np.abs(-dx * np.sin(a) + dy * np.cos(a))
        spicules |= (along > 0) & (along < r0 * 1.8) & (across < 0.6 * col_mm) & (np.abs(dz) < r0 * 0.8)
    return radius <= edge, spicules


def write_lung(out: Path, patients: int = 100, fmt: str = "dicom", seed: int = 0,
               difficulty: str | LungDifficulty = "easy", first: int = 0) -> int:
    """Write a lung nodule phantom set as class folders; returns the number of volumes. Patients are numbered
    from `first`."""
    if fmt == "png":
        raise UserError("synth lung writes volumes: use --format dicom or --format nifti")
    if isinstance(difficulty, str):
        if difficulty not in DIFFICULTIES:
            raise UserError(f"--difficulty must be one of {', '.join(DIFFICULTIES)}")
        difficulty = DIFFICULTIES[difficulty]
    spacing = LUNG_SPACING if difficulty is None else difficulty.spacing
    rng = np.random.default_rng(seed)
    for n in range(patients):
        label = ("benign", "malignant")[n % 2]
        patient = f"LUNG{first + n:04d}"
        volume = lung_volume(label, rng) if difficulty is None else small_nodule_volume(label, rng, difficulty)
        folder = out / label
        folder.mkdir(exist_ok=True)
        if fmt == "nifti":
            data, affine = from_display(volume, spacing)
            nib.save(nib.Nifti1Image(data.astype(np.int16), affine), folder / f"{patient}.nii.gz")
            continue
        series = folder / patient
        series.mkdir(exist_ok=True)
        series_uid = generate_uid(entropy_srcs=[str(seed), patient, "ct"])
        stored = np.clip(np.round(volume) + 1024, 0, 4095).astype(np.uint16)
        order = rng.permutation(volume.shape[0])  # files written in shuffled order, with opaque names
        corner = [-volume.shape[2] * spacing[2] / 2, -volume.shape[1] * spacing[1] / 2]
        for k in order:
            ds = _dicom_base(CT_SOP, "CT", patient, first + n, series_uid, seed, f"slice{k}")
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [*corner, round(float(k * spacing[0]), 3)]
            ds.PixelSpacing = [spacing[1], spacing[2]]
            ds.SliceThickness = spacing[0]
            ds.InstanceNumber = int(k) + 1
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
            _set_pixels(ds, stored[k], bits=12)
            ds.save_as(series / f"{ds.SOPInstanceUID.split('.')[-1][-10:]}", enforce_file_format=True)
    return patients


# ---------------------------------------------------------------- DICOM helpers
def write_ct_series(folder: Path, volume: np.ndarray, geometry, patient: str, number: int, series_uid: str,
                    seed: int, rng: np.random.Generator) -> None:
    """Write an HU volume (slices, rows, cols) as an axial CT series with `geometry` (synth_points.Geometry).

    Files get opaque names and are written in shuffled order; instance numbers run head to feet or feet to
    head, as scanners differ: only ImagePositionPatient orders the slices.
    """
    folder.mkdir()
    stored = np.clip(np.round(volume) + 1024, 0, 4095).astype(np.uint16)
    depth = volume.shape[0]
    downwards = rng.random() < 0.5
    frame = generate_uid(entropy_srcs=[str(seed), patient, "frame"])
    for k in rng.permutation(depth):
        ds = _dicom_base(CT_SOP, "CT", patient, number, series_uid, seed, f"points-slice{k}")
        ds.FrameOfReferenceUID = frame
        ds.PatientPosition = "HFS"
        ds.BodyPartExamined = "CHEST"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]  # rows run along LPS x, columns along y: axial
        position = geometry.origin + np.array([0.0, 0.0, k * geometry.step_mm])
        ds.ImagePositionPatient = [round(float(c), 4) for c in position]
        ds.SliceLocation = round(float(position[2]), 4)
        ds.PixelSpacing = [geometry.pixel_mm, geometry.pixel_mm]
        ds.SliceThickness = geometry.thickness_mm
        ds.SpacingBetweenSlices = geometry.step_mm
        ds.InstanceNumber = int(depth - k if downwards else k + 1)
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = -600, 1500  # lung window
        _set_pixels(ds, stored[k], bits=12)
        ds.save_as(folder / f"{ds.SOPInstanceUID.split('.')[-1][-10:]}", enforce_file_format=True)


def _dicom_base(sop_class, modality, patient, number, series_uid, seed, instance) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(seed), patient, series_uid, instance])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality = modality
    ds.PatientID = patient
    # a realistic but fake name: the tool must never print or write it
    ds.PatientName = f"PHANTOM^SUBJECT{number:04d}"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(seed), patient, "study"])
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    return ds


def _set_pixels(ds: Dataset, pixels: np.ndarray, bits: int) -> None:
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()


def synth(kind: str, out: Path, patients: int, fmt: str | None, seed: int,
          difficulty: str | LungDifficulty = "easy", points: bool = False, masks: bool = False, first: int = 0
          ) -> tuple[Path, int]:
    """Write a phantom set into a new folder `out` (written beside it, then renamed into place): `kind` "knee",
    "lung", or a benchmark's layout, "luna16" or "luna25" (luna.py).

    `difficulty` (lung only): a name of DIFFICULTIES, or a LungDifficulty.
    `points` (lung only): several nodules per patient, labelled in OUT/points.csv (see synth_points);
    `masks` adds their label maps. Patients are numbered from `first`: a set of unseen patients takes numbers
    after the training set's, and another `seed` (`first` changes the ids, not the anatomy the seed draws).
    """
    if kind not in ("knee", "lung", *BENCHMARKS):
        raise UserError("synth writes 'knee', 'lung', 'luna16' or 'luna25'")
    if kind in BENCHMARKS and (fmt is not None or points or masks or difficulty != "easy"):
        raise UserError(f"synth {kind} writes the benchmark's own files and tables: leave out --format, --points, "
                        "--masks and --difficulty")
    if kind == "knee" and difficulty != "easy":
        raise UserError("--difficulty is an option of synth lung")
    if kind == "knee" and points:
        raise UserError("--points is an option of synth lung")
    if points and difficulty != "easy":
        raise UserError("--points writes its own nodules: leave out --difficulty")
    if masks and not points:
        raise UserError("--masks needs --points: the masks outline the nodules listed in points.csv")
    if points and fmt == "png":
        raise UserError("synth lung writes volumes: use --format dicom or --format nifti")
    if isinstance(difficulty, str) and difficulty not in DIFFICULTIES:
        raise UserError(f"--difficulty must be one of {', '.join(DIFFICULTIES)}")
    fmt = fmt or ("png" if kind == "knee" else "dicom")
    if fmt not in FORMATS and kind not in BENCHMARKS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}")
    if patients < 1:
        raise UserError("--patients must be at least 1")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already exists and is not empty")
    temp = out.parent / f".{out.name}.partial"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    try:
        if kind in BENCHMARKS:
            count = BENCHMARKS[kind](temp, patients, seed)
        elif kind == "knee":
            count = write_knee(temp, patients, fmt, seed, first)
        elif points:
            from perceiver_med.synth.nodules import write_points

            count = write_points(temp, patients, fmt, seed, masks, first=first)
        else:
            count = write_lung(temp, patients, fmt, seed, difficulty, first)
        if out.exists():
            out.rmdir()
        temp.rename(out)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return out, count
