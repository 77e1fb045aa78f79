"""Readers: a scan's files -> ScanImage (voxels in the display convention, affine to patient LPS mm).

Images are (rows, cols); volumes (slices, rows, cols); see io/image.py for the affine and io/orientation.py
for the display convention, the same for every format.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from perceiver_med.errors import ScanError
from perceiver_med.io import dicom, nifti, raster
from perceiver_med.io.discover import Discovery, Scan, Skip, _os_reason, discover
from perceiver_med.io.image import ScanImage, placed
from perceiver_med.io.limits import unexpected
from perceiver_med.io.orientation import display_slices, to_display

__all__ = ["Discovery", "Scan", "ScanImage", "Skip", "discover", "read_scan"]

Pick = Callable[[int], list]


def read_scan(scan: Scan, pick: Pick | None = None) -> ScanImage:
    """Decode a scan found by `discover`. Raises ScanError with a one-line reason, whatever went wrong.

    `pick(num_slices)` -> display slice indices: for a volume, only those slices are read and returned
    (in that order), with `slices` and `num_slices` set; 2D images ignore it.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if scan.format == "nifti":
                image = nifti.read(scan.files[0], _pick_for(scan, pick))
            elif scan.format == "dicom":
                image = _read_dicom(scan, pick)
            else:
                image = raster.read(scan.files[0])
            voxels = image.voxels
            if not np.isfinite(voxels).all():
                voxels = np.nan_to_num(voxels, nan=0.0, posinf=0.0, neginf=0.0)
    except ScanError:
        raise
    except OSError as exc:
        file = Path(exc.filename) if isinstance(exc.filename, str) else scan.files[0]
        raise ScanError(f"{file.name}: {_os_reason(exc, file)}") from None
    except Exception as exc:  # never more than this scan's skip
        raise ScanError(unexpected(exc, "DICOM" if scan.format == "dicom" else scan.format)) from None
    return dataclasses.replace(image, voxels=voxels, warnings=tuple(scan.warnings) + tuple(image.warnings))


def _pick_for(scan: Scan, pick: Pick | None) -> list[int] | None:
    if pick is None or scan.kind != "volume" or len(scan.shape) != 3:
        return None
    return [int(k) for k in pick(scan.shape[0])]


def _read_dicom(scan: Scan, pick: Pick | None) -> ScanImage:
    if len(scan.files) == 1:
        return _read_dicom_file(scan, pick)
    return _read_series(scan, pick)


def _read_dicom_file(scan: Scan, pick: Pick | None) -> ScanImage:
    """One file, single- or multi-frame, reoriented by its own geometry (`dicom.frame_grid`, as discovery)."""
    pixels, meta = dicom.decode(scan.files[0])
    order, affine, assumed, ordering = dicom.frame_grid(meta)
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
    return placed(voxels, affine, data.shape, modality=meta["modality"], window=meta["window"], ordering=ordering,
                  format="dicom", assumed=assumed, warnings=tuple(dicom.assumption_warning(assumed)),
                  voi=meta["voi"], **picked)


def _decode_slice(scan: Scan, index: int, expected: tuple) -> np.ndarray:
    file = scan.files[index]
    try:
        pixels, _ = dicom.decode(file)
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
