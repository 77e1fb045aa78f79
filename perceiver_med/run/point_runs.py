"""`predict` and `explain` for runs trained on points: one sample per row of a points CSV."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from perceiver_med.inputs.cache import prepare_many
from perceiver_med.csvfiles import printable
from perceiver_med.inputs.loading import scan_mismatch
from perceiver_med.errors import UserError
from perceiver_med.inputs.kinds import check_samples
from perceiver_med.io import discover
from perceiver_med.io.discover import Skip
from perceiver_med.inputs.points import RAS_HINT, PointsFile, all_outside, match_points, read_points
from perceiver_med.inputs.samples import Sample


def check_point_run(config, points: Path | None) -> None:
    """A run trained on points needs points, and points need such a run: the same input everywhere."""
    check_samples(config.preprocess.kind, points is not None, "this run", "give the points with --points CSV",
                  "leave out --points")


@dataclass
class PreparedPoints:
    points: PointsFile
    samples: list[Sample]  # each placed on its scan
    inputs: np.ndarray  # (N, C, H, W)
    skipped: list[Skip]

    @property
    def scan_column(self) -> tuple[str, list[str]]:
        """The points file's column naming each sample's scan (seriesuid or path), and its cells as written."""
        return self.points.by, [self.points.scan_cells[sample.point_id] for sample in self.samples]


def prepare_points(points: Path, scans: Path | list[Path], config, workers: int = 0,
                   on_done: Callable[[int, int], None] | None = None) -> PreparedPoints:
    """The model input of every usable row of a points file; the others skipped with their reason."""
    folders = [Path(scans)] if isinstance(scans, (str, Path)) else [Path(p) for p in scans]
    for folder in folders:
        if not folder.exists():
            raise UserError(f"{printable(folder)} does not exist")
    table = read_points(points)
    found = discover(folders[0])
    for folder in folders[1:]:  # explain takes several scans or folders: their points are matched together
        more = discover(folder)
        found.scans += more.scans
        found.skipped += more.skipped
    usable, skipped = match_points(table, found, lambda scan: scan_mismatch(scan, config))
    skipped = list(found.skipped) + skipped
    arrays, reasons = prepare_many(usable, config.preprocess, workers, on_done=on_done)
    kept, inputs = [], []
    for sample, array, reason in zip(usable, arrays, reasons):
        if array is None:
            skipped.append(Skip(sample.path, f"{printable(points)}:{sample.point_id}: {reason}"))
        else:
            kept.append(sample)
            inputs.append(array)
    if not kept:
        hint = f" ({RAS_HINT})" if all_outside(skipped) else ""
        first = skipped[-1].reason if skipped else "the points file lists no points"
        raise UserError(f"no point of {printable(points)} could be used: {first}{hint}")
    return PreparedPoints(table, kept, np.stack(inputs).astype(np.float32), skipped)

