"""Readers: a scan's files -> (array, metadata). Images are (rows, cols); volumes (slices, rows, cols)."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from perceiver_med.errors import ScanError
from perceiver_med.io import dicom, nifti, raster
from perceiver_med.io.discover import Discovery, Scan, Skip, _os_reason, discover
from perceiver_med.io.limits import unexpected
from perceiver_med.io.orientation import display_slices, display_spacing, to_display

__all__ = ["Discovery", "Scan", "Skip", "discover", "read_scan"]

Pick = Callable[[int], list]


def read_scan(scan: Scan, pick: Pick | None = None) -> tuple[np.ndarray, dict]:
    """Decode a scan found by `discover`. Raises ScanError with a one-line reason, whatever went wrong.

    `pick(num_slices)` -> display slice indices: for a volume, only those slices are read and returned
    (in that order), with `meta["num_slices"]` and `meta["slices"]`; 2D images ignore it.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if scan.format == "nifti":
                array, meta = nifti.read(scan.files[0], _pick_for(scan, pick))
            elif scan.format == "dicom":
                array, meta = _read_dicom(scan, pick)
            else:
                array, meta = raster.read(scan.files[0])
            if not np.isfinite(array).all():
                array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    except ScanError:
        raise
    except OSError as exc:
        file = Path(exc.filename) if isinstance(exc.filename, str) else scan.files[0]
        raise ScanError(f"{file.name}: {_os_reason(exc, file)}") from None
    except Exception as exc:  # never more than this scan's skip
        raise ScanError(unexpected(exc, "DICOM" if scan.format == "dicom" else scan.format)) from None
    meta["warnings"] = list(scan.warnings) + list(meta.get("warnings", []))
    return array, meta


def _pick_for(scan: Scan, pick: Pick | None) -> list[int] | None:
    if pick is None or scan.kind != "volume" or len(scan.shape) != 3:
        return None
    return [int(k) for k in pick(scan.shape[0])]


def _read_dicom(scan: Scan, pick: Pick | None) -> tuple[np.ndarray, dict]:
    if len(scan.files) == 1:
        return _read_dicom_file(scan, pick)
    return _read_series(scan, pick)


def _read_dicom_file(scan: Scan, pick: Pick | None) -> tuple[np.ndarray, dict]:
    array, meta = dicom.decode(scan.files[0])
    positions, orientation = meta.get("frame_positions"), meta.get("orientation")
    if array.ndim == 3 and positions and dicom.valid_orientation(orientation):
        order = dicom.order_along_normal(orientation, positions)
        array = array[order]
        positions = [positions[k] for k in order]
        affine = dicom.stack_affine(orientation, positions, meta["pixel_spacing"])
        array, spacing = to_display(array.transpose(2, 1, 0), affine)
        meta["spacing"] = spacing
    else:
        meta["spacing"] = meta["pixel_spacing"]
    if pick is not None and array.ndim == 3:
        slices = [int(k) for k in pick(array.shape[0])]
        meta.update(num_slices=array.shape[0], slices=slices)
        array = array[slices]
    return array, meta


def _decode_slice(scan: Scan, index: int, expected: tuple) -> tuple[np.ndarray, dict]:
    file = scan.files[index]
    try:
        pixels, meta = dicom.decode(file)
    except ScanError as exc:
        raise ScanError(f"slice {file.name} of this series cannot be read ({exc}), so the series is skipped") \
            from None
    if pixels.shape != tuple(expected):
        raise ScanError(f"slice {file.name} is {'x'.join(map(str, pixels.shape))}, unlike the rest of its "
                        "series, so the series is skipped")
    return pixels, meta


def _read_series(scan: Scan, pick: Pick | None) -> tuple[np.ndarray, dict]:
    """A volume of single-frame files; with `pick`, only the files its slices come from are decoded."""
    count = len(scan.files)
    if scan.ordering == "position" and scan.affine is not None:
        affine = np.asarray(scan.affine, dtype=float)
        columns, rows, _ = scan.voxel_shape
        metas: dict[int, dict] = {}

        def read_planes(axis: int, planes: list[int]) -> np.ndarray:
            taken = []
            for k in (planes if axis == 2 else range(count)):
                pixels, metas[k] = _decode_slice(scan, k, (rows, columns))
                taken.append(pixels if axis == 2 else pixels[:, planes] if axis == 0 else pixels[planes, :])
            return np.stack(taken).transpose(2, 1, 0)

        if pick is None:
            array, spacing = to_display(read_planes(2, list(range(count))), affine)
            meta = dict(metas[0])
        else:
            slices = [int(k) for k in pick(scan.shape[0])]
            array = display_slices(read_planes, scan.voxel_shape, affine, slices)
            meta = dict(next(iter(metas.values())))
            meta.update(num_slices=scan.shape[0], slices=slices)
            spacing = display_spacing(affine)
        meta["spacing"] = spacing
    else:
        wanted = list(range(count)) if pick is None else [int(k) for k in pick(count)]
        decoded = {k: _decode_slice(scan, k, tuple(scan.shape[-2:])) for k in sorted(set(wanted))}
        array = np.stack([decoded[k][0] for k in wanted])
        meta = dict(decoded[wanted[0]][1])
        meta["spacing"] = meta["pixel_spacing"]
        if pick is not None:
            meta.update(num_slices=count, slices=wanted)
    meta["window"] = scan.window  # the same for every slice, or None (decided from all the headers)
    return array, meta
