"""NIfTI (.nii, .nii.gz) -> ScanImage, reoriented to the common display convention.

nibabel's affine maps voxels to RAS millimetres; the ScanImage affine is in DICOM's LPS (x and y negated).
A file with neither qform nor sform code has no patient geometry: nibabel's default affine (voxel sizes
only) is used, and `assumed` says so.

Files are read through nibabel's array proxy: a header read costs no voxel data, and a model input
that needs a few slices reads only those planes. Sizes are checked against the voxel budget first.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from perceiver_med.errors import ScanError
from perceiver_med.io.image import ScanImage, placed
from perceiver_med.io.limits import check_size, describe, file_access_error
from perceiver_med.io.orientation import display_shape, display_slices, display_spacing, to_display
from perceiver_med.io.reader import ImageHeader, Pick, Reader, pick_for
from perceiver_med.io.scans import IMAGE_SCAN, VOLUME_SCAN, Scan

SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


class NiftiReader(Reader):
    """NIfTI-1 and NIfTI-2 files (.nii, .nii.gz), claimed by name."""

    name = "NIfTI"
    formats_read = "NIfTI"
    formats = ("nifti",)

    def claims(self, path: Path) -> bool:
        return is_nifti(path)

    def header(self, path: Path) -> ImageHeader:
        return header(path)

    def read(self, scan: Scan, pick: Pick | None = None) -> ScanImage:
        return read(scan.files[0], pick_for(scan, pick))


@dataclass
class _Volume:
    image: object
    voxel_shape: tuple[int, ...]  # (i, j) or (i, j, k): the volume that is read, after `order`
    order: tuple[int, ...]  # the stored spatial axes in the order read (a single-voxel axis last)
    affine: np.ndarray  # of the axes in `order`
    shape: tuple[int, ...]  # display shape: (rows, cols) or (slices, rows, cols)
    spacing: tuple[float, ...]
    warnings: list[str]


def _load(path: Path) -> _Volume:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = nib.load(str(path), mmap=False)
    except Exception as exc:
        if file_access_error(exc):
            raise
        raise ScanError(f"unreadable NIfTI: {describe(exc)}") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        kind = type(image).__name__.removesuffix("Image").replace("Cifti2", "CIFTI-2")
        what = "brain surface or connectivity data" if "CIFTI" in kind else "not a NIfTI-1 or NIfTI-2 image"
        raise ScanError(f"a {kind} file: {what}, not an image volume")
    shape = tuple(int(s) for s in image.shape)
    if len(shape) < 2:
        raise ScanError(f"a {len(shape)}D NIfTI (shape {shape}) is not an image")
    if 0 in shape:
        raise ScanError(f"empty NIfTI: shape {'x'.join(map(str, shape))}")
    dtype = image.get_data_dtype()
    if dtype.kind == "c":
        raise ScanError(f"complex-valued NIfTI ({dtype}) is not read: store magnitudes")
    if dtype.kind not in "uifb":
        raise ScanError(f"NIfTI voxels of type {dtype} (colour or structured) are not read")
    spatial, extra = shape[:3], shape[3:]
    _check_voxel_sizes(_stored_header(path, image), spatial)
    notes = []
    if any(e > 1 for e in extra):
        count = int(np.prod(extra))
        notes.append(f"{len(shape)}D NIfTI with {count} volumes: the first is used")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        affine = np.asarray(image.affine, dtype=float)
    order = tuple(range(len(spatial)))
    ones = [axis for axis, size in enumerate(spatial) if size == 1]
    if len(spatial) - len(ones) < 2:
        raise ScanError(f"a NIfTI of shape {'x'.join(map(str, shape))} is a line of voxels, not an image")
    if ones:  # a single slice, in any plane: a 2D image, its single-voxel axis last
        order = tuple(axis for axis in range(3) if axis != ones[0]) + (ones[0],)
        affine = affine[:, list(order) + [3]]
    voxel_shape = tuple(spatial[axis] for axis in order)[:2] if ones else spatial
    display = display_shape(voxel_shape, affine)
    check_size(display[-2:], display[0] if len(display) == 3 else 1)
    _check_length(path, image, spatial, dtype)
    return _Volume(image, voxel_shape, order, affine, display, display_spacing(affine, len(display)), notes)


def _stored_header(path: Path, image):
    """The header as the file stores it: nibabel's load has already replaced a pixdim of 0 (or below) with 1 mm."""
    try:
        with ImageOpener(str(path)) as handle:
            return type(image.header).from_fileobj(handle, check=False)
    except Exception as exc:
        if file_access_error(exc):
            raise
        raise ScanError(f"unreadable NIfTI header: {describe(exc)}") from None


