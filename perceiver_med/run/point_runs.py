"""`predict` and `explain` for runs trained on points: one sample per row of a points CSV."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perceiver_med.csvfiles import printable
from perceiver_med.inputs.kinds import check_samples
from perceiver_med.inputs.loading import load_inputs, scan_mismatch
from perceiver_med.inputs.points import Echo, PointsFile, match_points, read_points
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
    def echo(self) -> Echo:
        """The points file's own columns for the prepared samples, as predictions repeat them."""
        return self.points.echo(self.samples)


def prepare_points(points: Path, scans: Path | list[Path], config, workers: int = 0,
                   on_done: Callable[[int, int], None] | None = None,
                   classes: dict[str, str] | None = None) -> PreparedPoints:
    """The model input of every usable row of a points file (its labels renamed by `classes`, see read_points);
    the others skipped with their reason."""
    folders = [Path(scans)] if isinstance(scans, (str, Path)) else [Path(p) for p in scans]
    table = read_points(points, classes)
    found = discover_each(folders)  # explain takes several scans or folders: their points are matched together
    usable, skipped = match_points(table, found, lambda scan: scan_mismatch(scan, config))
    loaded = load_inputs(usable, config.preprocess, workers, on_done, skipped=list(found.skipped) + skipped,
                         where=lambda sample: f"{printable(points)}:{sample.point_id}")
    return PreparedPoints(table, loaded.samples, loaded.inputs, loaded.skipped)
