"""Segmentation masks -> a points CSV: each connected component of a label map is one lesion at its centroid.

A mask is a NIfTI label map on its scan's voxel grid, stored in any axis order (grids are compared in patient
millimetres, not as arrays), or a DICOM SEG (read by highdicom; it may cover only the slices it segments). In
each label value separately, voxels touching by a face, an edge or a corner (26-connectivity) form one
component; its row gives the centroid in DICOM patient coordinates (LPS mm, through the mask's own affine: a
NIfTI's RAS with x and y negated), `diameter_mm` of the sphere of the same volume, the label, the patient id.
`split DATA --points`, `predict` and `explain` then take the file as they take LUNA16's annotations.csv.

How a mask finds its scan. nnU-Net, the Medical Segmentation Decathlon and MONAI's datasets keep images and
label maps in two folders under the same names (imagesTr/lung_001.nii.gz, labelsTr/lung_001.nii.gz), and so
does `synth lung --points --masks` (scans/LUNG0001/, masks/LUNG0001.nii.gz):
- a DICOM SEG names the series it segments (ReferencedSeriesSequence): matched by SeriesInstanceUID. It may lie
  beside its CT (a TCIA download): MASKS may then be the scans folder, where only SEG files are taken as masks;
- a NIfTI mask by name: MASKS/<name>.nii.gz for SCANS/<name>/ (a DICOM series folder) or SCANS/<name>.nii.gz.
  The same relative path under both folders matches first (MASKS/benign/A.nii.gz for SCANS/benign/A/), then the
  bare name where one scan has it. nnU-Net's channel suffix on a scan (case_0000.nii.gz) and a _seg, _mask or
  _label suffix on a mask (BraTS's case_seg.nii.gz) are ignored.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perceiver_med.csvfiles import printable, write_csv
from perceiver_med.errors import ScanError, UserError
from perceiver_med.files import refuse_inside
from perceiver_med.io import discover, read_label_map, read_scan
from perceiver_med.io.discover import Scan, Skip
from perceiver_med.io.label_maps import is_segmentation, segmented_series
from perceiver_med.inputs.labels import folder_label
from perceiver_med.io.nifti import SUFFIXES as NIFTI_SUFFIXES, is_nifti
from perceiver_med.io.scans import VOLUME_SCAN
MASK_SUFFIX = re.compile(r"_(seg|segmentation|mask|label|labels)$", re.IGNORECASE)
CHANNEL_SUFFIX = re.compile(r"_\d{4}$")  # nnU-Net: case_0000.nii.gz is channel 0 of case
GRID_TOLERANCE = 0.1  # voxels: float32 NIfTI headers and rounded DICOM positions agree far better than this
COLUMNS = ["coordX", "coordY", "coordZ", "diameter_mm", "label", "patient_id", "mask_value", "voxels"]


@dataclass
class Component:
    value: int  # the label value (NIfTI) or segment number (DICOM SEG)
    centre: tuple[float, float, float]  # LPS mm
    voxels: int
    diameter_mm: float  # of the sphere with the component's volume


@dataclass
class MaskedScan:
    mask: Path
    scan: Scan
    components: list[Component]


@dataclass
class MaskPoints:
    """What `points_from_masks` wrote: the masks used, the files skipped and why, and where labels came from."""

    out: Path
    scans: list[MaskedScan]
    skipped: list[Skip]
    label_source: str
    notes: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(len(item.components) for item in self.scans)


def parse_mask_labels(text: str | None) -> dict[int, str]:
    """"1=benign,2=malignant" -> {1: "benign", 2: "malignant"}; a UserError naming the bad part otherwise."""
    if text is None:
        return {}
    labels: dict[int, str] = {}
    for part in text.split(","):
        value, _, name = part.partition("=")
        try:
            number = int(value.strip())
        except ValueError:
            number = 0
        if number < 1 or not name.strip() or number in labels:
            raise UserError(f"--mask-labels needs VALUE=CLASS pairs with distinct whole values from 1, like "
                            f"1=benign,2=malignant; {printable(part.strip())!r} is not one")
        labels[number] = name.strip()
    return labels


def components(labels: np.ndarray, affine: np.ndarray, values=None) -> list[Component]:
    """Connected components (26-connectivity) of each label value > 0 (or of `values`) of a label map whose
    voxel index -> LPS mm is `affine`, in value order, then in the order scipy finds them."""
    from scipy import ndimage

    voxel_mm3 = abs(float(np.linalg.det(affine[:3, :3])))
    found = []
    present = np.unique(labels)
    for value in sorted(int(v) for v in present if v > 0 and (values is None or int(v) in values)):
        parts, count = ndimage.label(labels == value, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(parts.ravel(), minlength=count + 1)[1:]
        centres = ndimage.center_of_mass(parts > 0, parts, range(1, count + 1))
        for size, centre in zip(sizes, centres):
            point = affine[:3, :3] @ np.asarray(centre, float) + affine[:3, 3]
            diameter = (6 * size * voxel_mm3 / math.pi) ** (1 / 3)
            found.append(Component(value, tuple(float(c) for c in point), int(size), float(diameter)))
    return found


def grid_mismatch(mask_affine: np.ndarray, mask_shape, scan_affine: np.ndarray, scan_shape,
                  whole: bool = True) -> str:
    """Why a mask's voxels are not the scan's ("" when they are): the same voxel centres in patient mm, in any
    storage order; with `whole`, all of them (a NIfTI label map), else a block of them (a DICOM SEG)."""
    to_scan = np.linalg.inv(scan_affine) @ mask_affine
    permutation = np.round(to_scan[:3, :3])
    if sorted(np.abs(permutation).sum(axis=0)) != [1, 1, 1] or sorted(np.abs(permutation).sum(axis=1)) != [1, 1, 1]:
        return "its voxel axes are not the scan's (a different orientation or spacing: resampled?)"
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in mask_shape], indexing="ij")).reshape(3, -1).T
    mapped = corners @ to_scan[:3, :3].T + to_scan[:3, 3]
    off = float(np.abs(mapped - np.round(mapped)).max(initial=0.0))
    if off > GRID_TOLERANCE:
        return f"its voxels lie up to {off:.2g} voxel off the scan's grid (a different origin or spacing)"
    low, high = np.round(mapped).min(axis=0), np.round(mapped).max(axis=0)
    shape = np.asarray(scan_shape)
    if whole and (low.any() or (high != shape - 1).any()):
        size = "x".join(str(int(n)) for n in high - low + 1)
        return (f"it covers {size} voxels from voxel {tuple(int(v) for v in low)} of the scan's "
                f"{'x'.join(map(str, scan_shape))} grid, not the whole scan")
    if (low < 0).any() or (high > shape - 1).any():
        return "it reaches outside the scan"
    return ""


def points_from_masks(masks: Path, scans: Path, out: Path, mask_labels: str | None = None) -> MaskPoints:
    """Read every mask under `masks`, match it to its scan under `scans`, and write one points-CSV row per
    connected component to `out`. Masks that cannot be used are skipped with the reason."""
    masks, scans = Path(masks), Path(scans)
    for folder, what in ((masks, "MASKS"), (scans, "--scans")):
        if not folder.exists():
            raise UserError(f"{what} {printable(folder)} does not exist")
    refuse_inside(out, masks, scans)
    values = parse_mask_labels(mask_labels)
    # MASKS holding the scans (a TCIA download keeps each SEG series beside its CT): only SEG files are masks there
    seg_only = masks.resolve() == scans.resolve() or masks.resolve() in scans.resolve().parents
    found = discover(scans)
    inside = masks.resolve()
    # (discovery skips DICOM SEG files: only images are scans)
    found.scans = [s for s in found.scans if seg_only or (
        inside not in s.path.resolve().parents and s.path.resolve() != inside)]
    if not found.scans:
        raise UserError(f"no readable scans in {printable(scans)}")
    files, skipped = _mask_files(masks, seg_only)
    if not files and seg_only:
        raise UserError(f"no DICOM SEG in {printable(masks)}, which holds the scans: only a SEG is taken as a mask "
                        "there; keep NIfTI masks in a folder of their own (as nnU-Net's labelsTr/)")
    if not files:
        raise UserError(f"no NIfTI or DICOM SEG masks in {printable(masks)}"
                        + (f" ({skipped[0].reason})" if skipped else ""))
    items, ignored, unusable = [], set(), []
    used: dict[str, Path] = {}
    for path in files:
        try:
            scan = _scan_of(path, masks, found.scans, scans)
            if scan.id in used:
                raise ScanError(f"a second mask for scan {printable(scan.id)} (the first: {used[scan.id].name})")
            label_map = read_label_map(path)
            labels, affine = label_map.labels, label_map.affine
            reason = grid_mismatch(affine, labels.shape, *_scan_grid(scan), whole=label_map.whole)
            if reason:
                raise ScanError(f"the mask does not fit its scan {printable(scan.id)}: {reason}")
        except ScanError as exc:
            unusable.append(Skip(path, str(exc)))
            continue
        used[scan.id] = path
        if values:
            ignored.update(int(v) for v in np.unique(labels) if v > 0 and int(v) not in values)
        items.append(MaskedScan(path, scan, components(labels, affine, set(values) or None)))
    skipped += unusable
    if not items:
        raise UserError(f"no mask in {printable(masks)} could be used: {unusable[-1].reason}")
    source, label_of, notes = _labels(items, values, found.root)
    if ignored:
        notes.append(f"label values {', '.join(map(str, sorted(ignored)))} are not in --mask-labels: left out")
    _write(out, items, label_of, notes)
    return MaskPoints(out, items, skipped, source, notes)


def _mask_files(masks: Path, seg_only: bool = False) -> tuple[list[Path], list[Skip]]:
    if masks.is_file():
        return [masks], []
    files, skipped = [], []
    for path in sorted(p for p in masks.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if (is_nifti(path) and not seg_only) or is_segmentation(path):
            files.append(path)
        elif not seg_only:  # beside the scans, every other file is a scan's
            skipped.append(Skip(path, "not a NIfTI label map or a DICOM SEG"))
    return files, skipped


def _key(path: Path, root: Path, suffix: re.Pattern) -> str:
    """A relative path without its file extension and naming suffix: what a mask and its scan share."""
    try:
        relative = path.relative_to(root)
    except ValueError:
        relative = Path(path.name)
    text = (relative if str(relative) != "." else Path(path.name)).as_posix()
    for ending in NIFTI_SUFFIXES + (".dcm",):
        if text.lower().endswith(ending):
            text = text[: -len(ending)]
            break
    return suffix.sub("", text)


def _scan_of(path: Path, masks: Path, scans: list[Scan], scans_root: Path) -> Scan:
    if not is_nifti(path):  # a DICOM SEG names its series
        referenced = segmented_series(path)
        scan = next((s for s in scans if s.series_uid and s.series_uid in referenced), None)
        if scan is None:
            raise ScanError(f"the series this DICOM SEG segments ({', '.join(map(str, referenced)) or 'none named'}) "
                            "is not among the scans")
        return scan
    root = masks if masks.is_dir() else masks.parent
    key = _key(path, root, MASK_SUFFIX)
    keys = {id(s): _key(s.path, scans_root, CHANNEL_SUFFIX) for s in scans}
    for same in (lambda k: k == key, lambda k: k.rsplit("/", 1)[-1] == key.rsplit("/", 1)[-1]):
        matches = [s for s in scans if same(keys[id(s)])]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ScanError(f"{len(matches)} scans are named {printable(key.rsplit('/', 1)[-1])}: put the mask at "
                            "the same relative path as its scan")
    raise ScanError(f"no scan named {printable(key)} (a mask is matched to its scan by name: "
                    "MASKS/<name>.nii.gz for SCANS/<name>/ or SCANS/<name>.nii.gz)")


def _scan_grid(scan: Scan) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The scan's display affine and shape, from its header and one slice."""
    if scan.kind != VOLUME_SCAN:
        raise ScanError("a mask needs a volume, and its scan is a 2D image")
    image = read_scan(scan, lambda num_slices: [0])
    if not image.has_patient_geometry:
        raise ScanError(f"scan {printable(scan.id)} has no place in the patient (no orientation or position)")
    return image.affine, (image.num_slices, *image.voxels.shape[1:])


