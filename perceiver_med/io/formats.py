"""The registry of readers: the one place that decides which reader reads a file, and which reads a scan.

Readers are asked in order and the first that claims a file reads it: NIfTI, MetaImage and pictures by their names,
then DICOM, which claims every other file (DICOM files often have no extension) and says from its header
whether it is one. Adding a format is one module with a `Reader` and one entry here, before DICOM.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from perceiver_med.errors import ScanError
from perceiver_med.io import dicom_series, lidc_xml, metaimage, nifti, raster
from perceiver_med.io.limits import os_reason, unexpected
from perceiver_med.io.reader import NotThisFormat, Reader

READERS: tuple[Reader, ...] = (nifti.READER, metaimage.READER, raster.READER, dicom_series.READER)


def reader_for(path: Path) -> Reader:
    """The reader of a file: the first that claims it by name or content."""
    return next(reader for reader in READERS if reader.claims(path))


def reader_of(format: str) -> Reader:
    """The reader of a discovered scan, by its format (Scan.format)."""
    for reader in READERS:
        if format in reader.formats:
            return reader
    raise ScanError(f"no reader for scans of format {format!r}")


def files_of(path: Path) -> list[Path]:
    """The files reading the scan file `path` opens: itself, and for a MetaImage header its data files."""
    return reader_for(path).files_of(path)


def formats_read() -> str:
    """What perceiver-med reads, for a message: "DICOM, MetaImage, NIfTI, PNG or JPEG"."""
    return ", ".join(sorted(reader.formats_read for reader in READERS))


def read_header(file: Path) -> tuple[Reader, object]:
    """(reader, header) of one file; raises ScanError with the reason it is skipped, whatever went wrong."""
    reader = None
    try:
        reader = reader_for(file)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return reader, reader.header(file)
    except NotThisFormat:
        if lidc_xml.reading_kind(file) == "lidc":  # beside its series in a TCIA download
            raise ScanError("an LIDC-IDRI reading (XML), not an image: `perceiver-med points` turns it into points") \
                from None
        raise ScanError(f"not a {formats_read()} file ({file.suffix or 'no extension'})") from None
    except ScanError:
        raise
    except OSError as exc:
        raise ScanError(os_reason(exc, file)) from None
    except Exception as exc:  # a reader's bug or a file nobody foresaw: never more than this file's skip
        raise ScanError(unexpected(exc, reader.name if reader else "file")) from None
