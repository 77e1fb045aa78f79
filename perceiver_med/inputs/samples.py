"""Sample: what a model classifies, one type from the splits file to the predictions file.

A sample is a scan (a file, or a series folder with its SeriesInstanceUID), one slice of a volume, or the grid
around a point in a volume (LPS mm); with what is known of it (label, patient, split, fold). Labelling a folder
and matching a points file to its scans make samples, splits files write and read them, the cache prepares each
one's model input, and `predict` returns them beside the run's decisions. A patient owns many samples and sits
in one split.
"""
from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from pathlib import Path

from perceiver_med.io.scans import Scan

Point = tuple[float, float, float]  # (x, y, z) in DICOM patient coordinates, LPS mm


@dataclass(frozen=True)
class Sample:
    """One sample. Only `path` is needed to prepare a whole scan's input; what is not known stays empty.

    Args:
        path: the scan's file, or the folder of its series (absolute in a splits file).
        series_uid: the SeriesInstanceUID that names one series of a folder holding several.
        slice: the slice of a volume the sample is (None: the input kind chooses).
        point: where the sample is centred (LPS mm); None for a whole scan.
        diameter_mm: the point's diameter, where its points file gives one.
        point_id: where the point came from: its line in the points CSV.
        label: the true class; "" where it is not known.
        patient_id: "" where it is not known; all of a patient's samples sit in one split.
        split: "train", "val" or "test" in a splits file; of a predicted sample, the split of the run that holds
            it or its patient, "" where the run has seen neither.
        fold: the cross-validation fold of a train/val sample (split --folds); None for test samples.
    """

    path: Path
    _: KW_ONLY
    series_uid: str = ""
    slice: int | None = None
    point: Point | None = None
    diameter_mm: float | None = None
    point_id: str = ""
    label: str = ""
    patient_id: str = ""
    split: str = ""
    fold: int | None = None

    @classmethod
    def of(cls, scan: Scan, **known) -> "Sample":
        """The whole of a scan that discovery found, as one sample."""
        return cls(scan.path, series_uid=scan.series_uid, **known)

    @property
    def key(self) -> tuple:
        """What makes it one sample: its scan, and its slice or point."""
        return (self.path, self.series_uid, self.slice, self.point)

    @property
    def identity(self) -> tuple:
        """Everything a splits file says of the sample: two files are the same splits when these sets are equal."""
        return (str(self.path), self.label, self.patient_id, self.split, self.series_uid, self.slice, self.point,
                self.fold)