def _labels(items: list[MaskedScan], values: dict[int, str], root: Path):
    """(where labels come from, label(item, value), notes)."""
    if values:
        pairs = ", ".join(f"{k}={v}" for k, v in sorted(values.items()))
        return f"--mask-labels ({pairs})", lambda item, value: values[value], []
    folders = {item.scan.id: folder_label(item.scan, root) for item in items}
    if None not in folders.values() and len(set(folders.values())) >= 2:
        named = ", ".join(sorted(set(folders.values())))
        return f"the scans' class folders ({named})", lambda item, value: folders[item.scan.id], []
    return "none", lambda item, value: "", [
        "no labels (no --mask-labels, and the scans are not in class folders): predict and explain take these "
        "points; split needs a label: give --mask-labels VALUE=CLASS,... or sort the scans into class folders"]


def _write(out: Path, items: list[MaskedScan], label_of, notes: list[str]) -> None:
    # LUNA16 names a scan by its SeriesInstanceUID; a NIfTI has none, so then every row names its scan by path
    by_uid = all(item.scan.series_uid for item in items)
    folder = out.resolve().parent
    unnamed = [item for item in items if not item.scan.patient_id.strip()]
    if unnamed:
        notes.append(f"{len(unnamed)} scan(s) carry no DICOM PatientID: each is its own patient, named after the "
                     "scan (add a patient_id column by hand where one patient has several scans)")
    rows = []
    for item in items:
        reference = item.scan.series_uid if by_uid else os.path.relpath(item.scan.path.resolve(), folder)
        patient = item.scan.patient_id.strip() or _key(item.scan.path, item.scan.path.parent, CHANNEL_SUFFIX)
        for part in item.components:
            rows.append([reference, *part.centre, round(part.diameter_mm, 3), label_of(item, part.value), patient,
                         part.value, part.voxels])
    write_csv(out, ["seriesuid" if by_uid else "path", *COLUMNS], rows)
