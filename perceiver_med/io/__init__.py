"""Readers: a scan's files -> ScanImage (voxels in the display convention, affine to patient LPS mm).

Every format is read by one `Reader` (reader.py) registered in formats.py, the one place that tells formats
apart: `discover` asks it which reader each file belongs to and lets that reader make the scans (one per
NIfTI, MetaImage or picture; DICOM series are assembled by the DICOM reader, dicom_series.py), and `read_scan`
asks it which reader reads a scan. Adding a format is one module with a Reader subclass (metaimage.py is one) and
one entry in `formats.READERS`; nothing else changes. Segmentation masks are read by `read_label_map` (label_maps.py).

Images are (rows, cols); volumes (slices, rows, cols); see io/image.py for the affine and io/orientation.py
for the display convention, the same for every format. Nothing outside io/ opens an image file.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np

from perceiver_med.errors import ScanError
from perceiver_med.io.discover import Discovery, discover
from perceiver_med.io.image import ScanImage
from perceiver_med.io.label_maps import LabelMap, read_label_map
from perceiver_med.io.limits import os_reason, unexpected
from perceiver_med.io.reader import Pick, Reader
from perceiver_med.io.formats import READERS, reader_for, reader_of
from perceiver_med.io.scans import Scan, Skip

__all__ = ["Discovery", "LabelMap", "Pick", "READERS", "Reader", "Scan", "ScanImage", "Skip", "discover",
           "read_label_map", "read_scan", "reader_for", "reader_of"]


def read_scan(scan: Scan, pick: Pick | None = None) -> ScanImage:
    """Decode a scan found by `discover`. Raises ScanError with a one-line reason, whatever went wrong.

    `pick(num_slices)` -> display slice indices: for a volume, only those slices are read and returned
    (in that order), with `slices` and `num_slices` set; 2D images ignore it. A scan with a voxel read that is NaN
    or infinite is refused: there is no value to put in its place that the model would not take for tissue.
    """
    reader = reader_of(scan.format)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = reader.read(scan, pick)
            finite = int(np.count_nonzero(np.isfinite(image.voxels)))
    except ScanError:
        raise
    except OSError as exc:
        file = Path(exc.filename) if isinstance(exc.filename, str) else scan.files[0]
        raise ScanError(f"{file.name}: {os_reason(exc, file)}") from None
    except Exception as exc:  # never more than this scan's skip
        raise ScanError(unexpected(exc, reader.name)) from None
    if finite < image.voxels.size:  # a NaN is no intensity: made 0, it would pass for a real value
        read = "voxels" if image.slices is None else f"voxels of the {len(image.slices)} slice(s) read"
        raise ScanError(f"{image.voxels.size - finite:,} of its {image.voxels.size:,} {read} are not numbers (NaN "
                        "or infinite), so the scan is not used")
    return dataclasses.replace(image, warnings=tuple(scan.warnings) + tuple(image.warnings))
