"""Input kinds: what one sample becomes for the model — a whole 2D image, a 3x3 grid of consecutive slices, or a
3x3 grid of planes around a point in patient millimetres.

Each kind is one implementation of `InputKind`: its output shape, the display slices it shows, how it builds
the model input from a decoded scan, which samples it takes (whole scans or points), and how augmentation may
treat it (per tile, so a slice grid keeps its slice order). "auto" is decided in `choose_kind` alone, and no
other module compares a kind's name. A new input kind is one class here and one entry in KINDS.

Kinds build their inputs from the array functions of inputs/arrays.py; a run's settings (preprocess.py) name a
kind and look it up here. The dependency runs one way: arrays <- kinds <- preprocess.
"""
from __future__ import annotations

import numpy as np

from perceiver_med.errors import ScanError, UserError
from perceiver_med.inputs.arrays import (GRID_TILES, grid_of, grid_slices, make_grid, make_image, point_grid, resize,
                                         to_channels, volume_window)
from perceiver_med.inputs.windows import to_unit
from perceiver_med.io.scans import VOLUME_SCAN

AUTO = "auto"


class InputKind:
    """One way to turn a scan (or a point in it) into a model input (C, H, W) in [0, 1]."""

    name = ""
    tiles = 1  # tiles per side; augmentation mirrors and warps each tile about its own centre
    takes_points = False  # its samples are points in scans (a points CSV), not whole scans
    needs_volume = False
    noun = "scan"  # one sample, in messages
    layout = ""  # what the input shows, in words, for a reader of an exported model's metadata

    def output_shape(self, size: int, channels: int) -> tuple[int, int, int]:
        side = size * self.tiles
        return (channels, side, side)

    def shown_slices(self, num_slices: int, config, center: int | None = None) -> list[int]:
        """The display slices of a volume that the input shows."""
        return [num_slices // 2]

    def build(self, image, config, center: int | None = None, point=None) -> np.ndarray:
        """The model input from a decoded ScanImage (the whole scan, or only some of its display slices)."""
        raise NotImplementedError

    def shown_part(self, image, config, center: int | None = None
                   ) -> tuple[np.ndarray, tuple[float, float]] | None:
        """For a volume decoded in part (`image.slices`): the display slices this input shows and the whole
        volume's value range; None for a scan decoded whole."""
        array = image.voxels
        if image.slices is None or array.ndim != 3:
            return None
        held = {k: n for n, k in enumerate(image.slices)}
        wanted = self.shown_slices(image.num_slices, config, center)
        if any(k not in held for k in wanted):
            raise ScanError("the slices read are not the ones this input needs")
        value_range = volume_window(array, config.window, image.modality, image.slices, image.num_slices)
        return array[[held[k] for k in wanted]], value_range

    def check_scan(self, scan) -> None:
        if self.needs_volume and scan.kind != VOLUME_SCAN:
            raise ScanError("a 3x3 slice grid needs a volume, and this scan is a single 2D image")


class ImageKind(InputKind):
    """A 2D image, or the middle slice of a volume: S x S."""

    name = "image"
    layout = "one 2D image, or the middle slice of a volume, resized to S x S"

    def build(self, image, config, center=None, point=None) -> np.ndarray:
        part = self.shown_part(image, config, center)
        if part is not None:
            picked, value_range = part
            return to_channels(resize(to_unit(picked[0], *value_range), config.size), config.channels)
        return make_image(image.voxels, config, image.window, voi=image.voi, modality=image.modality)


class GridKind(InputKind):
    """9 consecutive slices of a volume tiled 3x3: 3S x 3S."""

    name = "grid"
    tiles = GRID_TILES
    layout = ("9 consecutive slices of a volume (the middle one centred), each resized to S x S and tiled 3x3 in "
              "row-major order: the first slice top-left, the last bottom-right")
    needs_volume = True

    def shown_slices(self, num_slices, config, center=None) -> list[int]:
        return grid_slices(num_slices, center, config.grid_pad)

    def build(self, image, config, center=None, point=None) -> np.ndarray:
        part = self.shown_part(image, config, center)
        if part is not None:
            picked, value_range = part
            return grid_of(picked, config, value_range)
        return make_grid(image.voxels, config, center, image.modality)


class PointKind(InputKind):
    """9 planes `slice_mm` apart around a point in patient mm, each an `fov_mm` square, tiled 3x3: 3S x 3S."""

    name = "point"
    tiles = GRID_TILES
    takes_points = True
    needs_volume = True
    noun = "point"
    layout = ("9 planes perpendicular to the slice axis, slice_mm apart (the fifth through the point), each an "
              "fov_mm square sampled S x S in patient mm (rows anterior to posterior, columns right to left), tiled "
              "3x3 in row-major order: the most inferior plane top-left")

    def build(self, image, config, center=None, point=None) -> np.ndarray:
        if point is None:
            raise ScanError("this run's input is centred on a point: give one (--points CSV or --point X,Y,Z)")
        return point_grid(image, point, config)


KINDS = {kind.name: kind for kind in (ImageKind(), GridKind(), PointKind())}
DEFAULT_INPUT = ImageKind.name  # the kind of settings that name none (PreprocessConfig), and of anything 2D


def input_kind(name: str) -> InputKind:
    if name not in KINDS:
        raise ValueError(f"unknown input kind {name!r}; choose one of {', '.join(KINDS)}")
    return KINDS[name]


def choose_kind(asked: str | None, with_points: bool, scan_kinds) -> InputKind:
    """The input kind of a run (or a preview): as asked, else a point grid for points, a slice grid for volumes
    and an image for anything 2D (`scan_kinds`: the scan kinds found, io/scans.py)."""
    if asked not in (None, AUTO):
        kind = input_kind(asked)
    elif with_points:
        kind = KINDS["point"]
    else:
        kind = KINDS["grid"] if set(scan_kinds) == {VOLUME_SCAN} else KINDS[DEFAULT_INPUT]
    check_samples(kind, with_points, f"--input {kind.name}",
                  "split --points CSV for a splits file, --point X,Y,Z for preview",
                  f"leave out --input, or give --input {next(k.name for k in KINDS.values() if k.takes_points)}")
    return kind


def check_samples(kind: InputKind, with_points: bool, subject: str, points_hint: str, scans_hint: str) -> None:
    """Points for a kind that takes them, whole scans for the others: the same input in every command. `subject`
    is what has the kind ("this run", "--input grid"); the hints say what to give instead."""
    if kind.takes_points and not with_points:
        raise UserError(f"{subject} is centred on points, and none was given: {points_hint}")
    if with_points and not kind.takes_points:
        raise UserError(f"{subject} takes whole scans ({kind.name}), and points were given: {scans_hint}")
