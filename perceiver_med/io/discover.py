"""A folder (or one file) -> scans, plus every file that was skipped and why.

Reads headers only. DICOM files are grouped into series by SeriesInstanceUID whatever their
names and order; a series of single-frame slices with distinct positions becomes one volume.
Only regular files are opened (a named pipe would block); an unreadable folder, a symbolic link
to a folder (not followed), a broken link or a file that vanishes is reported as skipped. Whatever
exception a reader raises on one file, that file becomes a skip with a one-line reason.
Shapes and spacings are in the display convention of every reader: (slices, rows, cols).
"""
from __future__ import annotations

import errno
import os
import stat
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perceiver_med.errors import ScanError, UserError
from perceiver_med.io import dicom, nifti, raster
from perceiver_med.io.limits import check_size, describe, max_voxels, unexpected
from perceiver_med.io.orientation import display_shape, display_spacing


@dataclass
class Scan:
    """One model input's worth of files: a 2D image, or a volume (a DICOM series or a NIfTI)."""

    id: str
    path: Path  # the file, or the folder holding all the files of a DICOM series (their common folder)
    files: list[Path]  # in slice order for a DICOM series volume
    format: str
    kind: str  # "image" or "volume"
    modality: str = ""
    shape: tuple = ()  # (rows, cols) or (slices, rows, cols), as read_scan returns it
    spacing: tuple | None = None  # in the order of `shape`, millimetres
    series_uid: str = ""
    patient_id: str = ""
    laterality: str = ""
    ordering: str = ""  # how a DICOM series was ordered: "position", "instance", or ""
    warnings: list[str] = field(default_factory=list)
    window: tuple | None = None  # a DICOM series' VOI window when every slice has the same one
    # For the reader only, DICOM series: stored voxel (column, row, slice) -> RAS mm, and that grid's shape.
    # Geometry for everyone else is ScanImage.affine (display voxel -> LPS), from read_scan.
    grid_affine: tuple | None = None
    grid_shape: tuple = ()
    assumed: tuple = ()  # what a DICOM file did not say about its geometry (see ScanImage.assumed)


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


