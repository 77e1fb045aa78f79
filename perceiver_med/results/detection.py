"""FROC and CPM of a point run's candidates: the glue between a split's samples (points in scans, scored by the
run's calibrated probability of its positive class) and a nodule reference (inputs/references.py), counted by
stats/froc.py as the LUNA16 evaluation counts them.

The scans of a split are those of its samples; reference rows naming other scans are not read. The bootstrap
resamples patients, each carrying all of its scans, as every other interval of a run does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perceiver_med.csvfiles import printable
from perceiver_med.errors import UserError
from perceiver_med.files import file_sha256
from perceiver_med.inputs.references import NoduleTable, read_nodules
from perceiver_med.inputs.samples import Sample
from perceiver_med.stats.froc import Reference, froc_list, froc_summary
from perceiver_med.stats.statistics import RESAMPLES

RULE = ("LUNA16 (noduleCADEvaluationLUNA16.py): a candidate hits a nodule within its radius (diameter_mm / 2) of "
        "its centre; each nodule counts once, with its best hit; hits on excluded findings are not counted; a "
        "scan's 100 highest-scoring candidates are scored; CPM = mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 "
        "false positives per scan")


@dataclass(frozen=True)
class NoduleReference:
    """The nodules FROC counts hits on, and the excluded findings whose hits it ignores (None: none)."""

    nodules: NoduleTable
    excluded: NoduleTable | None = None

    @classmethod
    def read(cls, nodules: Path, excluded: Path | None = None) -> "NoduleReference":
        return cls(read_nodules(nodules), None if excluded is None else read_nodules(excluded, "excluded file"))

    def record(self) -> dict:
        """Which files the FROC was counted against, by name and SHA-256, and how."""
        files = {"nodules": self.nodules.source}
        if self.excluded is not None:
            files["excluded"] = self.excluded.source
        return {**{name: {"file": printable(path.name), "sha256": file_sha256(path)} for name, path in files.items()},
                "rule": RULE}

    def on_scans(self, scans: list[Sample]) -> Reference:
        """The reference rows on these scans (one sample standing for each), indexed by their position."""
        parts = []
        for table, excluded in ((self.nodules, False), (self.excluded, True)):
            if table is None:
                continue
            index = {table.scan_key(scan): k for k, scan in enumerate(scans)}
            rows = [k for k, key in enumerate(table.scans) if key in index]
            parts.append((np.array([index[table.scans[k]] for k in rows], dtype=np.int64), table.centres[rows],
                          table.diameters[rows], np.full(len(rows), excluded)))
        scan, centre, diameter, flag = (np.concatenate(column) for column in zip(*parts))
        return Reference(scan, centre.reshape(-1, 3), diameter, flag.astype(bool))


def split_froc(samples: list[Sample], scores: np.ndarray, reference: NoduleReference, resamples: int = RESAMPLES,
               seed: int = 0) -> dict:
    """The FROC entry of one split: `scores` (N,) are its samples' calibrated probabilities of the positive class."""
    scans: dict[tuple, Sample] = {}  # each scan's first sample stands for it
    for sample in samples:
        scans.setdefault((sample.path, sample.series_uid), sample)
    index = {key: k for k, key in enumerate(scans)}
    scan = np.array([index[(s.path, s.series_uid)] for s in samples], dtype=np.int64)
    points = np.array([s.point for s in samples], dtype=np.float64).reshape(-1, 3)
    entries = froc_list(scan, points, scores, reference.on_scans(list(scans.values())), len(scans))
    return froc_summary(entries, [s.patient_id for s in scans.values()], resamples, seed)


def check_reference_names_scans(froc: dict[str, dict], reference: NoduleReference) -> None:
    """A reference naming none of the scored scans is the wrong file (or names them another way): refused, since
    every candidate would count as a false positive and every sensitivity be undefined."""
    if froc and not any(entry["nodules"] for entry in froc.values()):
        scans = sum(entry["scans"] for entry in froc.values())
        raise UserError(f"{printable(reference.nodules.source)} has no nodule on any of the {scans} scans scored "
                        f"(matched by {reference.nodules.by}): does it name the scans of this splits file?")
