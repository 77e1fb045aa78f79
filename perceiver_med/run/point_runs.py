"""`predict` and `explain` for runs trained on points: one sample per row of a points CSV."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perceiver_med.csvfiles import printable
from perceiver_med.inputs.kinds import check_samples
from perceiver_med.inputs.loading import load_inputs, scan_mismatch
from perceiver_med.inputs.points import PointsFile, match_points, read_points
from perceiver_med.inputs.samples import Sample
from perceiver_med.io.discover import Skip, discover_each


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
    table = read_points(points)
    found = discover_each(folders)  # explain takes several scans or folders: their points are matched together
    usable, skipped = match_points(table, found, lambda scan: scan_mismatch(scan, config))
    loaded = load_inputs(usable, config.preprocess, workers, on_done, skipped=list(found.skipped) + skipped,
                         where=lambda sample: f"{printable(points)}:{sample.point_id}")
    return PreparedPoints(table, loaded.samples, loaded.inputs, loaded.skipped)
