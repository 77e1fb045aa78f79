"""DICOM files -> (array, metadata). Reading only: no resizing, no windowing beyond the modality LUT.

A header read never touches the pixel data: it checks from the header alone that the image fits the voxel
budget, that the pixel data element is all there (its length against Rows x Columns x frames x samples x
BitsAllocated, or the item lengths of compressed data) and that a decoder for its transfer syntax is
installed. Deflated files are inflated as a stream, only as far as needed, never past a cap.
"""
from __future__ import annotations

import os
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset as _pydicom_read_dataset, read_partial
from pydicom.pixels import apply_modality_lut
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian)

from perceiver_med.errors import ScanError
from perceiver_med.io.limits import check_size, describe, file_access_error
from perceiver_med.io.reader import NotThisFormat

DICOMDIR_SOP = "1.2.840.10008.1.3.10"
# Modalities whose single-frame series are stacked into volumes even when positions are missing.
VOLUME_MODALITIES = {"CT", "MR", "PT", "NM"}
PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)  # FloatPixelData, DoubleFloatPixelData, PixelData
LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"UT", b"UC", b"UR", b"SQ", b"SV", b"UV"}
HEADER_INFLATE_CAP = 64 << 20  # a deflated file's elements before its pixel data may inflate to 64 MiB
SLACK = 16 << 20


