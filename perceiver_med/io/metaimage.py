"""MetaImage (.mha, or .mhd with its .raw / .zraw data file) -> ScanImage, reoriented to the display convention.

MetaImage is ITK's own format, the one LUNA16 (.mhd + .raw) and LUNA25 (.mha, zlib-compressed) ship. It is read
with SimpleITK, the reader the challenges' organisers use, so a scan's geometry here is the one their coordinates
were measured in: ITK maps voxel (i, j, k) to `Offset + TransformMatrix @ (ElementSpacing * (i, j, k))`, already in
LPS millimetres (the file lists the matrix one axis direction after another). That affine, made RAS, goes through
the same reorientation as a NIfTI's, so the same anatomy gives the same array and affine from every format.

Discovery parses the text header only (never the voxels): its size, voxel type and data file. A .mhd names its
data file (ElementDataFile), which discovery keeps with the scan; a .raw or .zraw that no header names is skipped
with the reason. A file named by a DICOM UID (LUNA names each file `<SeriesInstanceUID>.mha`) gives the scan that
series UID, so a points file finds it by `seriesuid`. A model input that needs a few slices reads only the block of
planes they lie in (ITK streams it out of an uncompressed file, and inflates a compressed one only that far).
"""
from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perceiver_med.errors import ScanError
from perceiver_med.io.image import ScanImage, placed
from perceiver_med.io.limits import check_size, describe, file_access_error
from perceiver_med.io.orientation import LPS_FROM_RAS, display_shape, display_slices, display_spacing, to_display
from perceiver_med.io.reader import ImageHeader, NotThisFormat, Pick, Reader, pick_for
from perceiver_med.io.scans import IMAGE_SCAN, VOLUME_SCAN, Scan, Skip

HEADER_SUFFIXES = (".mha", ".mhd")
DATA_SUFFIXES = (".raw", ".zraw")
MAX_HEADER_BYTES = 1 << 16  # a MetaImage header is a few hundred bytes of text; beyond this it is not one
# ElementType -> bytes per value (MET_*_ARRAY types hold several channels, given by ElementNumberOfChannels)
ELEMENT_TYPES = {"CHAR": "i1", "UCHAR": "u1", "SHORT": "i2", "USHORT": "u2", "INT": "i4", "UINT": "u4", "LONG": "i4",
                 "ULONG": "u4", "LONG_LONG": "i8", "ULONG_LONG": "u8", "FLOAT": "f4", "DOUBLE": "f8"}
UID = re.compile(r"[0-9]+(\.[0-9]+)+")  # a DICOM UID: digits and dots, 64 characters at most


class MetaImageReader(Reader):
    """MetaImage headers (.mha, .mhd) and the data files they name (.raw, .zraw), claimed by name."""

    name = "MetaImage"
    formats_read = "MetaImage"
    formats = ("metaimage",)

    def claims(self, path: Path) -> bool:
        return path.name.lower().endswith(HEADER_SUFFIXES + DATA_SUFFIXES)

    def header(self, path: Path) -> ImageHeader | DataFile:
        if path.name.lower().endswith(DATA_SUFFIXES):
            return DataFile()  # its header says what it holds: matched in `scans`
        return header(path)

    def scans(self, headers: list[tuple[Path, object]], base: Path) -> tuple[list[Scan], list[Skip]]:
        """One scan per header, holding its data file; data files that no header names are skipped."""
        scans, named = [], set()
        for file, found in headers:
            if isinstance(found, MetaHeader):
                scan = self.scan(file, found, base)
                scan.files += list(found.data_files)
                scan.modality, scan.series_uid = found.modality, series_uid(file)
                scans.append(scan)
                named.update(data.resolve() for data in found.data_files)
        skipped = [Skip(file, _unnamed(file)) for file, found in headers
                   if isinstance(found, DataFile) and file.resolve() not in named]
        return scans, skipped

    def read(self, scan: Scan, pick: Pick | None = None) -> ScanImage:
        return read(scan.files[0], pick_for(scan, pick))

    def files_of(self, path: Path) -> list[Path]:
        """A header and the data files it names (from its text, no voxels read); the file alone if it is no header."""
        try:
            fields, listed, _ = _fields(path)
            return [path, *_data_files(path, fields, listed)]
        except (ScanError, OSError):
            return [path]


def _unnamed(data: Path) -> str:
    """Why a data file is no scan's: its header (of the same name) was skipped, or no header names it."""
    header = data.with_suffix(".mhd")
    if header.is_file():
        return f"the data file of {header.name}, which is not read (its own line says why)"
    return "a MetaImage data file that no .mhd header beside it names (ElementDataFile)"


