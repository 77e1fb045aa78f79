"""What a finished run directory holds, read once for the report: config, metrics, frozen splits, predictions,
file digests, and the software it was trained with and is reported with."""
from __future__ import annotations

import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from perceiver_med.training.config import VERSIONED, RunConfig
from perceiver_med.csvfiles import read_csv
from perceiver_med.files import file_sha256
from perceiver_med.errors import UserError
from perceiver_med.results.display import REPORTED_SPLITS
from perceiver_med.run.rundir import CHECKPOINT, FROZEN_SPLITS, WEIGHTS, RunDir
from perceiver_med.results.predictions import PredictionsFile, read_predictions
from perceiver_med.inputs.samples import Sample

DISTRIBUTIONS = ("perceiver-med", *VERSIONED)


@dataclass
class RunRecord:
    run: Path
    config: RunConfig
    metrics: dict
    rows: list[Sample]
    predictions: dict[str, PredictionsFile]
    history: list[dict]  # history.csv: stage, epoch, train_accuracy, ... per epoch (empty for a cross-validation)


def read_run(run: Path) -> RunRecord:
    """Everything the report shows, from the run alone; a run without metrics is a UserError."""
    directory = RunDir.open(run)
    run = directory.path
    config = directory.config()
    try:
        metrics = directory.metrics()
    except UserError as exc:
        raise UserError(f"{exc}: nothing to report") from None
    rows = directory.frozen_rows(config)
    predictions = {split: read_predictions(directory.predictions_file(split), config.classes)
                   for split in REPORTED_SPLITS if directory.predictions_file(split).is_file()}
    return RunRecord(run, config, metrics, rows, predictions, _history(directory.history_file))


def _history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    table = read_csv(path, "history file", ("stage", "train_accuracy"))
    return [{"stage": row.cells["stage"], "train_accuracy": float(row.cells["train_accuracy"] or 0.0)}
            for row in table.rows]


@dataclass
class FileDigest:
    name: str
    size: int
    sha256: str
    recorded: str  # what config.json says of it: "matches", "DIFFERS" or ""


def file_digests(run: Path, config: RunConfig) -> list[FileDigest]:
    """SHA-256 of every file in the run (folds included), checked against config.json where it records one."""
    recorded = {WEIGHTS: [config.weights_sha256], FROZEN_SPLITS: [config.splits_sha256],
                CHECKPOINT: config.checkpoint_sha256}
    digests = []
    for path in sorted(p for p in Path(run).rglob("*") if p.is_file()):
        name = path.relative_to(run).as_posix()
        if any(part.startswith(".") for part in Path(name).parts):
            continue  # the lock, temporaries of an interrupted write
        digest = file_sha256(path)
        known = [d for d in recorded.get(name, []) if d] if "/" not in name else []
        status = "" if not known else "matches config.json" if digest in known else "DIFFERS from config.json"
        digests.append(FileDigest(name, path.stat().st_size, digest, status))
    return digests


def software_versions(config: RunConfig) -> list[tuple[str, str, str]]:
    """(name, version at training as config.json records it, version writing this report)."""
    trained = {key.replace("_", "-"): value for key, value in (config.versions or {}).items()}
    rows = [("python", trained.get("python", ""), platform.python_version())]
    for name in DISTRIBUTIONS:
        try:
            now = metadata.version(name)
        except metadata.PackageNotFoundError:
            now = "not installed"
        rows.append((name, trained.get(name, ""), now))
    return rows