_FILE_KINDS = ((stat.S_ISFIFO, "named pipe"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
               (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"))


def _os_reason(exc: OSError, path: Path) -> str:
    if exc.errno == errno.ELOOP:
        return "a symbolic link loop: it never reaches a file"
    if exc.errno == errno.ENOENT or isinstance(exc, FileNotFoundError):
        if os.path.islink(path):
            return "a broken symbolic link: its target does not exist"
        return "vanished before it could be read"
    if exc.errno in (errno.EACCES, errno.EPERM) or isinstance(exc, PermissionError):
        return "permission denied"
    return f"cannot be read: {exc.strerror or describe(exc)}"


def _regular(path: Path) -> str:
    """"" for a regular file (or a link to one); otherwise why it is not read."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return _os_reason(exc, path)
    if stat.S_ISREG(mode):
        return ""
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "special file")
    return f"not a regular file ({kind})"


def list_files(root: Path) -> tuple[list[Path], list[Skip]]:
    """Every regular file under `root`, in a stable order, and what was passed over with the reason."""
    if not os.path.lexists(root):
        raise UserError(f"{root} does not exist")
    if not root.is_dir():
        reason = _regular(root)
        if reason and not os.path.exists(root):
            raise UserError(f"{root}: {reason}")
        return ([], [Skip(root, reason)]) if reason else ([root], [])
    files: list[Path] = []
    skipped: list[Skip] = []

    def unreadable(exc: OSError) -> None:
        folder = Path(exc.filename) if exc.filename else root
        skipped.append(Skip(folder, f"folder not read: {_os_reason(exc, folder)}"))

    for folder, dirs, names in os.walk(root, onerror=unreadable):
        dirs.sort()
        for name in list(dirs):
            if os.path.islink(os.path.join(folder, name)):
                dirs.remove(name)
                skipped.append(Skip(Path(folder) / name, "a symbolic link to a folder: not followed "
                                                         "(pass the folder itself to read it)"))
        for name in sorted(names):
            path = Path(folder) / name
            reason = _regular(path)
            if reason:
                skipped.append(Skip(path, reason))
            else:
                files.append(path)
    if not files and not skipped:
        raise UserError(f"{root} is empty: no files to read")
    if not files and any(skip.file == root for skip in skipped):
        raise UserError(f"{root}: {skipped[0].reason}")
    return files, skipped


def _read_header(file: Path):
    """(format, header) of one file; raises ScanError with the reason it is skipped."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if nifti.is_nifti(file):
                return "nifti", nifti.header(file)
            if raster.is_raster(file):
                return "raster", raster.header(file)
            return "dicom", dicom.header(file)
    except ScanError as exc:
        reason = str(exc)
        if reason == "not a DICOM file":
            reason = f"not a DICOM, NIfTI, PNG or JPEG file ({file.suffix or 'no extension'})"
        raise ScanError(reason) from None
    except OSError as exc:
        raise ScanError(_os_reason(exc, file)) from None
    except Exception as exc:  # a reader's bug or a file nobody foresaw: never more than this file's skip
        reader = "NIfTI" if nifti.is_nifti(file) else "image" if raster.is_raster(file) else "DICOM"
        raise ScanError(unexpected(exc, reader)) from None


def discover(root: Path | str) -> Discovery:
    """Find every scan under `root` (a folder or a single file)."""
    root = Path(root)
    max_voxels()  # a malformed PERCEIVER_MED_MAX_VOXELS is a usage error, not a reason to skip every file
    files, skipped = list_files(root)
    base = root if root.is_dir() else root.parent
    scans: list[Scan] = []
    dicom_headers: list[tuple[Path, dict]] = []
    for file in files:
        try:
            kind, info = _read_header(file)
        except ScanError as exc:
            skipped.append(Skip(file, str(exc) or "unreadable"))
            continue
        if kind == "nifti":
            scans.append(Scan(id=_rel(file, base), path=file, files=[file], format="nifti", kind=info["kind"],
                              shape=info["shape"], spacing=info["spacing"], warnings=info["warnings"]))
        elif kind == "raster":
            scans.append(Scan(id=_rel(file, base), path=file, files=[file], format=info["format"],
                              kind="image", shape=info["shape"]))
        else:
            dicom_headers.append((file, info))
    found, dropped = _dicom_scans(dicom_headers, base)
    scans.extend(found)
    skipped.extend(dropped)
    scans.sort(key=lambda scan: scan.id)
    skipped.sort(key=lambda skip: str(skip.file))
    return Discovery(root=base, scans=scans, skipped=skipped)


def _dicom_scans(headers: list[tuple[Path, dict]], base: Path) -> tuple[list[Scan], list[Skip]]:
    by_series: dict[str, list[tuple[Path, dict]]] = defaultdict(list)
    for file, info in headers:
        by_series[info["series_uid"] or f"no-series-uid:{file}"].append((file, info))
    scans: list[Scan] = []
    skipped: list[Skip] = []
    for series_uid, members in by_series.items():
        uid = "" if series_uid.startswith("no-series-uid:") else series_uid
        members, duplicates = _unique_images(members)
        skipped.extend(duplicates)
        single = [(f, i) for f, i in members if i["frames"] == 1]
        for file, info in members:
            if info["frames"] > 1:
                if info["problem"]:
                    skipped.append(Skip(file, info["problem"]))
                else:
                    scans.append(_multiframe_scan(base, file, info, uid))
        if len(single) == 1:
            file, info = single[0]
            if info["problem"]:
                skipped.append(Skip(file, info["problem"]))
            else:
                scans.append(_dicom_scan(base, [file], info, uid, "image", id_=_rel(file, base)))
        elif single:
            found, dropped = _series_scans(single, base, uid)
            scans.extend(found)
            skipped.extend(dropped)
    return scans, skipped


def _unique_images(members: list[tuple[Path, dict]]) -> tuple[list[tuple[Path, dict]], list[Skip]]:
    """One file per SOPInstanceUID: a copy of a slice would otherwise break its series into images."""
    seen: dict[str, Path] = {}
    kept, copies = [], []
    for file, info in sorted(members, key=lambda member: (bool(member[1]["problem"]), str(member[0]))):
        first = seen.setdefault(info.get("sop_uid", ""), file) if info.get("sop_uid") else file
        if first is file:
            kept.append((file, info))
        else:
            note = f" (this copy: {info['problem']})" if info["problem"] else ""
            copies.append(Skip(file, f"the same image as {first.name} (same SOPInstanceUID), which is read "
                                     f"instead{note}"))
    return kept, copies


def _dicom_scan(base, files, info, uid, kind, id_, ordering="", warnings=None, window=None, affine=None,
                grid_shape=(), assumed=()) -> Scan:
    """One DICOM scan: a file (its frames in the display convention, as `read_scan` gives them), or a series
    of files in stack order whose grid `affine` (column, row, slice -> RAS) and `grid_shape` are given."""
    series = affine is not None
    if not series:  # the reader finds the same grid again from the decoded file's geometry
        _, affine, assumed, ordering = dicom.frame_grid(info)
        grid_shape = (info["columns"], info["rows"]) + ((info["frames"],) if info["frames"] > 1 else ())
    shape = display_shape(grid_shape, affine)
    spacing = display_spacing(affine, len(shape)) if info["pixel_spacing"] else None
    return Scan(id=id_, path=series_folder(files) if series else files[0], files=list(files), format="dicom",
                kind=kind, modality=info["modality"], shape=tuple(shape), spacing=spacing, series_uid=uid,
                patient_id=info["patient_id"], laterality=info["laterality"], ordering=ordering,
                warnings=list(warnings or []), window=window, grid_shape=tuple(grid_shape) if series else (),
                grid_affine=tuple(map(tuple, np.asarray(affine, float))) if series else None, assumed=tuple(assumed))


def series_folder(files: list[Path]) -> Path:
    """The folder that holds every file of a series: discovering it again (with the series UID) finds them all."""
    return Path(os.path.commonpath([str(f.parent) for f in files]))


def _has_geometry(info: dict) -> bool:
    return bool(info["position"]) and len(info["position"]) == 3 and dicom.valid_orientation(info["orientation"])


def _multiframe_scan(base: Path, file: Path, info: dict, uid: str) -> Scan:
    """A multi-frame file: frames sorted along the normal when every frame has a position, and reoriented."""
    return _dicom_scan(base, [file], info, uid, "volume", id_=_rel(file, base))


def _series_scans(members: list[tuple[Path, dict]], base: Path, uid: str) -> tuple[list[Scan], list[Skip]]:
    """Stack a series of single-frame files into one volume when their geometry allows it.

    Slices whose pixel data cannot be read (found from their headers) are left out of the volume: the
    file is skipped with its reason and the series carries a warning saying what became of it. A series
    with more unreadable slices than readable ones is skipped whole.
    """
    folder = series_folder([f for f, _ in members])
    where = "" if folder == base else _rel(folder, base)
    series_id = f"{where}/{uid}".lstrip("/") if uid else (where or folder.name)
    bad = [(f, i["problem"]) for f, i in members if i["problem"]]
    good = [(f, i) for f, i in members if not i["problem"]]
    mixed = _mixed_planes(good)
    if mixed:
        return [], [Skip(f, mixed) for f, _ in good] + [Skip(f, reason) for f, reason in bad]
    odd: list[tuple[Path, dict]] = []
    sizes = Counter((i["rows"], i["columns"]) for _, i in good)
    if len(sizes) > 1:
        (size, count), = sizes.most_common(1)
        if count > len(good) / 2:  # a few odd-sized files in a series: the rest may still stack
            odd = [(f, i) for f, i in good if (i["rows"], i["columns"]) != size]
            good = [(f, i) for f, i in good if (i["rows"], i["columns"]) == size]
    scan = _stack(good, base, uid, series_id) if len(good) >= 2 and len(bad) + len(odd) <= len(good) else None
    if scan is None:
        if bad and len(bad) > len(good) + len(odd) and len(members) > 2:
            return _series_unread(members, bad, good + odd)
        images = good + odd  # not a volume: each readable file is an image
        return ([_dicom_scan(base, [f], i, uid, "image", _rel(f, base), warnings=_separate_warning(images))
                 for f, i in images], [Skip(f, reason) for f, reason in bad])
    bad += [(f, f"{i['rows']}x{i['columns']} pixels, unlike the {size[0]}x{size[1]} of the rest of its series")
            for f, i in odd]
    try:
        check_size(scan.shape[1:], scan.shape[0], what=f"series of {len(good)} slices,")
    except ScanError as exc:
        return [], [Skip(f, str(exc)) for f, _ in good] + [Skip(f, reason) for f, reason in bad]
    skipped = []
    if bad:
        names = bad[0][1] if len(bad) == 1 else "; ".join(f"{f.name}: {reason}" for f, reason in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        which = f"slice {bad[0][0].name} is" if len(bad) == 1 else f"{len(bad)} slices are"
        scan.warnings.insert(0, f"{which} left out ({names}{more}): the series is read from the other "
                                f"{len(good)} slices.")
        skipped = [Skip(f, f"{reason}; the rest of its series ({series_id}) is read without this slice.")
                   for f, reason in bad]
    return [scan], skipped


def _series_unread(members, bad, readable) -> tuple[list[Scan], list[Skip]]:
    """More unreadable slices than readable ones: the series is skipped, every file saying why."""
    first, why = bad[0]
    note = (f"its series is skipped: {len(bad)} of its {len(members)} slices are unreadable "
            f"(first {first.name}: {why}).")
    return [], [Skip(f, reason) for f, reason in bad] + [Skip(f, note) for f, _ in readable]


def _orientations(members) -> list[np.ndarray]:
    """The distinct slice orientations of a series' members (those that have one)."""
    distinct: list[np.ndarray] = []
    for _, info in members:
        if dicom.valid_orientation(info["orientation"]):
            orientation = np.asarray(info["orientation"], float)
            # direction cosines of one stack agree to far better than 0.01 (written rounded to ~16 characters)
            if not any(np.abs(orientation - seen).max() < 0.01 for seen in distinct):
                distinct.append(orientation)
    return distinct


def _mixed_planes(members) -> str:
    """Why a volume series (CT, MR, PET, NM) is refused when its slices lie in different planes (a three-plane
    localiser), or "". Other modalities' images are kept apart, each one read (see `_stack`)."""
    if not members or members[0][1]["modality"] not in dicom.VOLUME_MODALITIES:
        return ""
    distinct = _orientations(members)
    if len(distinct) < 2:
        return ""
    planes = sorted({dicom.plane_name(o) for o in distinct}, key=["axial", "coronal", "sagittal", "oblique"].index)
    return (f"its series mixes {len(distinct)} slice orientations ({', '.join(planes)}: a localiser?), so it is "
            "not stacked into a volume and not read")


def _separate_warning(members) -> list[str] | None:
    same_size = len({(i["rows"], i["columns"]) for _, i in members}) == 1
    if same_size and len(members) > 1 and all(_has_geometry(i) for _, i in members):
        normal = dicom.slice_normal(members[0][1]["orientation"])
        along = np.round([np.dot(normal, i["position"]) for _, i in members], 4)
        if len(np.unique(along)) < len(members):
            return ["identical slice positions in the series: images kept separate, not stacked"]
    return None


def _stack(members: list[tuple[Path, dict]], base: Path, uid: str, series_id: str) -> Scan | None:
    first = members[0][1]
    if len({(i["rows"], i["columns"]) for _, i in members}) != 1:
        return None
    window = _series_window(members)
    if len(_orientations(members)) > 1:
        return None  # slices in different planes are no volume
    if all(_has_geometry(i) for _, i in members):
        orientation = first["orientation"]
        normal = dicom.slice_normal(orientation)
        along = np.array([np.dot(normal, i["position"]) for _, i in members])
        if len(np.unique(np.round(along, 4))) != len(members):
            return None
        order = dicom.order_along_normal(orientation, [i["position"] for _, i in members])
        files = [members[k][0] for k in order]
        positions = [members[k][1]["position"] for k in order]
        affine, assumed = dicom.grid(first, len(files), positions)
        grid_shape = (first["columns"], first["rows"], len(files))
        warnings = _gap_warning(np.sort(along))
        return _dicom_scan(base, files, first, uid, "volume", series_id, "position", warnings, window, affine,
                           grid_shape, assumed)
    if first["modality"] in dicom.VOLUME_MODALITIES:
        numbers = [i["instance_number"] for _, i in members]
        if None not in numbers and len(set(numbers)) == len(numbers):
            order = np.argsort(numbers)
            files = [members[k][0] for k in order]
            # the lowest InstanceNumber gives the orientation, spacing and (if it has one) the first position
            affine, assumed = dicom.grid(members[order[0]][1], len(files))
            warning = "no slice positions: slices ordered by InstanceNumber"
            return _dicom_scan(base, files, first, uid, "volume", series_id, "instance", [warning], window, affine,
                               (first["columns"], first["rows"], len(files)), assumed)
    return None


def _series_window(members) -> tuple | None:
    """The VOI window of a series when every slice stores the same one (MONOCHROME1 windows move per slice)."""
    windows = {i["window"] for _, i in members}
    photometric = {i["photometric"] for _, i in members}
    if len(windows) == 1 and photometric != {"MONOCHROME1"}:
        return windows.pop()
    return None


def _gap_warning(along: np.ndarray) -> list[str]:
    steps = np.diff(along)
    if len(steps) < 2:
        return []
    usual = float(np.median(steps))
    gaps = steps[steps > 1.5 * usual]
    if usual <= 0 or not len(gaps):
        return []
    return [f"uneven slice spacing: {len(gaps)} gap(s) up to {float(gaps.max()):g} mm where the usual step is "
            f"{usual:g} mm (missing slices?)"]
