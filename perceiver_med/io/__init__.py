"""Readers: a scan's files -> (array, metadata). Images are (rows, cols); volumes (slices, rows, cols)."""
from __future__ import annotations

import numpy as np

from perceiver_med.errors import ScanError
from perceiver_med.io import dicom, nifti, raster
from perceiver_med.io.discover import Discovery, Scan, Skip, discover
from perceiver_med.io.orientation import to_display

__all__ = ["Discovery", "Scan", "Skip", "discover", "read_scan"]


def read_scan(scan: Scan) -> tuple[np.ndarray, dict]:
    """Decode a scan found by `discover`. Raises ScanError with a one-line reason."""
    if scan.format == "nifti":
        array, meta = nifti.read(scan.files[0])
    elif scan.format == "dicom":
        array, meta = _read_dicom(scan)
    else:
        array, meta = raster.read(scan.files[0])
    if not np.isfinite(array).all():
        array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    meta["warnings"] = list(scan.warnings) + list(meta.get("warnings", []))
    return array, meta


def _read_dicom(scan: Scan) -> tuple[np.ndarray, dict]:
    if len(scan.files) == 1:
        array, meta = dicom.decode(scan.files[0])
        positions = meta.get("frame_positions")
        if array.ndim == 3 and positions and meta.get("orientation"):
            along = np.array([np.dot(dicom.slice_normal(meta["orientation"]), p) for p in positions])
            order = np.argsort(along)
            array = array[order]
            positions = [positions[k] for k in order]
            array, spacing = _to_display(array, meta, positions)
            meta["spacing"] = spacing
        else:
            meta["spacing"] = meta["pixel_spacing"]
        return array, meta
    slices, metas = [], []
    for file in scan.files:
        pixels, meta = dicom.decode(file)
        if pixels.ndim != 2:
            raise ScanError(f"{file.name}: a multi-frame file inside a slice series")
        slices.append(pixels)
        metas.append(meta)
    if len({s.shape for s in slices}) != 1:
        raise ScanError("slices of different sizes in one series")
    stack = np.stack(slices)
    meta = metas[0]
    if scan.ordering == "position":
        stack, spacing = _to_display(stack, meta, [m["position"] for m in metas])
        meta["spacing"] = spacing
    else:
        meta["spacing"] = meta["pixel_spacing"]
    # a window on the slices is kept only if it is the same on every slice
    if len({m["window"] for m in metas}) != 1:
        meta["window"] = None
    return stack, meta


def _to_display(stack: np.ndarray, meta: dict, positions) -> tuple[np.ndarray, tuple]:
    """Slices (k, row, col) sorted along the normal -> the common display orientation."""
    first, last = np.asarray(positions[0], float), np.asarray(positions[-1], float)
    step = (last - first) / max(len(positions) - 1, 1)
    if not np.any(step):
        step = dicom.slice_normal(meta["orientation"])
    affine = dicom.series_affine(meta["orientation"], first, step, meta["pixel_spacing"])
    return to_display(stack.transpose(2, 1, 0), affine)