def _looks_like_raw_dicom(path: Path) -> bool:
    """A file without preamble and meta header starts directly with a group 0x0008 element."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head[:2] in (b"\x08\x00", b"\x00\x08")


class _Inflater:
    """A read-only file over a raw deflate stream, inflated on demand, never keeping more than `limit` bytes.

    `skip` moves forward without keeping what it passes (no seeking back before it afterwards).
    """

    def __init__(self, fp, limit: int):
        self._fp = fp
        self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
        self._data = bytearray()  # inflated bytes [_base, _base + len(_data))
        self._base = 0
        self._position = 0
        self.limit = limit
        self.name = getattr(fp, "name", None)

    def _inflate(self, most: int) -> bytes:
        while not self._zlib.eof:
            data = self._zlib.unconsumed_tail or self._fp.read(1 << 16)
            if not data:
                return b""
            chunk = self._zlib.decompress(data, most)
            if chunk:
                return chunk
        return b""

    def _fill(self, end: int) -> None:
        while self._base + len(self._data) < end:
            if len(self._data) >= self.limit:
                raise ScanError(f"the deflated data expands beyond {self.limit:,} bytes, more than its header "
                                "declares, so it is not read (a decompression bomb?)")
            chunk = self._inflate(min(max(end - self._base - len(self._data), 1 << 16), 1 << 20))
            if not chunk:
                return
            self._data += chunk

    def read(self, size: int = -1) -> bytes:
        end = self._base + self.limit + 1 if size is None or size < 0 else self._position + size
        self._fill(end)
        start = self._position - self._base
        if start < 0:
            raise ScanError("corrupt deflated DICOM: it asks to reread data already passed")
        out = bytes(self._data[start:start + (end - self._position)])
        self._position += len(out)
        return out

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 2:
            self._fill(self._base + self.limit + 1)
            offset += self._base + len(self._data)
        elif whence == 1:
            offset += self._position
        self._position = max(0, offset)
        return self._position

    def skip(self, size: int) -> int:
        """Move `size` bytes forward, inflating without keeping; returns how many bytes there were."""
        held_end = self._base + len(self._data)
        if self._position + size <= held_end:
            self._position += size
            return size
        count = max(held_end - self._position, 0)
        self._data = bytearray()
        while count < size:
            chunk = self._inflate(min(size - count, 1 << 20))
            if not chunk:
                break
            count += len(chunk)
        self._position += count
        self._base = self._position
        return count


def _deflated_start(fp) -> tuple[bytes, FileMetaDataset] | None:
    """(preamble, file meta) when the file is Deflated Explicit VR Little Endian; fp is then at the deflated data."""
    head = fp.read(4096)
    if head[128:132] != b"DICM" or str(DeflatedExplicitVRLittleEndian).encode() not in head:
        fp.seek(0)  # not deflated (the transfer syntax UID sits in the meta header, near the start)
        return None
    preamble = head[:128]
    fp.seek(132)
    # the file meta group is always explicit VR little endian (PS3.10 7.1); reading stops at the next group
    meta = FileMetaDataset(_pydicom_read_dataset(fp, False, True, stop_when=_after_file_meta))
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        fp.seek(0)
        return None
    return preamble, meta


def _after_file_meta(tag, vr, length) -> bool:
    return int(tag) >> 16 != 2


def _stop_before_pixels(tag, vr, length) -> bool:
    return int(tag) in PIXEL_TAGS


def _stop_after_pixels(tag, vr, length) -> bool:
    return int(tag) > 0x7FE00010


def _read(fp, path: Path, stop_when, force: bool) -> FileDataset:
    ds = read_partial(fp, stop_when, force=force)
    if force:
        _set_transfer_syntax(ds)
    return ds


def _parse(fp, path: Path, stop_when) -> FileDataset:
    """A dataset read up to `stop_when`, with or without preamble and meta header."""
    try:
        return _read(fp, path, stop_when, force=False)
    except InvalidDicomError:
        if not _looks_like_raw_dicom(path):
            raise NotThisFormat("not a DICOM file") from None
    except (EOFError, UnboundLocalError):  # pydicom's way of saying the file ends inside an element
        raise ScanError("truncated DICOM: the file ends inside its header") from None
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise ScanError(f"corrupt or truncated DICOM: {describe(exc)}") from None
    fp.seek(0)
    try:
        return _read(fp, path, stop_when, force=True)
    except (EOFError, UnboundLocalError):
        raise ScanError("truncated DICOM: the file ends inside its header") from None
    except Exception as exc:
        raise ScanError(f"corrupt DICOM: {describe(exc)}") from None


def read_dataset(path: Path, pixels: bool = False) -> pydicom.Dataset:
    """Read a DICOM file (with or without meta header); raise ScanError with a reason otherwise.

    With `pixels`, the header is checked first (budget, pixel data present and complete, a decoder
    installed) and the pixel data is read only if it passes.
    """
    return _read_checked(Path(path), pixels)[0]


def _read_checked(path: Path, pixels: bool) -> tuple[FileDataset, str]:
    """(dataset, problem): `problem` is why its pixel data cannot be decoded, found from the header alone.

    Without `pixels` the dataset stops before the pixel data; with it a problem is raised, not returned.
    """
    with open(path, "rb") as fp:
        size = os.fstat(fp.fileno()).st_size
        try:
            deflated = _deflated_start(fp)
        except Exception as exc:
            raise ScanError(f"corrupt DICOM meta header: {describe(exc)}") from None
        if deflated is not None:
            return _read_deflated(fp, path, deflated, pixels)
        ds = _parse(fp, path, _stop_before_pixels)

        def skip(count: int) -> int:
            here = fp.tell()
            fp.seek(here + count)
            return max(0, min(count, size - here))

        problem = _check_header(ds, fp, skip)
        if not pixels:
            return ds, problem
        if problem:
            raise ScanError(problem)
        fp.seek(0)
        return _parse(fp, path, _stop_after_pixels), ""


def _read_deflated(fp, path: Path, start: tuple[bytes, FileMetaDataset], pixels: bool) -> tuple[FileDataset, str]:
    preamble, meta = start
    origin = fp.tell()
    stream = _Inflater(fp, HEADER_INFLATE_CAP)
    dataset = _parse_deflated(stream)
    ds = FileDataset(str(path), dataset, preamble, meta, False, True)
    ds.set_original_encoding(False, True, dataset.original_character_set)
    header_end = stream.tell()
    problem = _check_header(ds, stream, None if pixels else stream.skip)
    if not pixels:
        return ds, problem
    if problem:
        raise ScanError(problem)
    expected = _expected_length(ds)
    fp.seek(origin)
    dataset = _parse_deflated(_Inflater(fp, header_end + 12 + 2 * expected + SLACK), _stop_after_pixels)
    meta = FileMetaDataset(meta)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian  # what the inflated bytes are
    ds = FileDataset(str(path), dataset, preamble, meta, False, True)
    ds.set_original_encoding(False, True, dataset.original_character_set)
    return ds, ""


def _parse_deflated(stream: "_Inflater", stop_when=_stop_before_pixels) -> pydicom.Dataset:
    try:
        return _pydicom_read_dataset(stream, False, True, stop_when=stop_when)
    except ScanError:
        raise
    except Exception as exc:
        raise ScanError(f"corrupt deflated DICOM: {describe(exc)}") from None


def _set_transfer_syntax(ds: pydicom.Dataset) -> None:
    """A file without meta header has no transfer syntax element: record the encoding pydicom detected."""
    if "TransferSyntaxUID" in getattr(ds, "file_meta", {}):
        return
    implicit, little = ds.original_encoding
    ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                      ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _transfer_syntax(ds) -> pydicom.uid.UID:
    return pydicom.uid.UID(str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", ExplicitVRLittleEndian)))


def _expected_length(ds) -> int:
    from pydicom.pixels.utils import get_expected_length

    return int(get_expected_length(ds, "bytes"))


def _image_size(ds) -> tuple[int, int, int]:
    """(rows, columns, frames) from the header, checked against the voxel budget."""
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise ScanError(f"invalid image size in the header: {describe(exc)}") from None
    if rows <= 0 or columns <= 0 or frames <= 0:
        raise ScanError(f"empty image: {rows} rows, {columns} columns, {frames} frame(s)")
    check_size((rows, columns), frames)
    return rows, columns, frames


def _check_header(ds, fp, skip: Callable[[int], int] | None) -> str:
    """The reason the pixel data cannot be decoded, found without decoding it; "" when there is none.

    `fp` is positioned at the pixel data element (or the end); `skip(n)` moves past n bytes and returns how
    many there were (None: do not check how much data follows).
    """
    if "Rows" not in ds or "Columns" not in ds:
        return "no image size (Rows, Columns) in the header"
    _image_size(ds)
    try:
        bits = int(ds.get("BitsAllocated", 0) or 0)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        _rescale(ds)
        _check_pixel_spacing(ds)
    except ScanError as exc:
        return str(exc)
    except (TypeError, ValueError) as exc:
        return f"invalid image header: {describe(exc)}"
    if bits not in (1, 8, 16, 32, 64):
        return f"BitsAllocated is {bits}, not 1, 8, 16, 32 or 64"
    if samples not in (1, 3):
        return f"SamplesPerPixel is {samples}, not 1 or 3"
    try:
        expected = _expected_length(ds)
    except Exception as exc:
        return f"incomplete image header: {describe(exc)}"
    element = _pixel_element(fp, ds)
    if element is None:
        return "no pixel data element"
    length = element
    syntax = _transfer_syntax(ds)
    if length == 0xFFFFFFFF:
        if not syntax.is_encapsulated:
            return f"compressed pixel data in a file whose transfer syntax ({syntax.name}) is uncompressed"
        return _check_fragments(fp, skip, expected, syntax, (int(ds.Rows), int(ds.Columns)))
    if syntax.is_encapsulated and syntax != DeflatedExplicitVRLittleEndian:
        return f"uncompressed pixel data in a file whose transfer syntax ({syntax.name}) is compressed"
    if length > 2 * expected + SLACK:
        return (f"the pixel data element is {length:,} bytes, far more than the {expected:,} that its header's "
                "image size declares")
    present = length if skip is None else skip(min(length, expected))
    if min(length, present) < expected:
        held = min(length, present)
        return (f"truncated pixel data: the file holds {held:,} of the {expected:,} bytes that Rows, Columns, "
                f"frames, samples and BitsAllocated declare")
    return ""


def _pixel_element(fp, ds) -> int | None:
    """The length of the pixel data element at the current position (0xFFFFFFFF: encapsulated), read past it."""
    implicit, little = ds.original_encoding if ds.original_encoding[0] is not None else (False, True)
    endian = "<" if little else ">"
    head = fp.read(8)
    if len(head) < 8:
        return None
    group, element = struct.unpack(endian + "HH", head[:4])
    if (group << 16 | element) not in PIXEL_TAGS:
        return None
    if implicit or not (b"AA" <= head[4:6] <= b"ZZ"):  # some writers switch to implicit VR for it
        return struct.unpack(endian + "I", head[4:8])[0]
    if head[4:6] in LONG_VRS:
        more = fp.read(4)
        if len(more) < 4:
            return None
        return struct.unpack(endian + "I", more)[0]
    return struct.unpack(endian + "H", head[6:8])[0]


def _check_fragments(fp, skip, expected: int, syntax, size: tuple[int, int] = (0, 0)) -> str:
    """Walk the items of encapsulated pixel data: item headers, and the first bytes of each frame.

    A JPEG or JPEG 2000 frame claiming more rows or columns than the DICOM header is refused: its
    decoder would allocate what the frame claims (a decompression bomb inside a small file).
    """
    from pydicom.pixels import get_decoder

    try:
        if not get_decoder(syntax).is_available:
            return f"pixel data compressed as {syntax.name}, and no installed decoder reads it"
    except (NotImplementedError, ValueError):
        return f"pixel data compressed as {syntax.name}, which pydicom cannot decode"
    if skip is None:
        return ""
    total, fragments = 0, 0
    while True:
        head = fp.read(8)
        if len(head) < 8:
            return "truncated compressed pixel data: the file ends inside it"
        group, element, length = struct.unpack("<HHI", head)
        tag = group << 16 | element
        if tag == 0xFFFEE0DD:
            break
        if tag != 0xFFFEE000 or length == 0xFFFFFFFF:
            return "corrupt compressed pixel data: an item is not where its predecessor ends"
        head = fp.read(min(length, 4096)) if fragments else b""  # the first item is the offset table
        if (fragments and len(head) < min(length, 4096)) or skip(length - len(head)) < length - len(head):
            return "truncated compressed pixel data: the file ends inside it"
        frame = _frame_size(head)
        if frame and (frame[0] > size[0] or frame[1] > size[1]):
            return (f"a compressed frame claims {frame[0]}x{frame[1]} pixels, more than the {size[0]}x{size[1]} "
                    "its header declares, so it is not decoded")
        total += length
        fragments += 1
        if total > 2 * expected + SLACK:
            return (f"the compressed pixel data exceeds {total:,} bytes, far more than the {expected:,} bytes of "
                    "the image its header declares")
    if fragments < 2:  # the first item is the basic offset table
        return "compressed pixel data without any frame"
    return ""


def _frame_size(head: bytes) -> tuple[int, int] | None:
    """(rows, columns) a JPEG, JPEG-LS or JPEG 2000 codestream declares in its first bytes, if it can be told."""
    if head.startswith(b"\xff\xd8"):
        try:
            from pydicom.pixels.utils import _get_jpg_parameters

            params = _get_jpg_parameters(head)
        except Exception:
            return None
        rows, columns = int(params.get("height", 0) or 0), int(params.get("width", 0) or 0)
        return (rows, columns) if rows and columns else None
    at = head.find(b"\xff\x4f\xff\x51")  # JPEG 2000: SOC, then SIZ
    if at < 0 or len(head) < at + 24:
        return None
    width, height, x0, y0 = struct.unpack(">IIII", head[at + 8:at + 24])
    return (height - y0, width - x0) if height > y0 and width > x0 else None


def _rescale(ds) -> tuple[float, float]:
    try:
        slope = float(ds.get("RescaleSlope", 1) if ds.get("RescaleSlope", None) not in (None, "") else 1)
        intercept = float(ds.get("RescaleIntercept", 0) if ds.get("RescaleIntercept", None) not in (None, "")
                          else 0)
    except (TypeError, ValueError) as exc:
        raise ScanError(f"invalid RescaleSlope or RescaleIntercept: {describe(exc)}") from None
    if not (np.isfinite(slope) and np.isfinite(intercept)):
        raise ScanError("RescaleSlope or RescaleIntercept is not a finite number")
    if slope == 0 and "ModalityLUTSequence" not in ds:
        raise ScanError(f"RescaleSlope is 0: every pixel would have the value of RescaleIntercept ({intercept:g}), "
                        "so the image holds nothing to classify")
    return slope, intercept


def _guarded(function):
    """pydicom raises many exception types (and warns) on odd files; turn them into one skip reason."""

    def wrapper(path: Path, *args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return function(Path(path), *args, **kwargs)
            except ScanError:
                raise
            except MemoryError:
                raise ScanError("not enough memory to read this DICOM file") from None
            except Exception as exc:
                if file_access_error(exc):
                    raise  # the caller says what became of the file (vanished, permission denied...)
                raise ScanError(f"invalid DICOM: {describe(exc)}") from None

    wrapper.__doc__ = function.__doc__
    wrapper.__name__ = function.__name__
    return wrapper


@dataclass(frozen=True)
class DicomGeometry:
    """Modality and where a file's frames lie, the same for `header` (discovery) and `decode` (reading).

    Positions and orientations are as the file states them (DICOM LPS mm); None where it states none.
    """

    modality: str
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing), mm
    frames: int
    frame_positions: list | None  # an enhanced multi-frame file's per-frame ImagePositionPatient
    orientation: tuple[float, ...] | None  # ImageOrientationPatient: row direction, then column direction
    position: tuple[float, ...] | None  # ImagePositionPatient of the first voxel
    slice_spacing: float | None  # SpacingBetweenSlices, else SliceThickness

    @property
    def has_geometry(self) -> bool:
        """A position and a valid orientation: the file places its image in the patient."""
        return bool(self.position) and len(self.position) == 3 and valid_orientation(self.orientation)


@dataclass(frozen=True)
class DicomHeader(DicomGeometry):
    """What one file's header says that finding, grouping and labelling scans needs (no pixel data read).

    `problem` is why its pixel data cannot be decoded, found from the header alone ("" when it can): a slice
    with a problem is left out of its series, a single file is skipped.
    """

    series_uid: str
    study_uid: str
    sop_uid: str
    patient_id: str
    laterality: str  # ImageLaterality, else Laterality, upper case ("L", "R", ...)
    rows: int
    columns: int
    instance_number: int | None
    slice_thickness: float | None
    window: tuple[float, float] | None  # the first VOI window (center, width) as stored
    photometric: str
    problem: str


@dataclass(frozen=True, eq=False)
class DicomPixels:
    """One decoded file: its pixels (modality LUT applied, grey, dense = bright) and their geometry.

    Args:
        pixels: float32, (rows, cols) or (frames, rows, cols) in stored order.
        geometry: where the frames lie.
        window: the VOI window (center, width) in the values of `pixels` (moved for MONOCHROME1), or None.
        voi: the VOI LUT module for preprocessing, or None.
    """

    pixels: np.ndarray
    geometry: DicomGeometry
    window: tuple[float, float] | None
    voi: DicomVoi | None


@_guarded
def header(path: Path) -> DicomHeader:
    """Header facts needed to find, group and label scans. Raises ScanError for non-image files."""
    ds, problem = _read_checked(path, pixels=False)
    sop = str(ds.get("SOPClassUID", ""))
    if sop == DICOMDIR_SOP or "DirectoryRecordSequence" in ds:
        raise ScanError("DICOMDIR (a media index, not an image)")
    if "Rows" not in ds or "Columns" not in ds:
        name = getattr(ds.get("SOPClassUID"), "name", "") or ds.get("Modality", "unknown")
        raise ScanError(f"no pixel data ({name})")
    if str(ds.get("Modality", "")).upper() == "SEG":  # a label map beside its CT (TCIA layouts), not a scan
        raise ScanError("a segmentation (DICOM SEG), not an image: `perceiver-med points` turns it into points")
    rows, columns, frames = _image_size(ds)
    return DicomHeader(
        **_geometry(ds, frames),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        sop_uid=str(ds.get("SOPInstanceUID", "")).strip(),
        patient_id=str(ds.get("PatientID", "")).strip(),
        laterality=str(ds.get("ImageLaterality", "") or ds.get("Laterality", "")).strip().upper(),
        rows=rows,
        columns=columns,
        instance_number=_int_or_none(ds.get("InstanceNumber")),
        slice_thickness=_float_or_none(ds.get("SliceThickness")),
        window=_voi_window(ds),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper().strip(),
        problem=problem,
    )


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float_or_none(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _floats(value) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        values = tuple(float(v) for v in (value if isinstance(value, (list, tuple, pydicom.multival.MultiValue))
                                          else [value]))
    except (TypeError, ValueError):
        return None
    return values if values and all(np.isfinite(values)) else None


def _pixel_spacing(ds) -> tuple[float, float] | None:
    """(row, column) spacing in mm; None when the file gives none (`_check_pixel_spacing` refuses a wrong one)."""
    found = _stated_pixel_spacing(ds)
    if found is None:
        return None
    spacing = _floats(found[1])
    if not spacing or len(spacing) < 2 or min(spacing[:2]) <= 0:
        return None
    return tuple(spacing[:2])


def _stated_pixel_spacing(ds) -> tuple[str, object] | None:
    """(keyword, value) of the pixel spacing the file states: PixelSpacing, else ImagerPixelSpacing, else an
    enhanced file's shared pixel measures; None when it states none."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if ds.get(keyword) not in (None, ""):
            return keyword, ds.get(keyword)
    if "SharedFunctionalGroupsSequence" in ds:
        shared = _first(ds.SharedFunctionalGroupsSequence)
        if shared is not None and "PixelMeasuresSequence" in shared:
            measures = _first(shared.PixelMeasuresSequence)
            if measures is not None and measures.get("PixelSpacing") not in (None, ""):
                return "PixelSpacing", measures.get("PixelSpacing")
    return None


