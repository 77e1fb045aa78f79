"""The reader contract: what every format's reader does, so that discovery and reading never name a format.

A reader (compare MONAI's `ImageReader`: `verify_suffix`, `read`, `get_data`) answers four questions:

- `claims(path)`: is this file mine? From its name or first bytes only, never a parse: the registry asks
  each reader in turn and the first that claims a file reads it (the last reader may claim everything);
- `header(path)`: what a scan's header says, without decoding voxels (raises ScanError with the reason);
- `scans(headers, base)`: the scans a set of its files make (one per file, or a DICOM series of many), and
  the files passed over with the reason;
- `read(scan, pick)`: the scan's voxels and geometry as one ScanImage (raises ScanError with the reason).

A file a reader claims but turns out not to be its format raises `NotThisFormat`: the registry then says
which formats perceiver-med reads, once, whichever reader was asked last.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from perceiver_med.errors import ScanError
from perceiver_med.io.image import ScanImage
from perceiver_med.io.scans import VOLUME_SCAN, Scan, Skip, relative

Pick = Callable[[int], list]  # num_slices -> the display slice indices to read


@dataclass(frozen=True)
class ImageHeader:
    """The header of a format whose every file is one scan (NIfTI, PNG, JPEG): what discovery lists.

    Args:
        format: the Scan.format it becomes ("nifti", "png", "jpeg").
        kind: a scan kind, IMAGE_SCAN or VOLUME_SCAN (io/scans.py).
        shape: (rows, cols) or (slices, rows, cols), in the display convention, as `read` will return it.
        spacing: mm along each axis of `shape`, or None where the format has no pixel size.
        warnings: sentences for the user about the file (an extra dimension left out...).
    """

    format: str
    kind: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...] | None = None
    warnings: tuple[str, ...] = ()


class NotThisFormat(ScanError):
    """The file is not in the format of the reader that claimed it (and no other reader claims it)."""


class Reader:
    """One file format behind the contract above. A subclass sets the class attributes and overrides
    `claims`, `header` and `read`; `scans` defaults to one scan per file, made by `scan` from an ImageHeader.

    Attributes:
        name: the format as a user reads it in a message ("the NIfTI reader failed on this file").
        formats_read: what a skip says it reads ("NIfTI", "PNG or JPEG").
        formats: the `Scan.format` / `ScanImage.format` values it produces.
    """

    name: str = ""
    formats_read: str = ""
    formats: tuple[str, ...] = ()

    def claims(self, path: Path) -> bool:
        raise NotImplementedError

    def header(self, path: Path):
        raise NotImplementedError

    def scan(self, file: Path, header: ImageHeader, base: Path) -> Scan:
        """The scan one file makes, from its header (readers of one-file scans return an ImageHeader)."""
        return Scan(id=relative(file, base), path=file, files=[file], format=header.format, kind=header.kind,
                    shape=header.shape, spacing=header.spacing, warnings=list(header.warnings))

    def scans(self, headers: list[tuple[Path, object]], base: Path) -> tuple[list[Scan], list[Skip]]:
        return [self.scan(file, header, base) for file, header in headers], []

    def read(self, scan: Scan, pick: Pick | None = None) -> ScanImage:
        raise NotImplementedError

    def files_of(self, path: Path) -> list[Path]:
        """The files reading the scan file `path` opens (a cache entry is valid while none of them changes)."""
        return [path]


def pick_for(scan: Scan, pick: Pick | None) -> list[int] | None:
    """The display slices `pick` chooses for a volume whose shape discovery found; None for an image."""
    if pick is None or scan.kind != VOLUME_SCAN or len(scan.shape) != 3:
        return None
    return [int(k) for k in pick(scan.shape[0])]