@dataclass(frozen=True)
class DataFile:
    """A .raw or .zraw file: voxels whose header is another file."""


@dataclass(frozen=True)
class MetaHeader(ImageHeader):
    """An ImageHeader with the data files the MetaImage header names (none for data inside the .mha) and its
    Modality ("" where the file does not say)."""

    data_files: tuple[Path, ...] = ()
    modality: str = ""


def series_uid(path: Path) -> str:
    """The SeriesInstanceUID a MetaImage's file name gives (LUNA16 and LUNA25 name files by it), else ""."""
    stem = path.name[:-len(path.suffix)] if path.suffix else path.name
    return stem if len(stem) <= 64 and UID.fullmatch(stem) else ""


def _fields(path: Path) -> tuple[dict[str, str], list[str], int]:
    """The header's `Key = value` fields, the lines after ElementDataFile (a LIST of data files), and where the
    voxel data of a .mha starts. NotThisFormat when the file does not begin as a MetaImage header."""
    with open(path, "rb") as handle:
        head = handle.read(MAX_HEADER_BYTES)
    fields: dict[str, str] = {}
    position = 0
    for raw in head.splitlines(keepends=True):
        position += len(raw)
        line = raw.decode("latin-1").strip()
        if not line:
            continue
        key, equals, value = line.partition("=")
        if not equals or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            break
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            rest = head[position:].decode("latin-1").splitlines() if value.strip() == "LIST" else []
            return fields, [name.strip() for name in rest if name.strip()], position
    if not fields:
        raise NotThisFormat("not a MetaImage header")
    raise ScanError("not a complete MetaImage header: no ElementDataFile line in its first "
                    f"{MAX_HEADER_BYTES:,} bytes" if "ObjectType" in fields or "NDims" in fields else
                    "not a MetaImage header")


def _data_files(path: Path, fields: dict[str, str], listed: list[str]) -> tuple[Path, ...]:
    """The files a header's ElementDataFile names: none (LOCAL), one, a LIST, or a printf pattern with a range."""
    name = fields["ElementDataFile"]
    if name.upper() == "LOCAL":
        return ()
    if name == "LIST":
        return tuple(path.parent / entry for entry in listed)
    parts = name.split()
    if len(parts) == 4 and "%" in parts[0]:  # "slice%03d.raw 1 120 1"
        try:
            start, stop, step = (int(p) for p in parts[1:])
            return tuple(path.parent / (parts[0] % n) for n in range(start, stop + 1, step or 1))
        except (ValueError, TypeError):
            raise ScanError(f"its ElementDataFile pattern {name!r} cannot be read") from None
    return (path.parent / name,)


@dataclass
class _Volume:
    reader: object  # a SimpleITK ImageFileReader with the header read
    voxel_shape: tuple[int, ...]  # (i, j) or (i, j, k): the volume that is read, after `order`
    order: tuple[int, ...]  # the stored axes in the order read (a single-voxel axis last)
    size: tuple[int, ...]  # the stored size (i, j[, k])
    affine: np.ndarray  # stored voxel of the axes in `order` -> RAS mm
    shape: tuple[int, ...]  # display shape
    spacing: tuple[float, ...]
    data_files: tuple[Path, ...]
    modality: str
    compressed: tuple[Path, int, np.dtype] | None  # one zlib stream: (file, where it starts, voxel type)


def _sitk():
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # reasons are ours to give, one line each, not ITK's stderr
    return sitk


def _reason(exc: Exception) -> str:
    """SimpleITK's several lines (source file, object address) cut down to ITK's own message."""
    text = str(exc)
    for marker in ("ITK ERROR:", "sitk::ERROR:"):
        if marker in text:
            text = text.split(marker, 1)[1]
            text = re.sub(r"^\s*\w+\(0x[0-9a-f]+\):\s*", "", text)
    return describe(Exception(text))


