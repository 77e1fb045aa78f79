"""PNG / JPEG -> (array, metadata). The AKOA knee release ships PNG slices."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from perceiver_med.errors import ScanError

SUFFIXES = (".png", ".jpg", ".jpeg")


def is_raster(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as exc:
        raise ScanError(f"unreadable image: {str(exc).splitlines()[0][:120]}") from None


def header(path: Path) -> dict:
    with _open(path) as image:
        width, height = image.size
    return {"format": image.format.lower() if image.format else "raster", "modality": "",
            "shape": (height, width), "kind": "image", "warnings": []}


def read(path: Path) -> tuple[np.ndarray, dict]:
    with _open(path) as image:
        try:
            image.load()
        except OSError as exc:
            raise ScanError(f"truncated or corrupt image: {str(exc).splitlines()[0][:120]}") from None
        if image.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
            array = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
        else:
            array = np.asarray(image, dtype=np.float32)
    return array, {"format": "raster", "modality": "", "spacing": None, "window": None, "warnings": []}
