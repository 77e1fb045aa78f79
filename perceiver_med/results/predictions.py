"""Predictions CSV files and `predict`: every scan of a folder (or every row of a points file) through a run's
Predictor, or through an exported ONNX model's OnnxPredictor, one row per sample:
path[,coordX,coordY,coordZ][,label],pred,prob_<class>... Probabilities are the run's calibrated ones at full float
precision (repr round-trips), `pred` its decision. The predictions of a points file are that file's table, its
columns named as it names them, with the run's columns added (label, pred, prob_*).

`predict` of an ONNX file imports no model code: the PyTorch Predictor is imported only for a run directory."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from perceiver_med.csvfiles import as_written, read_csv, write_csv
from perceiver_med.errors import UserError
from perceiver_med.inputs.labels import folder_label, known_patient, laterality_of
from perceiver_med.inputs.loading import load_inputs, suited_samples
from perceiver_med.inputs.points import COORDINATES, Echo, parse_classes
from perceiver_med.inputs.samples import Sample
from perceiver_med.inputs.splits import SPLITS
from perceiver_med.io import discover
from perceiver_med.io.discover import Skip
from perceiver_med.io.scans import relative
from perceiver_med.run.point_runs import check_point_run, prepare_points
from perceiver_med.run.rundir import check_new_output
from perceiver_med.stats.decision import Decisions
from perceiver_med.training.config import Runtime, applies_runtime, is_laterality


def write_predictions(path: Path, samples: list[Sample], decided: Decisions, with_points: bool = False,
                      echo: Echo | None = None) -> None:
    """One row per sample: path[,coordX,coordY,coordZ][,label],pred,prob_<class>... `with_points` writes each
    sample's point (LPS mm), which tells the samples of a run trained on points apart; the label column is there
    when every sample's label is one of the run's classes. With `echo` (the samples' points file), a row is instead
    the file's own row, every cell as written (its label, where known, the run's class of it), then pred and
    prob_<class>...: the user's table with the run's columns added."""
    with_label = all(sample.label in decided.classes for sample in samples)
    if echo is not None:
        columns = echo.columns + ["pred"] + [f"prob_{c}" for c in decided.classes]
        label_column = echo.label_column if with_label else ""
    else:
        columns = ["path"] + (list(COORDINATES) if with_points else []) + (["label"] if with_label else []) + [
            "pred"] + [f"prob_{c}" for c in decided.classes]
    names = decided.names

    def cells(k: int, sample: Sample) -> list:
        if echo is None:
            return [str(sample.path)] + (list(sample.point) if with_points else []) + (
                [sample.label] if with_label else [])
        point = dict(zip(echo.coordinates, sample.point))
        return [point[c] if c in point else sample.label if c == label_column else as_written(echo.rows[k].get(c, ""))
                for c in echo.columns]

    # floats, not text: the csv module writes their repr (a point's is the value given), and a number is never
    # formula-escaped
    write_csv(path, columns, (cells(k, sample) + [names[k]] + [float(v) for v in decided.probs[k]]
                              for k, sample in enumerate(samples)))


@dataclass
class PredictionsFile:
    """A predictions CSV read back: its samples (path, point and label as written; label "" where the file has
    none), the class decided for each, their calibrated probabilities, and each row's line for a reader to look
    it up. Paths may hold patient ids: the report never shows them."""

    samples: list[Sample]
    names: list[str]  # the pred column
    probs: np.ndarray  # (N, K), columns in the order of `classes`
    classes: list[str]
    lines: list[int]

    def __len__(self) -> int:
        return len(self.samples)

    def probability(self, k: int, name: str) -> float:
        """Row k's probability of class `name`."""
        return float(self.probs[k, self.classes.index(name)])


def read_predictions(path: Path, classes: list[str]) -> PredictionsFile:
    """A predictions CSV that write_predictions wrote for a run with these classes."""
    table = read_csv(path, "predictions file", ("path", "pred"))
    with_points = all(c in table.columns for c in COORDINATES)
    samples = [Sample(Path(row.path()), label=row.cells.get("label", ""),
                      point=tuple(float(row.cells[c]) for c in COORDINATES) if with_points else None)
               for row in table.rows]
    probs = np.array([[float(row.cells[f"prob_{c}"]) for c in classes] for row in table.rows], float)
    return PredictionsFile(samples, [row.cells["pred"] for row in table.rows], probs.reshape(-1, len(classes)),
                           list(classes), [row.line for row in table.rows])


@dataclass(frozen=True)
class PredictRequest:
    """Every scan under `scans` (a folder or one file), or for a run trained on points every row of the points
    CSV `points`, through `run`: a run directory, or a model file `export` wrote (model.onnx); `out` is the
    predictions CSV to write (a new file unless `overwrite`); `tta` > 1 averages that many label-preserving views
    of each sample (a run directory only); `classes` ("0=benign,1=malignant") names the class of each label value
    of the points file."""

    run: Path
    scans: Path
    out: Path
    points: Path | None = None
    tta: int = 1
    overwrite: bool = False
    runtime: Runtime = field(default_factory=Runtime)
    classes: str | None = None