def _load(path: Path) -> _Volume:
    fields, listed, data_start = _fields(path)
    dims = _integers(fields, "NDims", 1)
    if not dims or dims[0] not in (2, 3):
        raise ScanError(f"a MetaImage of {fields.get('NDims', '?')} dimensions is not read (2D and 3D images are)")
    element = fields.get("ElementType", "").upper().removeprefix("MET_").removesuffix("_ARRAY")
    channels = (_integers(fields, "ElementNumberOfChannels", 1) or [1])[0]
    if element not in ELEMENT_TYPES:
        raise ScanError(f"MetaImage voxels of type {fields.get('ElementType') or 'none given'} are not read")
    if channels != 1:
        raise ScanError(f"a MetaImage with {channels} values per voxel (colour or vector data) is not read")
    size = tuple(_integers(fields, "DimSize", dims[0]))
    if len(size) != dims[0] or min(size) < 1:
        raise ScanError(f"its DimSize {fields.get('DimSize', '')!r} does not give {dims[0]} sizes of 1 or more")
    data_files = _data_files(path, fields, listed)
    msb = fields.get("ElementByteOrderMSB", fields.get("BinaryDataByteOrderMSB", "False")).lower() == "true"
    dtype = np.dtype(ELEMENT_TYPES[element]).newbyteorder(">" if msb else "<")
    _check_data(path, fields, data_files, int(np.prod(size)) * dtype.itemsize, data_start)
    compressed = fields.get("CompressedData", "False").lower() == "true" and len(data_files) <= 1
    stream = (data_files[0] if data_files else path, 0 if data_files else data_start, dtype) if compressed else None
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetImageIO("MetaImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ScanError(f"unreadable MetaImage header: {_reason(exc)}") from None
    ndim = reader.GetDimension()
    direction = np.asarray(reader.GetDirection(), float).reshape(ndim, ndim)  # columns: each axis' direction
    lps = np.eye(4)
    lps[:ndim, :ndim] = direction * np.asarray(reader.GetSpacing(), float)
    lps[:ndim, 3] = reader.GetOrigin()
    affine = LPS_FROM_RAS @ lps  # stored voxel (i, j, k) -> RAS, as nibabel's affines are
    size = tuple(int(s) for s in reader.GetSize())
    order = tuple(range(ndim))
    ones = [axis for axis, count in enumerate(size) if count == 1]
    if ndim - len(ones) < 2:
        raise ScanError(f"a MetaImage of size {'x'.join(map(str, size))} is a line of voxels, not an image")
    if ndim == 3 and ones:  # a single slice, in any plane: a 2D image, its single-voxel axis last
        order = tuple(axis for axis in range(3) if axis != ones[0]) + (ones[0],)
        affine = affine[:, list(order) + [3]]
    voxel_shape = tuple(size[axis] for axis in order)[:2] if ndim == 2 or ones else size
    display = display_shape(voxel_shape, affine)
    check_size(display[-2:], display[0] if len(display) == 3 else 1)
    modality = reader.GetMetaData("Modality") if reader.HasMetaDataKey("Modality") else ""
    modality = modality.removeprefix("MET_MOD_")
    return _Volume(reader, voxel_shape, order, size, affine, display, display_spacing(affine, len(display)),
                   data_files, "" if modality == "UNKNOWN" else modality, stream)


def _integers(fields: dict[str, str], key: str, count: int) -> list[int]:
    try:
        return [int(float(v)) for v in fields.get(key, "").split()[:max(count, 1)]]
    except ValueError:
        raise ScanError(f"its {key} {fields[key]!r} is not {count} whole number(s)") from None


def _check_data(path: Path, fields: dict[str, str], data_files: tuple[Path, ...], needed: int, start: int) -> None:
    """Every data file is there, and uncompressed data holds every voxel the header declares (ITK would print to
    stderr and fail, or read past the end, without a reason a user can act on)."""
    for file in data_files:
        if not file.is_file():
            raise ScanError(f"its data file {file.name} (ElementDataFile) is not beside it")
    compressed = fields.get("CompressedData", "False").lower() == "true"
    if compressed:
        declared = (_integers(fields, "CompressedDataSize", 1) or [0])[0]
        held = sum(os.stat(f).st_size for f in data_files) if data_files else os.stat(path).st_size - start
        if declared and held < declared:
            raise ScanError(f"truncated MetaImage: {held:,} of the {declared:,} bytes of compressed data its header "
                            "declares")
        return
    held = sum(os.stat(f).st_size for f in data_files) if data_files else os.stat(path).st_size - start
    if fields.get("HeaderSize", "0").strip() not in ("0", "-1", ""):
        return  # data after a header of its own inside the data file: ITK finds it, its length is not ours to tell
    if held < needed:
        raise ScanError(f"truncated MetaImage: the data holds {max(held, 0):,} of the {needed:,} bytes of voxels its "
                        "header declares")


def _inflated(volume: _Volume, index: tuple[int, ...], extent: tuple[int, ...]) -> np.ndarray:
    """A block of stored voxels (i, j[, k]) of zlib-compressed data, inflated only as far as the block reaches.

    Inflated here rather than by ITK, which leaves voxels it could not inflate at 0 and says nothing: a spoilt
    stream is then a reason, not an image with holes. The data runs with i fastest: a block of slices along the last
    axis needs only the data up to its last slice; any other block, the whole volume (whose checksum is checked).
    """
    file, start, dtype = volume.compressed
    size = volume.size
    plane = int(np.prod(size[:-1]))
    slowest = len(size) - 1
    whole = any(index[axis] != 0 or extent[axis] != size[axis] for axis in range(slowest))
    count = (index[slowest] + extent[slowest]) * plane if not whole else int(np.prod(size))
    wanted = count * dtype.itemsize
    out = bytearray()
    inflater = zlib.decompressobj(wbits=47)  # a zlib or a gzip stream, as MetaIO writes and reads them
    try:
        with open(file, "rb") as handle:
            handle.seek(start)
            while len(out) < wanted:
                chunk = inflater.unconsumed_tail or handle.read(1 << 20)
                if not chunk:
                    break
                out += inflater.decompress(chunk, wanted - len(out))
            if count == int(np.prod(size)):  # the whole stream: it must end, checksum and all, where the voxels do
                while not inflater.eof and (chunk := inflater.unconsumed_tail or handle.read(1 << 20)):
                    if inflater.decompress(chunk, 1):
                        raise ScanError("corrupt MetaImage data: the compressed data holds more than its voxels")
                if not inflater.eof and len(out) == wanted:
                    raise ScanError("truncated MetaImage: its compressed data stops before its end (checksum)")
    except zlib.error as exc:
        raise ScanError(f"corrupt MetaImage data: zlib says {describe(exc)}") from None
    if len(out) < wanted:
        raise ScanError(f"truncated MetaImage: its compressed data inflates to {len(out):,} of the {wanted:,} bytes of "
                        "voxels its header declares")
    voxels = np.frombuffer(bytes(out), dtype=dtype).reshape((count // plane,) + tuple(reversed(size[:-1])))
    block = voxels.transpose(tuple(reversed(range(voxels.ndim))))  # (k, j, i) -> (i, j, k)
    taken = tuple(slice(index[axis], index[axis] + extent[axis]) for axis in range(len(size)))
    return np.asarray(block[taken], dtype=np.float32)


def header(path: Path) -> MetaHeader:
    volume = _load(path)
    kind = VOLUME_SCAN if len(volume.shape) == 3 else IMAGE_SCAN
    return MetaHeader("metaimage", kind, volume.shape, volume.spacing, data_files=volume.data_files,
                      modality=volume.modality)


def read(path: Path, slices: list[int] | None = None) -> ScanImage:
    """Decode the scan (display orientation, float32). With `slices` (display slice indices of a volume), only the
    block of planes they lie in is read, and those slices returned in that order, with `slices` set."""
    volume = _load(path)
    reader = volume.reader
    fields = dict(format="metaimage", ordering="metaimage", modality=volume.modality,
                  num_slices=volume.shape[0] if len(volume.shape) == 3 else 1)

    def stored(index: tuple[int, ...], extent: tuple[int, ...]) -> np.ndarray:
        """Stored voxels (i, j[, k]) of the block from `index`, `extent` long along each axis."""
        if volume.compressed is not None:
            return _inflated(volume, index, extent)
        reader.SetExtractIndex([int(v) for v in index])
        reader.SetExtractSize([int(v) for v in extent])
        image = reader.Execute()
        array = _sitk().GetArrayViewFromImage(image)  # (k, j, i): ITK's x runs fastest; a view of `image`
        return np.array(array, dtype=np.float32).transpose(tuple(reversed(range(array.ndim))))

    try:
        if slices is not None and len(volume.shape) == 3:
            def read_planes(axis: int, planes: list[int]) -> np.ndarray:
                index, extent = [0, 0, 0], list(volume.size)
                index[axis], extent[axis] = planes[0], planes[-1] - planes[0] + 1
                block = stored(tuple(index), tuple(extent))
                return np.take(block, [plane - planes[0] for plane in planes], axis=axis)

            array = display_slices(read_planes, volume.voxel_shape, volume.affine, slices)
            return placed(array, volume.affine, volume.voxel_shape, slices=tuple(slices), **fields)
        data = stored((0,) * len(volume.size), volume.size).transpose(volume.order)
    except ScanError:
        raise
    except RuntimeError as exc:
        raise ScanError(f"corrupt MetaImage data: {_reason(exc)}") from None
    except Exception as exc:
        if file_access_error(exc):
            raise
        raise ScanError(f"corrupt MetaImage data: {describe(exc)}") from None
    if len(volume.order) == 3 and len(volume.voxel_shape) == 2:
        data = data[..., 0]
    array, _ = to_display(data, volume.affine)
    return placed(array, volume.affine, volume.voxel_shape, **fields)


READER = MetaImageReader()

