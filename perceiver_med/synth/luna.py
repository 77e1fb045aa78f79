"""LUNA25- and LUNA16-shaped phantom sets: the benchmarks' own files, folders and tables, around phantom chests.

They let a user (and the tests) run the commands of the README's LUNA sections on a laptop before downloading
hundreds of gigabytes, and they carry what makes the real sets hard to get right:

- `luna25`: OUT/luna25_images/<SeriesInstanceUID>.mha (zlib-compressed MetaImage) and OUT/LUNA25_TABLE with the
  real table's columns (LUNA25_COLUMNS). A patient has up to three studies (other dates, another table position,
  every second one stored feet first: a negative z direction), and each nodule reappears in every study under one
  NoduleID. Table positions spread over -1,600..+1,900 mm, as the real table's z does (-1,618..+1,980). Every fourth
  patient has one malignant nodule (label 1), all other nodules are benign (label 0): about 1 in 10, as LUNA25's
  555 of 6,163.
- `luna16`: OUT/subset0..subsetK/<seriesuid>.mhd + .raw (uncompressed, as LUNA16 ships them), OUT/annotations.csv
  (`seriesuid,coordX,coordY,coordZ,diameter_mm`, every nodule) and OUT/candidates_V2.csv
  (`seriesuid,coordX,coordY,coordZ,class`): each nodule's centre as a class 1 candidate, and CANDIDATES_PER_NODULE
  points of lung parenchyma away from every nodule as class 0 ones.

Coordinates are world millimetres (ITK's, which are DICOM LPS) of the nodule centres, exactly, as nodules.py renders
them; malignant nodules are lobulated and spiculated, benign ones smooth (nodules.py).
"""
from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from perceiver_med.csvfiles import write_csv
from perceiver_med.synth.nodules import ChestLayout, Geometry, chest_volume

LUNA25_TABLE = "LUNA25_Public_Training_Development_Data.csv"
LUNA25_IMAGES = "luna25_images"
LUNA25_COLUMNS = ["PatientID", "SeriesInstanceUID", "StudyDate", "CoordX", "CoordY", "CoordZ", "LesionID",
                  "AnnotationID", "NoduleID", "label", "Age_at_StudyDate", "Gender"]
LUNA16_ANNOTATIONS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
LUNA16_CANDIDATES = ["seriesuid", "coordX", "coordY", "coordZ", "class"]
CANDIDATES_PER_NODULE = 10
# small chests: a few patients are written in seconds, and nodules still span several 1-2.5 mm slices
LAYOUT = ChestLayout(matrix=(88, 104), length_mm=(50.0, 70.0), slices=(24, 70), nodules=(1, 3))


def write_image(path: Path, volume: np.ndarray, geometry: Geometry, feet_first: bool = False,
                compress: bool = True) -> None:
    """An HU volume (slices, rows, cols) as a MetaImage with `geometry`; feet first, its slices are stored from
    the head down under a negative z direction (the same voxels in the same places)."""
    import SimpleITK as sitk

    hu = np.clip(np.round(volume), -1024, 3071).astype(np.int16)
    origin = geometry.origin.astype(float).copy()
    direction = np.eye(3)
    if feet_first:
        hu = hu[::-1]
        origin[2] += (volume.shape[0] - 1) * geometry.step_mm
        direction[2, 2] = -1.0
    image = sitk.GetImageFromArray(np.ascontiguousarray(hu))  # numpy (k, j, i): ITK (i, j, k)
    image.SetSpacing((geometry.pixel_mm, geometry.pixel_mm, geometry.step_mm))
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    sitk.WriteImage(image, str(path), useCompression=compress)


def _moved(geometry: Geometry, origin: np.ndarray) -> Geometry:
    return Geometry(geometry.shape, geometry.pixel_mm, geometry.thickness_mm, geometry.step_mm,
                    np.round(origin, 3))


