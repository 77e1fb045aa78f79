"""The DICOM reader: files -> headers -> scans (series assembly) -> ScanImage. File-level decoding is dicom.py.

Discovery hands this reader every file no other reader claims (DICOM files often have no extension). Their
headers are grouped by SeriesInstanceUID whatever the files' names and order. A multi-frame file is one scan,
its frames sorted along the slice normal when each has a position. Single-frame files of one series with
distinct positions become one volume, sorted along the normal (row direction x column direction), with the
median step between neighbours as the slice spacing; a CT, MR, PET or NM series without positions is stacked
by InstanceNumber. A copy of a slice (the same SOPInstanceUID) is skipped, slices that cannot be decoded are
left out of their series (or skip it, when they outnumber the rest), and a series mixing planes (a localiser)
is no volume. Reading a series later decodes only the files the requested slices come from.
"""
from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from perceiver_med.errors import ScanError
from perceiver_med.io import dicom
from perceiver_med.io.dicom import DicomHeader
from perceiver_med.io.image import ScanImage, placed
from perceiver_med.io.limits import check_size
from perceiver_med.io.orientation import display_shape, display_slices, display_spacing, to_display
from perceiver_med.io.reader import Pick, Reader
from perceiver_med.io.scans import Scan, Skip, relative


class DicomReader(Reader):
    """DICOM files: single images, multi-frame files, and series of single-frame files (see the module)."""

    name = "DICOM"
    formats_read = "DICOM"
    formats = ("dicom",)

    def claims(self, path: Path) -> bool:
        return True  # any name: the header read says whether it is DICOM (NotThisFormat when it is not)

    def header(self, path: Path) -> DicomHeader:
        return dicom.header(path)

    def scans(self, headers: list[tuple[Path, DicomHeader]], base: Path) -> tuple[list[Scan], list[Skip]]:
        return assemble(headers, base)

    def read(self, scan: Scan, pick: Pick | None = None) -> ScanImage:
        if len(scan.files) == 1:
            return _read_dicom_file(scan, pick)
        return _read_series(scan, pick)


READER = DicomReader()


def assemble(headers: list[tuple[Path, DicomHeader]], base: Path) -> tuple[list[Scan], list[Skip]]:
    """The scans DICOM files make, series by series (see the module), and the files passed over with the reason."""
    by_series: dict[str, list[tuple[Path, DicomHeader]]] = defaultdict(list)
    for file, info in headers:
        by_series[info.series_uid or f"no-series-uid:{file}"].append((file, info))
    scans: list[Scan] = []
    skipped: list[Skip] = []
    for series_uid, members in by_series.items():
        uid = "" if series_uid.startswith("no-series-uid:") else series_uid
        members, duplicates = _unique_images(members)
        skipped.extend(duplicates)
        single = [(f, i) for f, i in members if i.frames == 1]
        for file, info in members:
            if info.frames > 1:
                if info.problem:
                    skipped.append(Skip(file, info.problem))
                else:
                    scans.append(_multiframe_scan(base, file, info, uid))
        if len(single) == 1:
            file, info = single[0]
            if info.problem:
                skipped.append(Skip(file, info.problem))
            else:
                scans.append(_dicom_scan(base, [file], info, uid, "image", id_=relative(file, base)))
        elif single:
            found, dropped = _series_scans(single, base, uid)
            scans.extend(found)
            skipped.extend(dropped)
    return scans, skipped


def _unique_images(members: list[tuple[Path, DicomHeader]]) -> tuple[list[tuple[Path, DicomHeader]], list[Skip]]:
    """One file per SOPInstanceUID: a copy of a slice would otherwise break its series into images."""
    seen: dict[str, Path] = {}
    kept, copies = [], []
    for file, info in sorted(members, key=lambda member: (bool(member[1].problem), str(member[0]))):
        first = seen.setdefault(info.sop_uid, file) if info.sop_uid else file
        if first is file:
            kept.append((file, info))
        else:
            note = f" (this copy: {info.problem})" if info.problem else ""
            copies.append(Skip(file, f"the same image as {first.name} (same SOPInstanceUID), which is read "
                                     f"instead{note}"))
    return kept, copies


def _dicom_scan(base, files, info, uid, kind, id_, ordering="", warnings=None, window=None, affine=None,
                grid_shape=(), assumed=(), sop_uids=()) -> Scan:
    """One DICOM scan: a file (its frames in the display convention, as `read_scan` gives them), or a series
    of files in stack order whose grid `affine` (column, row, slice -> RAS) and `grid_shape` are given."""
    series = affine is not None
    if not series:  # the reader finds the same grid again from the decoded file's geometry
        _, affine, assumed, ordering = dicom.frame_grid(info)
        grid_shape = (info.columns, info.rows) + ((info.frames,) if info.frames > 1 else ())
    shape = display_shape(grid_shape, affine)
    spacing = display_spacing(affine, len(shape)) if info.pixel_spacing else None
    return Scan(id=id_, path=series_folder(files) if series else files[0], files=list(files), format="dicom",
                kind=kind, modality=info.modality, shape=tuple(shape), spacing=spacing, series_uid=uid,
                patient_id=info.patient_id, laterality=info.laterality, ordering=ordering,
                warnings=list(warnings or []), window=window, grid_shape=tuple(grid_shape) if series else (),
                grid_affine=tuple(map(tuple, np.asarray(affine, float))) if series else None, assumed=tuple(assumed),
                sop_uids=tuple(sop_uids) if series else (info.sop_uid,))