@dataclass
class Predicted:
    """What `predict` says: its samples (a label the run does not know is ""; `split` is the run's where the run
    learnt from the sample or its patient, else ""), the run's decisions for them in order, what was skipped, and
    the run's decision rule and where the true labels came from, for the summary."""

    samples: list[Sample]
    decided: Decisions
    skipped: list[Skip]
    positive_class: str
    threshold: float | None  # the run's decision threshold on the positive class (None: the most probable class)
    label_source: str
    splits_known: bool = True  # False for an exported model, which does not say which patients it learnt from
    root: Path = Path()  # the folder predicted (a file's folder): where the scans' names are shown from

    def scan_name(self, sample: Sample) -> str:
        """The sample's scan as a path below the folder predicted: IMG00025.dcm is in every patient's folder."""
        return relative(sample.path, self.root.resolve())

    def accuracy(self) -> "LabelledAccuracy | None":
        """Accuracy against the samples' true labels when every sample has one, never mixing in samples the run
        learnt from (its train and val patients): those are counted apart. None when a label is missing."""
        if not self.samples or not all(sample.label for sample in self.samples):
            return None
        learnt = SPLITS[:2]
        unseen = [pred == sample.label for sample, pred in zip(self.samples, self.decided.names)
                  if sample.split not in learnt]
        own = {split: sum(sample.split == split for sample in self.samples) for split in learnt}
        return LabelledAccuracy(sum(unseen) / len(unseen) if unseen else None, len(unseen),
                                {split: n for split, n in own.items() if n})


@dataclass
class LabelledAccuracy:
    """`predict`'s accuracy on the labelled samples of patients the run did not learn from."""

    accuracy: float | None  # None when every labelled sample was the run's own
    unseen: int  # samples scored
    own: dict[str, int]  # {"train" or "val": samples of the run's own patients left out}


@applies_runtime
def predict_run(request: PredictRequest, on_done: Callable[[int, int], None] | None = None) -> Predicted:
    """Predict every scan in a folder (or one file), or for a run trained on points every row of `points`, with a
    run directory or an exported ONNX model (a file); writes `out` and returns the samples with the decisions, and
    the files or rows skipped with their reasons."""
    scans, out, points, workers = Path(request.scans), request.out, request.points, request.runtime.workers
    classes = parse_classes(request.classes)
    if classes and points is None:
        raise UserError("--classes names the label values of a points file: give it with --points CSV")
    predictor, split_of = _open_predictor(request)
    config = predictor.config
    check_new_output(out, request.overwrite, inputs=(scans,))
    check_point_run(config, points)
    if points is not None:
        prepared = prepare_points(Path(points), scans, config, workers, on_done, classes)
        samples, inputs, skipped = prepared.samples, prepared.inputs, prepared.skipped
        echo = prepared.echo
    else:
        samples, inputs, skipped = _prepare_scans(scans, config, workers, on_done)
        echo = None
    samples = [replace(sample, label=_known(sample.label, config.classes), split=split_of(sample))
               for sample in samples]
    decided = predictor.predict(inputs)
    write_predictions(out, samples, decided, points is not None, echo)
    source = ("points file" if points is not None else
              "class folders or laterality" if is_laterality(config.classes) else "class folders")
    return Predicted(samples, decided, skipped, config.positive_class, config.decision.threshold, source,
                     splits_known=not Path(request.run).is_file(), root=scans if scans.is_dir() else scans.parent)


def _open_predictor(request: PredictRequest):
    """The predictor of a run directory, or of an exported model (a file); with a function giving the split of the
    run that holds each sample or its patient ("" for an exported model, which carries no patient list)."""
    if Path(request.run).is_file():
        from perceiver_med.run.onnx_model import OnnxPredictor

        if request.tta != 1:
            raise UserError(f"--tta needs the run directory: {request.run} holds the model alone, without the "
                            "augmentation its views come from")
        return OnnxPredictor(request.run, request.runtime.device), lambda sample: ""
    from perceiver_med.run.predictor import Predictor

    predictor = Predictor(request.run, request.runtime.device, request.tta)
    return predictor, predictor.run.trained_on(predictor.config).split_of


def _prepare_scans(scans: Path, config, workers: int, on_done) -> tuple[list[Sample], np.ndarray, list[Skip]]:
    """A sample of every scan under `scans` that suits the run, with its label and patient where the files tell
    them, and its model input; the others skipped with their reason."""
    found = discover(scans)
    usable, skipped = suited_samples(found, config, lambda scan: Sample.of(
        scan, label=known_label(scan, found.root, config.classes), patient_id=known_patient(scan, found.root)))
    loaded = load_inputs(usable, config.preprocess, workers, on_done, skipped=skipped)
    return loaded.samples, loaded.inputs, loaded.skipped


def _known(label: str | None, classes: list[str]) -> str:
    return label if label in classes else ""


def known_label(scan, root: Path, classes: list[str]) -> str:
    """A scan's true label where the files tell it: the class folder holding it under `root`, else for left/right
    runs its laterality (DICOM, or LEFT/RIGHT in the file name). Labels the run does not know are ""."""
    label = _known(folder_label(scan, root), classes)
    if not label and is_laterality(classes):
        label = _known(laterality_of(scan), classes)
    return label