def write_luna25(out: Path, patients: int, seed: int, layout: ChestLayout = LAYOUT) -> int:
    """Write the LUNA25-shaped set into `out` (see the module); returns the number of scans (studies)."""
    images = out / LUNA25_IMAGES
    images.mkdir()
    rows, scans = [], 0
    for n in range(patients):
        rng = np.random.default_rng([seed, n])
        malignant = n % 4 == 1
        volume, _, geometry, nodules = chest_volume(
            rng, layout, lambda k: "malignant" if malignant and k == 0 else "benign")
        patient = f"{100000 + 37 * n + int(rng.integers(0, 37))}"
        gender, age = ("Male", "Female")[int(rng.integers(0, 2))], int(rng.integers(55, 75))
        first = datetime.date(1999, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 700)))
        for study in range(int(rng.integers(1, 4))):
            date = first + datetime.timedelta(days=365 * study + int(rng.integers(0, 30)))
            table = np.array([rng.uniform(-20, 20), rng.uniform(-20, 20), 0.0])
            table[2] = rng.uniform(-1600, 1900 - volume.shape[0] * geometry.step_mm) - geometry.origin[2]
            moved = _moved(geometry, geometry.origin + table)
            uid = generate_uid(entropy_srcs=[str(seed), patient, str(study), "luna25"])
            follow_up = volume + rng.normal(0, 8, volume.shape).astype(np.float32)  # another exposure's noise
            write_image(images / f"{uid}.mha", follow_up, moved, feet_first=study % 2 == 1)
            scans += 1
            for lesion, nodule in enumerate(nodules, start=1):
                x, y, z = (float(c) for c in nodule.centre + (moved.origin - geometry.origin))
                rows.append([patient, uid, date.strftime("%Y%m%d"), x, y, z, lesion,
                             f"{patient}_{lesion}_{date.strftime('%Y%m%d')}", f"{patient}_{lesion}",
                             int(nodule.label == "malignant"), age + study, gender])
    write_csv(out / LUNA25_TABLE, LUNA25_COLUMNS, rows)
    return scans


def write_luna16(out: Path, patients: int, seed: int, subsets: int = 10, layout: ChestLayout = LAYOUT) -> int:
    """Write the LUNA16-shaped set into `out` (see the module): patient n in subset n % `subsets`; returns the
    number of scans."""
    annotations, candidates = [], []
    for n in range(patients):
        rng = np.random.default_rng([seed, n, 16])
        volume, labels, geometry, nodules = chest_volume(rng, layout)
        folder = out / f"subset{n % subsets}"
        folder.mkdir(exist_ok=True)
        uid = generate_uid(entropy_srcs=[str(seed), str(n), "luna16"])
        write_image(folder / f"{uid}.mhd", volume, geometry, compress=False)
        for nodule in nodules:
            x, y, z = (float(c) for c in nodule.centre)
            annotations.append([uid, x, y, z, nodule.diameter_mm])
            candidates.append([uid, x, y, z, 1])
        candidates += [[uid, *point, 0] for point in _parenchyma(volume, labels, geometry, nodules, rng)]
    write_csv(out / "annotations.csv", LUNA16_ANNOTATIONS, annotations)
    write_csv(out / "candidates_V2.csv", LUNA16_CANDIDATES, candidates)
    return patients


def _parenchyma(volume, labels, geometry: Geometry, nodules, rng) -> list[list[float]]:
    """CANDIDATES_PER_NODULE lung points per nodule, each 10 mm or more from every nodule's reach and 20 mm inside
    the scan's ends, in LPS mm: the false candidates of a detector."""
    z, y, x = geometry.axes()
    margin = int(np.ceil(20.0 / geometry.step_mm))
    lung = (volume > -930) & (volume < -770) & (labels == 0)  # parenchyma (-850 HU), not the air around the body
    lung[:margin], lung[-margin:] = False, False
    for nodule in nodules:
        near = (z - nodule.centre[2]) ** 2 + (y - nodule.centre[1]) ** 2 + (x - nodule.centre[0]) ** 2
        lung &= near > (nodule.reach_mm + 10.0) ** 2
    places = np.argwhere(lung)
    chosen = places[rng.choice(len(places), size=min(len(places), CANDIDATES_PER_NODULE * len(nodules)),
                               replace=False)]
    return [[float(geometry.origin[0] + c * geometry.pixel_mm), float(geometry.origin[1] + r * geometry.pixel_mm),
             float(geometry.origin[2] + k * geometry.step_mm)] for k, r, c in chosen]