def series_folder(files: list[Path]) -> Path:
    """The folder that holds every file of a series: discovering it again (with the series UID) finds them all."""
    return Path(os.path.commonpath([str(f.parent) for f in files]))


def _multiframe_scan(base: Path, file: Path, info: DicomHeader, uid: str) -> Scan:
    """A multi-frame file: frames sorted along the normal when every frame has a position, and reoriented."""
    return _dicom_scan(base, [file], info, uid, "volume", id_=relative(file, base))


def _series_scans(members: list[tuple[Path, DicomHeader]], base: Path, uid: str) -> tuple[list[Scan], list[Skip]]:
    """Stack a series of single-frame files into one volume when their geometry allows it.

    Slices whose pixel data cannot be read (found from their headers) are left out of the volume: the
    file is skipped with its reason and the series carries a warning saying what became of it. A series
    with more unreadable slices than readable ones is skipped whole.
    """
    folder = series_folder([f for f, _ in members])
    where = "" if folder == base else relative(folder, base)
    series_id = f"{where}/{uid}".lstrip("/") if uid else (where or folder.name)
    bad = [(f, i.problem) for f, i in members if i.problem]
    good = [(f, i) for f, i in members if not i.problem]
    mixed = _mixed_planes(good)
    if mixed:
        return [], [Skip(f, mixed) for f, _ in good] + [Skip(f, reason) for f, reason in bad]
    odd: list[tuple[Path, DicomHeader]] = []
    sizes = Counter((i.rows, i.columns) for _, i in good)
    if len(sizes) > 1:
        (size, count), = sizes.most_common(1)
        if count > len(good) / 2:  # a few odd-sized files in a series: the rest may still stack
            odd = [(f, i) for f, i in good if (i.rows, i.columns) != size]
            good = [(f, i) for f, i in good if (i.rows, i.columns) == size]
    scan = _stack(good, base, uid, series_id) if len(good) >= 2 and len(bad) + len(odd) <= len(good) else None
    if scan is None:
        if bad and len(bad) > len(good) + len(odd) and len(members) > 2:
            return _series_unread(members, bad, good + odd)
        images = good + odd  # not a volume: each readable file is an image
        return ([_dicom_scan(base, [f], i, uid, "image", relative(f, base), warnings=_separate_warning(images))
                 for f, i in images], [Skip(f, reason) for f, reason in bad])
    bad += [(f, f"{i.rows}x{i.columns} pixels, unlike the {size[0]}x{size[1]} of the rest of its series")
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
        if dicom.valid_orientation(info.orientation):
            orientation = np.asarray(info.orientation, float)
            # direction cosines of one stack agree to far better than 0.01 (written rounded to ~16 characters)
            if not any(np.abs(orientation - seen).max() < 0.01 for seen in distinct):
                distinct.append(orientation)
    return distinct


def _mixed_planes(members) -> str:
    """Why a volume series (CT, MR, PET, NM) is refused when its slices lie in different planes (a three-plane
    localiser), or "". Other modalities' images are kept apart, each one read (see `_stack`)."""
    if not members or members[0][1].modality not in dicom.VOLUME_MODALITIES:
        return ""
    distinct = _orientations(members)
    if len(distinct) < 2:
        return ""
    planes = sorted({dicom.plane_name(o) for o in distinct}, key=["axial", "coronal", "sagittal", "oblique"].index)
    return (f"its series mixes {len(distinct)} slice orientations ({', '.join(planes)}: a localiser?), so it is "
            "not stacked into a volume and not read")


def _separate_warning(members) -> list[str] | None:
    same_size = len({(i.rows, i.columns) for _, i in members}) == 1
    if same_size and len(members) > 1 and all(i.has_geometry for _, i in members):
        normal = dicom.slice_normal(members[0][1].orientation)
        along = np.round([np.dot(normal, i.position) for _, i in members], 4)
        if len(np.unique(along)) < len(members):
            return ["identical slice positions in the series: images kept separate, not stacked"]
    return None


def _stack(members: list[tuple[Path, DicomHeader]], base: Path, uid: str, series_id: str) -> Scan | None:
    first = members[0][1]
    if len({(i.rows, i.columns) for _, i in members}) != 1:
        return None
    window = _series_window(members)
    if len(_orientations(members)) > 1:
        return None  # slices in different planes are no volume
    if all(i.has_geometry for _, i in members):
        orientation = first.orientation
        normal = dicom.slice_normal(orientation)
        along = np.array([np.dot(normal, i.position) for _, i in members])
        if len(np.unique(np.round(along, 4))) != len(members):
            return None
        order = dicom.order_along_normal(orientation, [i.position for _, i in members])
        files = [members[k][0] for k in order]
        positions = [members[k][1].position for k in order]
        affine, assumed = dicom.grid(first, len(files), positions)
        grid_shape = (first.columns, first.rows, len(files))
        warnings = _gap_warning(np.sort(along))
        return _dicom_scan(base, files, first, uid, "volume", series_id, "position", warnings, window, affine,
                           grid_shape, assumed, [members[k][1].sop_uid for k in order])
    if first.modality in dicom.VOLUME_MODALITIES:
        numbers = [i.instance_number for _, i in members]
        if None not in numbers and len(set(numbers)) == len(numbers):
            order = np.argsort(numbers)
            files = [members[k][0] for k in order]
            # the lowest InstanceNumber gives the orientation, spacing and (if it has one) the first position
            affine, assumed = dicom.grid(members[order[0]][1], len(files))
            warning = "no slice positions: slices ordered by InstanceNumber"
            return _dicom_scan(base, files, first, uid, "volume", series_id, "instance", [warning], window, affine,
                               (first.columns, first.rows, len(files)), assumed, [members[k][1].sop_uid for k in order])
    return None


def _series_window(members) -> tuple | None:
    """The VOI window of a series when every slice stores the same one (MONOCHROME1 windows move per slice)."""
    windows = {i.window for _, i in members}
    photometric = {i.photometric for _, i in members}
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


def _read_dicom_file(scan: Scan, pick: Pick | None) -> ScanImage:
    """One file, single- or multi-frame, reoriented by its own geometry (`dicom.frame_grid`, as discovery)."""
    decoded = dicom.decode(scan.files[0])
    pixels = decoded.pixels
    order, affine, assumed, ordering = dicom.frame_grid(decoded.geometry)
    # stored (frames, rows, cols) -> voxel grid (column, row, frame)
    data = pixels[order].transpose(2, 1, 0) if pixels.ndim == 3 else pixels.T
    voxels, _ = to_display(data, affine)
    picked = {}
    if pick is not None and voxels.ndim == 3:
        slices = tuple(int(k) for k in pick(voxels.shape[0]))
        picked = dict(slices=slices, num_slices=voxels.shape[0])
        voxels = voxels[list(slices)]
    elif voxels.ndim == 3:
        picked = dict(num_slices=voxels.shape[0])
    return placed(voxels, affine, data.shape, modality=decoded.geometry.modality, window=decoded.window, ordering=ordering,
                  format="dicom", assumed=assumed, warnings=tuple(dicom.assumption_warning(assumed)),
                  voi=decoded.voi, **picked)


def _decode_slice(scan: Scan, index: int, expected: tuple) -> np.ndarray:
    file = scan.files[index]
    try:
        pixels = dicom.decode(file).pixels
    except ScanError as exc:
        raise ScanError(f"slice {file.name} of this series cannot be read ({exc}), so the series is skipped") \
            from None
    if pixels.shape != tuple(expected):
        raise ScanError(f"slice {file.name} is {'x'.join(map(str, pixels.shape))}, unlike the rest of its "
                        "series, so the series is skipped")
    return pixels


def _read_series(scan: Scan, pick: Pick | None) -> ScanImage:
    """A volume of single-frame files in stack order, on the grid discovery found for them (by position or by
    InstanceNumber); with `pick`, only the files its slices come from are decoded."""
    affine = np.asarray(scan.grid_affine, dtype=float)
    columns, rows, count = scan.grid_shape

    def read_planes(axis: int, planes: list[int]) -> np.ndarray:
        taken = []
        for k in (planes if axis == 2 else range(count)):
            pixels = _decode_slice(scan, k, (rows, columns))
            taken.append(pixels if axis == 2 else pixels[:, planes] if axis == 0 else pixels[planes, :])
        return np.stack(taken).transpose(2, 1, 0)

    picked = {}
    if pick is None:
        voxels, _ = to_display(read_planes(2, list(range(count))), affine)
    else:
        slices = tuple(int(k) for k in pick(scan.shape[0]))
        voxels = display_slices(read_planes, scan.grid_shape, affine, slices)
        picked = dict(slices=slices)
    return placed(voxels, affine, scan.grid_shape, modality=scan.modality, ordering=scan.ordering, format="dicom",
                  window=scan.window,  # the same for every slice, or None (decided from all the headers)
                  assumed=scan.assumed, warnings=tuple(dicom.assumption_warning(scan.assumed)),
                  num_slices=scan.shape[0], **picked)
