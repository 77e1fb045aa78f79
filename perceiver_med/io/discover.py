"""A folder (or one file) -> scans, plus every file that was skipped and why.

Reads headers only. DICOM files are grouped into series by SeriesInstanceUID whatever their
names and order; a series of single-frame slices with distinct positions becomes one volume.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perceiver_med.errors import ScanError, UserError
from perceiver_med.io import dicom, nifti, raster


@dataclass
class Scan:
    """One model input's worth of files: a 2D image, or a volume (a DICOM series or a NIfTI)."""

    id: str
    path: Path  # the file, or the folder holding a DICOM series
    files: list[Path]  # in slice order for a DICOM series volume
    format: str
    kind: str  # "image" or "volume"
    modality: str = ""
    shape: tuple = ()
    spacing: tuple | None = None
    series_uid: str = ""
    patient_id: str = ""
    laterality: str = ""
    ordering: str = ""  # how a DICOM series was ordered: "position", "instance", or ""
    warnings: list[str] = field(default_factory=list)


@dataclass
class Skip:
    file: Path
    reason: str


@dataclass
class Discovery:
    root: Path
    scans: list[Scan]
    skipped: list[Skip]
    labels: dict[str, str] = field(default_factory=dict)  # filled by `inspect` when labels can be told
    patients: dict[str, str] = field(default_factory=dict)

    def records(self) -> list[dict]:
        """One row per file, as `inspect --out` writes them."""
        rows = []
        for scan in self.scans:
            for file in scan.files:
                rows.append({"file": _rel(file, self.root), "scan": scan.id, "status": "ok", "reason": "",
                             "kind": scan.kind, "modality": scan.modality,
                             "shape": "x".join(str(s) for s in scan.shape)})
        for skip in self.skipped:
            rows.append({"file": _rel(skip.file, self.root), "scan": "", "status": "skipped",
                         "reason": skip.reason, "kind": "", "modality": "", "shape": ""})
        return sorted(rows, key=lambda row: row["file"])


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix() or path.name
    except ValueError:
        return str(path)


def list_files(root: Path) -> list[Path]:
    if not root.exists():
        raise UserError(f"{root} does not exist")
    if root.is_file():
        return [root]
    files = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        files.extend(Path(folder) / name for name in sorted(names))
    if not files:
        raise UserError(f"{root} is empty: no files to read")
    return files


def discover(root: Path | str) -> Discovery:
    """Find every scan under `root` (a folder or a single file)."""
    root = Path(root)
    files = list_files(root)
    base = root if root.is_dir() else root.parent
    scans: list[Scan] = []
    skipped: list[Skip] = []
    dicom_headers: list[tuple[Path, dict]] = []
    for file in files:
        try:
            if nifti.is_nifti(file):
                info = nifti.header(file)
                scans.append(Scan(id=_rel(file, base), path=file, files=[file], format="nifti", kind=info["kind"],
                                  shape=info["shape"], spacing=info["spacing"], warnings=info["warnings"]))
            elif raster.is_raster(file):
                info = raster.header(file)
                scans.append(Scan(id=_rel(file, base), path=file, files=[file], format=info["format"],
                                  kind="image", shape=info["shape"]))
            else:
                dicom_headers.append((file, dicom.header(file)))
        except ScanError as exc:
            reason = str(exc)
            if reason == "not a DICOM file":
                reason = f"not a DICOM, NIfTI, PNG or JPEG file ({file.suffix or 'no extension'})"
            skipped.append(Skip(file, reason))
    scans.extend(_dicom_scans(dicom_headers, base))
    scans.sort(key=lambda scan: scan.id)
    return Discovery(root=base, scans=scans, skipped=skipped)


def _dicom_scans(headers: list[tuple[Path, dict]], base: Path) -> list[Scan]:
    by_series: dict[str, list[tuple[Path, dict]]] = defaultdict(list)
    for file, info in headers:
        by_series[info["series_uid"] or f"no-series-uid:{file}"].append((file, info))
    scans = []
    for series_uid, members in by_series.items():
        uid = "" if series_uid.startswith("no-series-uid:") else series_uid
        single = [(f, i) for f, i in members if i["frames"] == 1]
        for file, info in members:
            if info["frames"] > 1:
                scans.append(_dicom_scan(base, [file], info, uid, "volume", id_=_rel(file, base)))
        if len(single) == 1:
            file, info = single[0]
            scans.append(_dicom_scan(base, [file], info, uid, "image", id_=_rel(file, base)))
        elif single:
            scans.extend(_series_scans(single, base, uid))
    return scans


def _dicom_scan(base, files, info, uid, kind, id_, ordering="", warnings=None) -> Scan:
    shape = (info["rows"], info["columns"])
    if kind == "volume":
        shape = (info["frames"] if len(files) == 1 else len(files), *shape)
    spacing = info["pixel_spacing"]
    folder = files[0].parent
    return Scan(id=id_, path=files[0] if len(files) == 1 else folder, files=list(files), format="dicom",
                kind=kind, modality=info["modality"], shape=shape, spacing=spacing, series_uid=uid,
                patient_id=info["patient_id"], laterality=info["laterality"], ordering=ordering,
                warnings=list(warnings or []))


def _series_scans(members: list[tuple[Path, dict]], base: Path, uid: str) -> list[Scan]:
    """Stack a series of single-frame files into one volume when their geometry allows it."""
    first = members[0][1]
    folder = members[0][0].parent
    series_id = f"{_rel(folder, base)}/{uid}" if uid else _rel(folder, base)
    same_size = all((i["rows"], i["columns"]) == (first["rows"], first["columns"]) for _, i in members)
    have_geometry = all(i["position"] and i["orientation"] for _, i in members)
    separate_warning = None
    if same_size and have_geometry:
        normal = dicom.slice_normal(first["orientation"])
        along = np.array([np.dot(normal, i["position"]) for _, i in members])
        if len(np.unique(np.round(along, 4))) == len(members):
            order = np.argsort(along)
            files = [members[k][0] for k in order]
            return [_dicom_scan(base, files, first, uid, "volume", series_id, ordering="position")]
        separate_warning = "identical slice positions in the series: images kept separate, not stacked"
    elif same_size and first["modality"] in dicom.VOLUME_MODALITIES:
        numbers = [i["instance_number"] for _, i in members]
        if None not in numbers and len(set(numbers)) == len(numbers):
            order = np.argsort(numbers)
            files = [members[k][0] for k in order]
            warning = "no slice positions: slices ordered by InstanceNumber"
            return [_dicom_scan(base, files, first, uid, "volume", series_id, "instance", [warning])]
    return [_dicom_scan(base, [file], info, uid, "image", _rel(file, base),
                        warnings=[separate_warning] if separate_warning else None) for file, info in members]
