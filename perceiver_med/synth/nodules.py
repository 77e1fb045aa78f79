"""A chest CT phantom with several labelled nodules per patient and a LUNA16-style points CSV.

`synth lung OUT --points` writes, per patient, one axial CT series (or NIfTI) whose geometry varies like
real scanners' (pixel spacing, slice thickness and spacing, table position, slice order), a body with two
lungs, vessels as distractors, and 1-4 nodules, each benign (a smooth ellipsoid) or malignant (lobulated,
with spicules). Both classes draw size and contrast from the same ranges: only the shape tells them apart.

OUT/points.csv holds one row per nodule, its centre in DICOM patient coordinates (LPS, mm), as LUNA16's
annotations.csv does: `seriesuid,coordX,coordY,coordZ,diameter_mm,label,patient_id` (NIfTI: `path`, relative
to the CSV, instead of `seriesuid`). The scans lie in OUT/scans/, and with `masks` a label map per scan in
OUT/masks/<patient_id>.nii.gz (voxel value 1: a benign nodule, 2: a malignant one; MASK_VALUES), kept apart from the
scans so that no reader takes a mask for a scan.

Everything is rendered in millimetres at the voxel centres, so the points are the centres exactly, whatever
the spacing. The in-plane field of view is small (`ChestLayout`): at real pixel spacing a real 350 mm field of
view would need 512-pixel slices, about 2 GB for 60 patients; the anatomy scales with the field of view, nodule
sizes in millimetres do not.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
from pydicom.uid import generate_uid
from scipy.ndimage import gaussian_filter

from perceiver_med.csvfiles import write_csv

LUNG_HU, BODY_HU, FAT_HU, BONE_HU, AIR_HU = -850.0, 40.0, -100.0, 500.0, -1000.0
POINT_COLUMNS = ["coordX", "coordY", "coordZ", "diameter_mm", "label", "patient_id"]


@dataclass(frozen=True)
class ChestLayout:
    """Per-patient ranges of the nodule-points phantom; each patient draws its own values.

    Args:
        matrix: rows (= columns) of a slice; with `pixel_mm` this sets the field of view (62-108 mm by default).
        pixel_mm: in-plane pixel spacing (real chest CT: 0.6-0.9 mm).
        thickness_mm: slice thickness; a quarter of the patients get overlapping slices (spacing 0.8 x thickness).
        length_mm: scanned length along the body axis; the slice count follows, clipped to `slices`.
        nodules: fewest and most nodules per patient.
        diameter_mm: nodule diameters (twice the radius of the sphere, or of the lobulated core), log-uniform.
        contrast_hu: nodule HU above the lung parenchyma (-850 HU); vessels get 60-90% of the patient's value.
    """

    matrix: tuple[int, int] = (104, 120)
    pixel_mm: tuple[float, float] = (0.6, 0.9)
    thickness_mm: tuple[float, float] = (1.0, 2.5)
    length_mm: tuple[float, float] = (60.0, 90.0)
    slices: tuple[int, int] = (40, 120)
    nodules: tuple[int, int] = (1, 4)
    diameter_mm: tuple[float, float] = (4.0, 12.0)
    contrast_hu: tuple[float, float] = (750.0, 900.0)

    def __post_init__(self):
        if min(self.diameter_mm) < max(self.thickness_mm) * 1.5:
            # a smaller nodule could fall between two slice centres and vanish from the scan
            raise ValueError("diameter_mm must start at 1.5 x the thickest slice or above")


@dataclass
class Geometry:
    """An axial series: the centre of voxel (column i, row j, slice k) is at LPS mm
    origin + (i * pixel, j * pixel, k * step)."""

    shape: tuple[int, int, int]  # slices, rows, cols
    pixel_mm: float
    thickness_mm: float
    step_mm: float  # SpacingBetweenSlices
    origin: np.ndarray  # LPS mm of voxel (0, 0, 0): ImagePositionPatient of the most inferior slice

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """LPS mm of the voxel centres along z (slices), y (rows) and x (cols), broadcastable to `shape`."""
        depth, rows, cols = self.shape
        z = self.origin[2] + np.arange(depth, dtype=np.float32)[:, None, None] * self.step_mm
        y = self.origin[1] + np.arange(rows, dtype=np.float32)[None, :, None] * self.pixel_mm
        x = self.origin[0] + np.arange(cols, dtype=np.float32)[None, None, :] * self.pixel_mm
        return z, y, x

    def ras_affine(self) -> np.ndarray:
        """Voxel (i, j, k) -> RAS mm, as NIfTI stores it: LPS with x and y negated."""
        lps = np.diag([self.pixel_mm, self.pixel_mm, self.step_mm, 1.0])
        lps[:3, 3] = self.origin
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


@dataclass
class Nodule:
    centre: np.ndarray  # LPS mm
    diameter_mm: float
    label: str

    @property
    def reach_mm(self) -> float:
        """How far from the centre the nodule can reach (spicules: 1.8 radii), whatever its class."""
        return 0.9 * self.diameter_mm


def draw_geometry(rng: np.random.Generator, layout: ChestLayout) -> Geometry:
    matrix = int(rng.integers(layout.matrix[0] // 8, layout.matrix[1] // 8 + 1)) * 8
    pixel = round(float(rng.uniform(*layout.pixel_mm)), 4)
    thickness = round(float(rng.uniform(*layout.thickness_mm)) * 4) / 4  # scanners offer steps like 1.25 mm
    step = round(thickness * 0.8, 3) if rng.random() < 0.25 else thickness
    depth = int(np.clip(round(rng.uniform(*layout.length_mm) / step), *layout.slices))
    # the table and the reconstruction centre are never quite at the origin of the scanner's coordinates
    half = (matrix - 1) / 2 * pixel
    origin = np.array([-half + rng.uniform(-15, 15), -half + rng.uniform(-40, 0), rng.uniform(-350, -100)])
    return Geometry((depth, matrix, matrix), pixel, thickness, step, np.round(origin, 3))


class Chest:
    """Body, lungs and spine of one patient, as functions of LPS mm (the anatomy scales with the field of view)."""

    def __init__(self, geometry: Geometry, rng: np.random.Generator):
        depth, rows, cols = geometry.shape
        fov = cols * geometry.pixel_mm
        self.centre = geometry.origin[:2] + (np.array([cols, rows]) - 1) / 2 * geometry.pixel_mm
        self.body_axes = np.array([rng.uniform(0.43, 0.47), rng.uniform(0.34, 0.38)]) * fov
        self.lung_x = (-0.21 * fov, 0.21 * fov)  # patient right, left (LPS x grows to the left)
        self.lung_y = -0.02 * fov
        self.lung_axes = np.array([rng.uniform(0.15, 0.17), rng.uniform(0.25, 0.28)]) * fov
        self.z_range = (geometry.origin[2], geometry.origin[2] + (depth - 1) * geometry.step_mm)
        self.spine = (0.27 * fov, 0.05 * fov)  # y offset, radius

    def lung_scale(self, z):
        """The lungs narrow towards the apex (superior end of the scan)."""
        top = (z - self.z_range[0]) / max(self.z_range[1] - self.z_range[0], 1e-6)
        return 1.0 - 0.2 * top

    def in_lung(self, x, y, z, side: int, margin_mm=0.0):
        """Whether (x, y, z) is inside lung `side` (0: right, 1: left) by at least margin_mm (approximately)."""
        scale = self.lung_scale(z)
        ax, ay = self.lung_axes[0] * scale - margin_mm, self.lung_axes[1] * scale - margin_mm
        dx = x - self.centre[0] - self.lung_x[side]
        dy = y - self.centre[1] - self.lung_y
        return (ax > 0) & (ay > 0) & ((dx / ax) ** 2 + (dy / ay) ** 2 <= 1)

    def render(self, geometry: Geometry):
        """(HU volume, lungs mask)."""
        z, y, x = geometry.axes()
        u, v = (x - self.centre[0]) / self.body_axes[0], (y - self.centre[1]) / self.body_axes[1]
        body2d = u ** 2 + v ** 2
        volume = np.where(body2d <= 1, BODY_HU, AIR_HU).astype(np.float32)
        volume = np.where((body2d <= 1) & (body2d > 0.82), FAT_HU, volume)  # subcutaneous fat
        spine = (x - self.centre[0]) ** 2 + (y - self.centre[1] - self.spine[0]) ** 2 <= self.spine[1] ** 2
        volume = np.where(spine, BONE_HU, volume)
        volume = np.broadcast_to(volume, geometry.shape).copy()
        lungs = self.in_lung(x, y, z, 0) | self.in_lung(x, y, z, 1)
        volume[lungs] = LUNG_HU
        return volume, lungs


def place_nodules(chest: Chest, geometry: Geometry, rng: np.random.Generator, layout: ChestLayout,
                  label_of: Callable[[int], str] | None = None) -> list[Nodule]:
    """1-4 nodules, each wholly inside a lung, spicules included, and apart from the others; `label_of(n)` is the
    class of the n-th nodule placed (None: each draws benign or malignant at even odds).

    Both classes keep the same distance from the lung's edge (that of spicules), so that the place of a nodule
    tells nothing of its class, and no nodule is joined to the chest wall (the tests find nodules by
    thresholding). Where a large nodule fits nowhere, smaller ones are tried.
    """
    wanted = int(rng.integers(layout.nodules[0], layout.nodules[1] + 1))
    nodules: list[Nodule] = []
    low, high = np.log(layout.diameter_mm[0]), np.log(layout.diameter_mm[1])
    for attempt in range(400):
        if len(nodules) == wanted:
            break
        diameter = round(float(np.exp(rng.uniform(low, high if attempt < 200 else low + 0.3))), 2)
        label = label_of(len(nodules)) if label_of else ("benign", "malignant")[int(rng.integers(0, 2))]
        nodule = Nodule(np.zeros(3), diameter, label)
        reach = nodule.reach_mm
        clear_z = reach + geometry.thickness_mm
        z = rng.uniform(chest.z_range[0] + clear_z, chest.z_range[1] - clear_z)
        side = int(rng.integers(0, 2))
        x = chest.centre[0] + chest.lung_x[side] + rng.uniform(-1, 1) * chest.lung_axes[0]
        y = chest.centre[1] + chest.lung_y + rng.uniform(-1, 1) * chest.lung_axes[1]
        if not chest.in_lung(x, y, z, side, margin_mm=reach + 1.0):
            continue
        nodule.centre = np.array([x, y, z])
        if any(np.linalg.norm(nodule.centre - other.centre) < reach + other.reach_mm + 3.0 for other in nodules):
            continue
        nodules.append(nodule)
    return nodules


def _draw_nodule(nodule: Nodule, geometry: Geometry, rng: np.random.Generator, contrast: float,
                 volume: np.ndarray, lungs: np.ndarray, labels: np.ndarray, value: int) -> None:
    """Render one nodule into `volume` (and its label into `labels`), in a box around its centre."""
    reach = nodule.reach_mm + 2 * geometry.pixel_mm
    z, y, x = geometry.axes()
    box = []
    for axis, coordinate, centre in ((0, z, nodule.centre[2]), (1, y, nodule.centre[1]), (2, x, nodule.centre[0])):
        values = coordinate.reshape(-1)
        inside = np.flatnonzero(np.abs(values - centre) <= reach)
        box.append(slice(int(inside[0]), int(inside[-1]) + 1))
    box = tuple(box)
    dz, dy, dx = z[box[0]] - nodule.centre[2], y[:, box[1]] - nodule.centre[1], x[:, :, box[2]] - nodule.centre[0]
    radius = nodule.diameter_mm / 2
    value_hu = LUNG_HU + contrast
    if nodule.label == "benign":
        # a smooth ellipsoid, slightly flattened along a random in-plane direction
        angle, squash = rng.uniform(-np.pi, np.pi), rng.uniform(0.85, 1.0)
        along = dx * np.cos(angle) + dy * np.sin(angle)
        across = -dx * np.sin(angle) + dy * np.cos(angle)
        core = (along / (radius * squash ** -0.5)) ** 2 + (across / (radius * squash ** 0.5)) ** 2 \
            + (dz / radius) ** 2 <= 1
        spicules = np.zeros_like(core)
    else:
        distance = np.sqrt(dz ** 2 + dy ** 2 + dx ** 2)
        theta, phi = np.arctan2(dy, dx), np.arctan2(dz, np.sqrt(dx ** 2 + dy ** 2))
        edge = radius * (1 + 0.2 * np.sin(int(rng.integers(4, 7)) * theta + rng.uniform(0, 6)) * np.cos(phi))
        core = distance <= edge
        spicules = np.zeros_like(core)
        for _ in range(int(rng.integers(5, 8))):
            a = rng.uniform(-np.pi, np.pi)
            tilt = rng.uniform(-0.3, 0.3)  # spicules leave the mass slightly out of the axial plane
            along = dx * np.cos(a) + dy * np.sin(a)
            across = np.abs(-dx * np.sin(a) + dy * np.cos(a))
            spicules |= ((along > 0) & (along < nodule.reach_mm) & (across < 0.6 * geometry.pixel_mm)
                         & (np.abs(dz - tilt * along) < max(0.4 * radius, 0.6 * geometry.step_mm)))
    region = volume[box]
    spicules &= lungs[box]  # (placement keeps them inside; a vessel-bright spicule in soft tissue is none)
    region[spicules] = value_hu - 0.2 * contrast
    region[core] = value_hu
    labels[box][core | spicules] = value


def _add_vessels(chest: Chest, geometry: Geometry, rng: np.random.Generator, contrast: float,
                 nodules: list[Nodule], volume: np.ndarray, lungs: np.ndarray) -> None:
    """Thin bright tubes through the lungs: dots in an axial slice, like small nodules; they keep clear of the
    nodules so that a nodule is never joined to a vessel (the oracle in the tests needs them apart)."""
    z, y, x = geometry.axes()
    clear = np.zeros(geometry.shape, bool)
    for nodule in nodules:
        gap = nodule.reach_mm + 3.0
        clear |= (z - nodule.centre[2]) ** 2 + (y - nodule.centre[1]) ** 2 + (x - nodule.centre[0]) ** 2 <= gap ** 2
    for _ in range(int(rng.integers(8, 17))):
        side = int(rng.integers(0, 2))
        lung = chest.centre + np.array([chest.lung_x[side], chest.lung_y])
        start = lung + rng.uniform(-0.8, 0.8, 2) * chest.lung_axes
        slope = rng.uniform(-0.5, 0.5, 2)  # mm in-plane per mm along z
        centre_x = start[0] + slope[0] * (z - chest.z_range[0])
        centre_y = start[1] + slope[1] * (z - chest.z_range[0])
        radius = rng.uniform(0.5, 1.5) * np.sqrt(1 + (slope ** 2).sum())  # the cut through a tilted tube is wider
        tube = (x - centre_x) ** 2 + (y - centre_y) ** 2 <= radius ** 2
        volume[tube & lungs & ~clear] = LUNG_HU + contrast * rng.uniform(0.6, 0.9)


def chest_volume(rng: np.random.Generator, layout: ChestLayout = ChestLayout(),
                 label_of: Callable[[int], str] | None = None):
    """One patient: (HU volume (slices, rows, cols), label map (0 or nodule number), Geometry, nodules); `label_of`
    as place_nodules takes it."""
    geometry = draw_geometry(rng, layout)
    chest = Chest(geometry, rng)
    volume, lungs = chest.render(geometry)
    nodules = place_nodules(chest, geometry, rng, layout, label_of)
    contrast = float(rng.uniform(*layout.contrast_hu))
    _add_vessels(chest, geometry, rng, contrast, nodules, volume, lungs)
    labels = np.zeros(geometry.shape, np.uint8)
    for number, nodule in enumerate(nodules, start=1):
        _draw_nodule(nodule, geometry, rng, contrast, volume, lungs, labels, number)
    # the slice sensitivity profile (FWHM = thickness) and the in-plane point spread, then quantum noise
    sigma_z = geometry.thickness_mm / 2.355 / geometry.step_mm
    volume = gaussian_filter(volume, sigma=(sigma_z, 0.5, 0.5))
    volume += rng.normal(0, rng.uniform(12, 25), geometry.shape).astype(np.float32)
    return volume, labels, geometry, nodules


MASK_VALUES = {"benign": 1, "malignant": 2}  # `points --mask-labels 1=benign,2=malignant` reads them back


def write_points(out: Path, patients: int, fmt: str, seed: int, masks: bool = False,
                 layout: ChestLayout = ChestLayout(), first: int = 0) -> int:
    """Write the nodule-points phantom into `out` (scans/, points.csv, masks/); returns the number of scans.
    Patients are numbered from `first`."""
    from perceiver_med.synth.phantoms import write_ct_series

    scans, mask_folder = out / "scans", out / "masks"
    scans.mkdir()
    if masks:
        mask_folder.mkdir()
    rows = []
    for n in range(patients):
        patient = f"LUNG{first + n:04d}"
        # one generator per patient for the anatomy, another for the files: DICOM and NIfTI get the same anatomy
        volume, labels, geometry, nodules = chest_volume(np.random.default_rng([seed, n]), layout)
        if fmt == "nifti":
            name = f"{patient}.nii.gz"
            hu = np.clip(np.round(volume), -1024, 3071).astype(np.int16)
            nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0), geometry.ras_affine()), scans / name)
            reference = f"scans/{name}"
        else:
            reference = generate_uid(entropy_srcs=[str(seed), patient, "ct-points"])  # the SeriesInstanceUID
            files_rng = np.random.default_rng([seed, n, 1])
            write_ct_series(scans / patient, volume, geometry, patient, first + n, reference, seed, files_rng)
        if masks:  # a semantic label map, as segmentation data sets give them: the value names the class
            classes = np.zeros_like(labels)
            for k, nodule in enumerate(nodules, 1):
                classes[labels == k] = MASK_VALUES[nodule.label]
            image = nib.Nifti1Image(classes.transpose(2, 1, 0), geometry.ras_affine())
            nib.save(image, mask_folder / f"{patient}.nii.gz")
        for nodule in nodules:
            x, y, z = (float(c) for c in nodule.centre)
            rows.append([reference, x, y, z, nodule.diameter_mm, nodule.label, patient])
    write_csv(out / "points.csv", ["path" if fmt == "nifti" else "seriesuid", *POINT_COLUMNS], rows)
    return patients
