"""PNG / JPEG -> ScanImage. The AKOA knee release ships PNG slices.

A picture has no patient geometry: its affine is the stated default (axial, 1 mm pixels, at the origin), and
`assumed` says so.

The image size is read from the header and checked against the voxel budget before any pixel is
decoded; Pillow's own decompression-bomb check (a fixed 89M/179M pixels, a warning then an error)
is not used, so the one budget decides, and a raised budget is honoured.
"""
from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, JpegImagePlugin, PngImagePlugin

from perceiver_med.errors import ScanError
from perceiver_med.io.image import ScanImage, placed
from perceiver_med.io.limits import check_size, describe, file_access_error
from perceiver_med.io.orientation import LPS_FROM_RAS
from perceiver_med.io.reader import ImageHeader, Pick, Reader
from perceiver_med.io.scans import IMAGE_SCAN, Scan

SUFFIXES = (".png", ".jpg", ".jpeg")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GREY_MODES = {"1", "L", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"}
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def is_raster(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


class RasterReader(Reader):
    """PNG and JPEG pictures, claimed by name and then opened by content."""

    name = "image"
    formats_read = "PNG or JPEG"
    formats = ("png", "jpeg")

    def claims(self, path: Path) -> bool:
        return is_raster(path)

    def header(self, path: Path) -> ImageHeader:
        return header(path)

    def read(self, scan: Scan, pick: Pick | None = None) -> ScanImage:
        return read(scan.files[0])


def _open(path: Path) -> Image.Image:
    """Open by content (PNG or JPEG), header only; the size is checked against the budget."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(PNG_SIGNATURE):
        factory = PngImagePlugin.PngImageFile
    elif head.startswith(b"\xff\xd8\xff"):
        factory = JpegImagePlugin.jpeg_factory
    else:
        raise ScanError("empty file" if not head else "not a PNG or JPEG image, whatever its name says")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = factory(str(path))
    except Exception as exc:
        if file_access_error(exc):
            raise
        raise ScanError(f"unreadable image: {describe(exc)}") from None
    try:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ScanError(f"empty image ({width}x{height} pixels)")
        check_size((height, width), what="image")
        if factory is PngImagePlugin.PngImageFile:
            _check_png_chunks(path)
    except BaseException:
        image.close()
        raise
    return image


def _check_png_chunks(path: Path) -> None:
    """Walk the chunk headers (no decompression): a file cut short or missing its end is refused."""
    size = os.stat(path).st_size
    with open(path, "rb") as handle:
        handle.seek(len(PNG_SIGNATURE))
        position = len(PNG_SIGNATURE)
        while True:
            head = handle.read(8)
            if len(head) < 8:
                raise ScanError(f"truncated PNG: the file ends after {position:,} bytes, before its last chunk")
            length, kind = struct.unpack(">I4s", head)
            position += 12 + length
            if length > 0x7FFFFFFF or position > size:
                raise ScanError(f"truncated PNG: a {kind.decode('latin-1')!r} chunk runs past the end of the "
                                f"file ({size:,} bytes)")
            if kind == b"IEND":
                return
            handle.seek(position)


def header(path: Path) -> ImageHeader:
    with _open(path) as image:
        width, height = image.size
        name = image.format.lower() if image.format else "raster"
    return ImageHeader("jpeg" if name == "mpo" else name, IMAGE_SCAN, (height, width))


def read(path: Path) -> ScanImage:
    with _open(path) as image:
        kind = "jpeg" if image.format in ("JPEG", "MPO") else "png"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image.load()
                if image.mode in GREY_MODES:
                    array = np.asarray(image, dtype=np.float32)
                else:  # palette, RGB(A), LA, PA, CMYK, YCbCr...: ITU-R 601 luma of the RGB picture
                    rgb = np.asarray(image.convert("RGB"))
                    array = np.empty(rgb.shape[:2], np.float32)
                    step = max(1, (1 << 22) // max(rgb.shape[1], 1))
                    for start in range(0, rgb.shape[0], step):  # in blocks: no float copy of the whole image
                        array[start:start + step] = rgb[start:start + step].astype(np.float32) @ LUMA
        except ScanError:
            raise
        except MemoryError:
            raise ScanError("not enough memory to decode this image") from None
        except Exception as exc:
            if file_access_error(exc):
                raise
            raise ScanError(f"truncated or corrupt image: {describe(exc)}") from None
    if array.ndim != 2:
        raise ScanError(f"image mode {image.mode} gives {array.ndim} dimensions, not a 2D picture")
    # stored grid (column, row) with LPS axes: the picture as it is, columns to patient-left, rows posterior
    return placed(array, LPS_FROM_RAS, array.T.shape, format=kind, ordering="image",
                  assumed=("orientation", "position", "pixel spacing"))


READER = RasterReader()