def _check_pixel_spacing(ds) -> None:
    """ScanError when the file states a pixel spacing that is not two sizes above 0 mm. One stated wrongly is
    refused, not replaced by 1 mm: in millimetres (a point's grid) that would show another field of view, and
    image and grid inputs refuse it too, so that one header gives one answer whatever the input."""
    found = _stated_pixel_spacing(ds)
    if found is None:
        return
    keyword, value = found
    spacing = _floats(value)
    if not spacing or len(spacing) < 2 or min(spacing[:2]) <= 0:
        values = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
        text = "\\".join(str(v) for v in values)
        raise ScanError(f"{keyword} is {text}: a pixel size must be two numbers of mm above 0, so the size of "
                        "what the image shows is unknown")


def _first(sequence):
    return sequence[0] if sequence is not None and len(sequence) else None


def _voi_window(ds) -> tuple[float, float] | None:
    """First (center, width) pair of the VOI LUT window, if the file has one."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    center = center[0] if isinstance(center, pydicom.multival.MultiValue) else center
    width = width[0] if isinstance(width, pydicom.multival.MultiValue) else width
    try:
        center, width = float(center), float(width)
    except (TypeError, ValueError):
        return None
    return (center, width) if width > 0 and np.isfinite(center) and np.isfinite(width) else None


@_guarded
def decode(path: Path) -> DicomPixels:
    """Decode one file's pixels: modality LUT applied, grey, dense = bright, in float32."""
    ds = read_dataset(path, pixels=True)
    if not any(tag in ds for tag in PIXEL_TAGS):
        raise ScanError("no pixel data")
    rows, columns, frames = _image_size(ds)
    try:
        pixels = ds.pixel_array
    except MemoryError:
        raise ScanError("not enough memory to decode the pixel data") from None
    except Exception as exc:
        raise ScanError(f"cannot decode pixel data: {describe(exc)}") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper().strip()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 3 or photometric in ("RGB", "PALETTE COLOR") or photometric.startswith("YBR"):
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            pixels = apply_color_lut(pixels, ds)
        if pixels.ndim < 3 or pixels.shape[-1] < 3:
            raise ScanError(f"colour image ({photometric}) without three samples per pixel")
        # pydicom already converted YBR to RGB; ITU-R 601 luma weights give the grey level.
        array = (pixels[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
        window = None
        voi = None
    else:
        array = _modality_lut(pixels, ds)
        window, inverted_about = _voi_window(ds), None
        if photometric == "MONOCHROME1":
            # MONOCHROME1 shows dense tissue dark; invert so dense is always bright, window included.
            low, high = float(array.min()), float(array.max())
            inverted_about = high + low
            array = inverted_about - array
            if window is not None:
                window = (high + low - window[0], window[1])
        voi = _voi(ds, inverted_about)
    expected = (rows, columns) if frames == 1 else (frames, rows, columns)
    if array.shape != expected:
        raise ScanError(f"decoded pixel data is {'x'.join(map(str, array.shape))}, "
                        f"not the {'x'.join(map(str, expected))} its header declares")
    return DicomPixels(array, DicomGeometry(**_geometry(ds, frames)), window, voi)


VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


@dataclass(frozen=True, eq=False)
class DicomVoi:
    """A DICOM image's VOI LUT module, kept for preprocessing (windows.apply_dicom_voi); reading applies none of it.

    Args:
        attributes: a Dataset holding the first VOI view only (VOI LUT Sequence item and/or Window Center, Width
            and VOI LUT Function), with BitsStored 16, unsigned and no rescale: the values it is applied to are
            already modality values, so these only fix pydicom's windowing output range at 0..65535.
        inverted_about: for MONOCHROME1, the voxels are (inverted_about - modality values); None otherwise.
    """

    attributes: pydicom.Dataset
    inverted_about: float | None = None

    @property
    def has_transform(self) -> bool:
        return "VOILUTSequence" in self.attributes or "WindowCenter" in self.attributes


def _voi(ds, inverted_about: float | None) -> DicomVoi | None:
    """The first usable VOI view of a file, or None. Views pydicom cannot apply are left out, not failed on."""
    attributes = pydicom.Dataset()
    try:
        item = _first(ds.get("VOILUTSequence"))
    except Exception:  # a malformed sequence: the image is still readable, without its table
        item = None
    if item is not None and _usable_lut(item):
        attributes.VOILUTSequence = [item]
        attributes.file_meta = FileMetaDataset()  # pydicom reads OW LUT data in the file's byte order
        attributes.file_meta.TransferSyntaxUID = _transfer_syntax(ds)
    window = _voi_window(ds)
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    if window is not None and function in VOI_FUNCTIONS and not (function == "LINEAR" and window[1] < 1):
        attributes.WindowCenter, attributes.WindowWidth = window
        attributes.VOILUTFunction = function
    if not attributes:
        return None
    attributes.BitsStored, attributes.PixelRepresentation = 16, 0
    attributes.PhotometricInterpretation = "MONOCHROME2"
    return DicomVoi(attributes, inverted_about)


def _usable_lut(item) -> bool:
    """A VOI LUT pydicom applies: 3 descriptor values, 8 or 10..16 bits, and as many entries as it declares."""
    try:
        entries, _, bits = (int(v) for v in item.LUTDescriptor)
        data = item.LUTData
    except (AttributeError, TypeError, ValueError):
        return False
    if isinstance(data, bytes):
        count = len(data) // 2  # OW: 16-bit words
    else:
        count = len(data) if isinstance(data, (list, tuple, pydicom.multival.MultiValue)) else 1
    return (bits == 8 or 10 <= bits <= 16) and count >= (entries or 1 << 16)


def _modality_lut(pixels: np.ndarray, ds) -> np.ndarray:
    """Stored values -> modality values (HU for CT), in float32 (no float64 copy of a whole multi-frame file)."""
    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    slope, intercept = _rescale(ds)
    array = pixels.astype(np.float32)
    if slope != 1.0:
        array *= np.float32(slope)
    if intercept != 0.0:
        array += np.float32(intercept)
    return array


def _geometry(ds, frames: int) -> dict:
    """DicomGeometry's fields, read the same way for `header` (discovery) and `decode` (reading)."""
    return dict(
        modality=str(ds.get("Modality", "")),
        pixel_spacing=_pixel_spacing(ds),
        frames=frames,
        frame_positions=_frame_positions(ds) if frames > 1 else None,
        orientation=_floats(ds.get("ImageOrientationPatient")) or _shared_orientation(ds),
        position=_floats(ds.get("ImagePositionPatient")),
        slice_spacing=_slice_spacing(ds),
    )


def _slice_spacing(ds) -> float | None:
    """SpacingBetweenSlices, else SliceThickness (top level, or an enhanced file's shared pixel measures)."""
    places = [ds]
    if "SharedFunctionalGroupsSequence" in ds:
        shared = _first(ds.SharedFunctionalGroupsSequence)
        if shared is not None and "PixelMeasuresSequence" in shared:
            places.append(_first(shared.PixelMeasuresSequence))
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        for place in places:
            value = _floats(place.get(keyword)) if place is not None else None
            if value and value[0] > 0:
                return value[0]
    return None


def _shared_orientation(ds):
    if "SharedFunctionalGroupsSequence" in ds:
        shared = _first(ds.SharedFunctionalGroupsSequence)
        if shared is not None and "PlaneOrientationSequence" in shared:
            plane = _first(shared.PlaneOrientationSequence)
            return _floats(plane.get("ImageOrientationPatient")) if plane is not None else None
    return None


def _frame_positions(ds) -> list | None:
    """Per-frame ImagePositionPatient of an enhanced multi-frame file, if present for every frame."""
    if "PerFrameFunctionalGroupsSequence" not in ds:
        return None
    positions = []
    for item in ds.PerFrameFunctionalGroupsSequence:
        plane = _first(item.get("PlanePositionSequence"))
        if plane is None:
            return None
        positions.append(_floats(plane.get("ImagePositionPatient")))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if len(positions) != frames or any(p is None or len(p) != 3 for p in positions):
        return None
    return positions


def valid_orientation(orientation) -> bool:
    """Six finite direction cosines whose row and column directions are not parallel."""
    if orientation is None or len(orientation) != 6:
        return False
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    return bool(np.linalg.norm(np.cross(row, col)) > 1e-3)


def slice_normal(orientation) -> np.ndarray:
    """Unit normal of the image plane: row direction x column direction (DICOM LPS)."""
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    normal = np.cross(row, col)
    return normal / (np.linalg.norm(normal) or 1.0)


def series_affine(orientation, first_position, step, pixel_spacing) -> np.ndarray:
    """Voxel (column i, row j, slice k) -> RAS millimetres, from DICOM geometry (which is LPS)."""
    row_dir, col_dir = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    row_spacing, col_spacing = pixel_spacing or (1.0, 1.0)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing  # moving along a row = next column
    lps[:3, 1] = col_dir * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = first_position
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def stack_affine(orientation, positions, pixel_spacing) -> np.ndarray:
    """The affine of slices stacked in the order of `positions` (sorted along the normal).

    The slice step is the median step between neighbours, so one missing slice does not change it.
    """
    points = np.asarray(positions, dtype=float)
    if len(points) > 1:
        step = np.median(np.diff(points, axis=0), axis=0)
    else:
        step = np.zeros(3)
    if not np.any(step):
        step = slice_normal(orientation)
    return series_affine(orientation, points[0], step, pixel_spacing)


def order_along_normal(orientation, positions) -> np.ndarray:
    along = np.array([np.dot(slice_normal(orientation), p) for p in positions])
    return np.argsort(along, kind="stable")


AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_ASSUMPTIONS = {
    "orientation": "no ImageOrientationPatient, so an axial orientation is assumed (rows anterior to posterior, "
                   "columns patient right to left: the image as stored)",
    "position": "no ImagePositionPatient, so the first voxel is placed at the origin",
    "pixel spacing": "no PixelSpacing, so 1 mm pixels are assumed",
    "slice order": "no per-slice positions, so the slices are assumed to run along the slice normal (row "
                   "direction x column direction) in the order stored",
    "slice spacing": "no SpacingBetweenSlices or SliceThickness above 0 mm, so 1 mm between slices is assumed",
}


def grid(geometry: DicomGeometry, count: int = 1, positions=None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Stored voxel (column, row, slice) -> RAS mm for `count` slices sharing `geometry` (from `header` or
    `decode`), and what had to be assumed for it (see `assumption_warning`).

    `positions`: every slice's ImagePositionPatient in stack order along the normal; without them, the slices
    start at the geometry's position and step along the normal by its slice spacing.
    """
    orientation, spacing = geometry.orientation, geometry.pixel_spacing
    assumed = [] if spacing else ["pixel spacing"]
    if not valid_orientation(orientation):
        orientation = AXIAL
        assumed.append("orientation")
    if positions is not None and count > 1:
        return stack_affine(orientation, positions, spacing), tuple(assumed)
    first = geometry.position
    if "orientation" in assumed or not first or len(first) != 3:
        first = (0.0, 0.0, 0.0)
        assumed.append("position")
    step = geometry.slice_spacing
    if count > 1:
        assumed += ["slice order"] + ([] if step else ["slice spacing"])
    return series_affine(orientation, first, slice_normal(orientation) * (step or 1.0), spacing), tuple(assumed)


def frame_grid(geometry: DicomGeometry) -> tuple[list[int], np.ndarray, tuple[str, ...], str]:
    """A single file's frames: (stored frames in stack order, affine as `grid`, what was assumed, ordering).

    Frames with a position each are sorted along the normal ("position"); others keep their stored order
    ("frames", or "image" for a single frame).
    """
    frames, positions, orientation = geometry.frames, geometry.frame_positions, geometry.orientation
    if frames > 1 and positions and valid_orientation(orientation):
        order = [int(k) for k in order_along_normal(orientation, positions)]
        affine, assumed = grid(geometry, frames, [positions[k] for k in order])
        return order, affine, assumed, "position"
    affine, assumed = grid(geometry, frames)
    return list(range(frames)), affine, assumed, "frames" if frames > 1 else "image"


def assumption_warning(assumed) -> list[str]:
    """One warning sentence for what `grid` assumed ([] when nothing was)."""
    if not assumed:
        return []
    return ["patient geometry assumed: " + "; ".join(_ASSUMPTIONS[a] for a in assumed if a in _ASSUMPTIONS)]


def plane_name(orientation) -> str:
    """axial, coronal, sagittal or oblique: the patient axis the slice normal is closest to (within ~20 deg)."""
    normal = np.abs(slice_normal(orientation))
    axis = int(np.argmax(normal))
    return ("sagittal", "coronal", "axial")[axis] if normal[axis] > 0.94 else "oblique"