def _check_voxel_sizes(header, spatial: tuple[int, ...]) -> None:
    """ScanError when a voxel size that places the volume (the sform's, else pixdim, which the qform and the
    default affine use) is not above 0 mm along an axis of more than one voxel. nibabel would make a pixdim of 0
    1 mm and a negative one positive: another field of view than the file's, for points in millimetres."""
    if int(header["sform_code"]) > 0:
        sizes, source = np.linalg.norm(np.asarray(header.get_sform(), float)[:3, :3], axis=0), "its sform"
    else:
        sizes, source = np.asarray(header["pixdim"][1:4], float), "pixdim"
    for axis, count in enumerate(spatial):
        if count > 1 and not (np.isfinite(sizes[axis]) and sizes[axis] > 0):
            raise ScanError(f"{source} gives voxel axis {axis + 1} a size of {sizes[axis]:g} mm: voxel sizes must be "
                            "above 0 mm, so the size of what the scan shows is unknown")


def _check_length(path: Path, image, spatial: tuple[int, ...], dtype: np.dtype) -> None:
    """An uncompressed .nii must hold the voxel data of the volume that is read (no decompression needed)."""
    if path.name.lower().endswith(".gz"):
        return
    offset = int(image.header.get("vox_offset", 0) or 0)
    needed = offset + int(np.prod(spatial)) * dtype.itemsize
    size = os.stat(path).st_size
    if size < needed:
        raise ScanError(f"truncated NIfTI: the file holds {max(size - offset, 0):,} of the "
                        f"{needed - offset:,} bytes of voxel data its header declares")


def header(path: Path) -> ImageHeader:
    volume = _load(path)
    kind = VOLUME_SCAN if len(volume.shape) == 3 else IMAGE_SCAN
    return ImageHeader("nifti", kind, volume.shape, volume.spacing, tuple(volume.warnings))


def read(path: Path, slices: list[int] | None = None) -> ScanImage:
    """Decode the scan (display orientation, float32, scaling applied once).

    With `slices` (display slice indices of a volume), only those slices are read and returned, in that
    order, with `slices` and `num_slices` set.
    """
    volume = _load(path)
    proxy = volume.image.dataobj
    stored = len(volume.image.shape)
    tail = (0,) * (stored - min(stored, 3))
    header = volume.image.header
    unplaced = int(header["sform_code"]) == 0 and int(header["qform_code"]) == 0
    notes = ["no qform or sform code: the NIfTI's orientation and position in the patient are unknown (only its "
             "voxel sizes are used)"] if unplaced else []
    fields = dict(format="nifti", ordering="nifti", warnings=tuple(volume.warnings + notes),
                  assumed=("orientation", "position") if unplaced else (),
                  num_slices=volume.shape[0] if len(volume.shape) == 3 else 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if slices is not None and len(volume.shape) == 3:
                def read_planes(axis: int, planes: list[int]) -> np.ndarray:
                    index = [slice(None)] * 3
                    taken = []
                    for plane in planes:
                        index[axis] = plane
                        taken.append(np.asarray(proxy[tuple(index) + tail], dtype=np.float32))
                    return np.stack(taken, axis=axis)

                array = display_slices(read_planes, volume.voxel_shape, volume.affine, slices)
                return placed(array, volume.affine, volume.voxel_shape, slices=tuple(slices), **fields)
            data = np.asarray(proxy[(slice(None),) * min(stored, 3) + tail], dtype=np.float32)
    except ScanError:
        raise
    except Exception as exc:
        if file_access_error(exc):
            raise
        raise ScanError(f"corrupt NIfTI data: {describe(exc)}") from None
    data = data.transpose(volume.order)
    if len(volume.order) == 3 and len(volume.voxel_shape) == 2:
        data = data[..., 0]
    array, _ = to_display(data, volume.affine)
    return placed(array, volume.affine, volume.voxel_shape, **fields)


READER = NiftiReader()
