"""RunDir: one run directory and everything in it — file names, config and metrics (written and read), weights
and the checkpoint with their SHA-256 checks, the frozen splits, the lock, whether a folder may be trained into or
resumed, what an interrupted start leaves, and loading its model (one model, or the members of a cross-validated
run's fold ensemble).

Training writes a run through these methods; every command that uses a finished run opens it here. No other
module spells a run's file names.
"""
from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from perceiver_med.errors import UserError
from perceiver_med.files import (FILE_MODE, atomic_text, check_name, expect_new, file_sha256, not_regular,
                                 refuse_inside, writing_error)
from perceiver_med.inputs.cache import INPUT_VERSION
from perceiver_med.inputs.samples import Sample
from perceiver_med.inputs.splits import read_splits, write_splits
from perceiver_med.training.config import RunConfig, read_run_config

if TYPE_CHECKING:
    from perceiver_med.training.engine import FitFiles

CONFIG = "config.json"
WEIGHTS = "model.safetensors"  # the best weights
CHECKPOINT = "checkpoint.pt"  # the last epoch's full state, to resume from
FROZEN_SPLITS = "splits.csv"  # the splits the run trained on, as they were
CV_RECORD = "cv.json"  # a cross-validation's model and options, so a resume trains the remaining folds alike
METRICS = "metrics.json"
HISTORY = "history.csv"
CURVES = "curves.png"
LOCK_NAME = ".lock"  # host and pid of the process writing the run


def is_run_directory(folder: Path) -> bool:
    """A folder with a config.json beside weights, a checkpoint or a lock."""
    return (folder / CONFIG).is_file() and any((folder / name).exists() for name in (WEIGHTS, CHECKPOINT, LOCK_NAME))


def predictions_name(split: str) -> str:
    return f"predictions_{split}.csv"


def confusion_name(split: str) -> str:
    return f"confusion_{split}.png"


def reliability_name(split: str) -> str:
    return f"reliability_{split}.png"


def fold_name(fold: int) -> str:
    return f"fold_{fold}"


FOLD_PATTERN = re.compile(r"fold_(\d+)")


def load_run_config(run: Path) -> RunConfig:
    """config.json of a run directory, checked whole, and refused when this version prepares inputs differently
    from the run's (every reader of a run goes through here: predict, evaluate, --resume, preview --run)."""
    path = Path(run) / CONFIG
    if not path.is_file():
        raise UserError(f"{run} is not a run directory (no {CONFIG})")
    config = read_run_config(path)
    if config.input_version != INPUT_VERSION:
        made = (f"input version {config.input_version}" if config.input_version
                else "a development build that recorded no input version")
        raise UserError(f"{run} was trained on inputs prepared by {made}; this perceiver-med prepares them as "
                        f"input version {INPUT_VERSION}, so its predictions would be wrong: train the run again")
    return config


def weights_metadata(config: RunConfig) -> dict[str, str]:
    """Stored inside model.safetensors, so a config.json edited afterwards (classes, input size) is caught."""
    return {"classes": json.dumps(config.classes), "input_shape": json.dumps(list(config.preprocess.output_shape)),
            "model": json.dumps(config.model, sort_keys=True)}


class TrainedOn:
    """Which split of a run each of its samples, and each of its patients, was in: a sample the run learnt from (or
    a sample of a patient it learnt from) never counts as unseen data."""

    def __init__(self, rows: list[Sample]):
        self.samples = {self._key(row): row.split for row in rows}
        self.patients = {row.patient_id: row.split for row in rows if row.patient_id}

    @staticmethod
    def _key(sample: Sample) -> tuple:
        """Its scan and point, not its slice: predict takes whole scans, and a training slice's scan is seen."""
        return (sample.path.resolve(), sample.series_uid, sample.point)

    def split_of(self, sample: Sample) -> str:
        """"train", "val", "test", or "" for a sample and patient the run has not seen."""
        split = self.samples.get(self._key(sample))
        if split is None and sample.patient_id:
            split = self.patients.get(sample.patient_id)
        return split or ""


@dataclass(frozen=True)
class RunDir:
    """A run directory. `RunDir(path)` names one (training writes it); `RunDir.open(path)` checks that a
    finished run is there before anything is read from it."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def open(cls, path: Path | str) -> "RunDir":
        run = cls(Path(path))
        if run.path.is_file():
            raise UserError(f"{run.path} is a file: give the run directory that holds it")
        if not run.path.is_dir():
            raise UserError(f"run directory {run.path} does not exist")
        owner = RunLock(run.path).live_owner() if run.lock_file.exists() else ""
        if owner:
            raise UserError(f"{run.path} is still being trained ({owner}): its weights are intermediate; wait "
                            "for train to finish")
        unfinished = run.resume_command()
        if unfinished:  # stopped by Ctrl-C or a crash: no fitted temperature, threshold or test scores yet
            raise UserError(f"{run.path} was stopped before training finished: its weights are intermediate; "
                            f"finish it with `{unfinished}`")
        return run

    # ---------------------------------------------------------------- files
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def weights_file(self) -> Path:
        return self.path / WEIGHTS

    @property
    def checkpoint_file(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def splits_file(self) -> Path:
        return self.path / FROZEN_SPLITS

    @property
    def cv_file(self) -> Path:
        return self.path / CV_RECORD

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_NAME

    @property
    def history_file(self) -> Path:
        return self.path / HISTORY

    @property
    def curves_file(self) -> Path:
        return self.path / CURVES

    def predictions_file(self, split: str) -> Path:
        return self.path / predictions_name(split)

    def confusion_file(self, split: str) -> Path:
        return self.path / confusion_name(split)

    def reliability_file(self, split: str) -> Path:
        return self.path / reliability_name(split)

    @property
    def fit_files(self) -> FitFiles:
        """Where training writes its checkpoint and best weights."""
        # imported here: the fit loop's module imports the models, and `predict` of an exported ONNX model, which
        # checks its output with check_new_output, runs without them
        from perceiver_med.training.engine import FitFiles

        return FitFiles(self.checkpoint_file, self.weights_file)

    def fold(self, fold: int) -> "RunDir":
        """Fold `fold`'s own run inside a cross-validation (fold_<k>)."""
        return RunDir(self.path / fold_name(fold))

    def folds(self) -> list["RunDir"]:
        """The fold runs a cross-validation has begun here, in the order of their folds; none for a single run."""
        if not self.path.is_dir():
            return []
        found = [(int(match[1]), path) for path in self.path.iterdir()
                 if (match := FOLD_PATTERN.fullmatch(path.name)) and path.is_dir()]
        return [RunDir(path) for _, path in sorted(found)]

    def lock(self, enabled: bool = True) -> RunLock:
        return RunLock(self.path, enabled=enabled)

    def resume_command(self) -> str | None:
        """The command that continues this unfinished run, or None where there is nothing to continue (training
        stopped before a first epoch ended, or the run is complete). A cross-validation continues from its
        cv.json until its config.json, written last, marks it whole; a single run from its checkpoint until
        metrics.json marks it finished."""
        if self.cv_file.is_file() and not self.checkpoint_file.is_file():
            return None if self.config_file.is_file() else f"perceiver-med train --resume --cv --out {self.path}"
        if self.checkpoint_file.is_file() and not self.metrics_file.is_file():
            return f"perceiver-med train --resume --out {self.path}"
        return None

    # ---------------------------------------------------------------- training writes
    def check_target(self, resume: bool, cv: bool = False) -> None:
        """Whether train may write here. A new run or cross-validation needs a folder that holds nothing besides a
        lock; a resume needs an unfinished run of its kind: for one run its config.json and checkpoint without the
        metrics.json that marks it finished, for a cross-validation its cv.json without the config.json written
        last."""
        if not resume:
            if holds_files(self.path):
                raise UserError(f"{self.path} already holds files: choose a new --out, or add --resume to continue "
                                "that run")
            return
        if cv:
            if self.config_file.is_file():
                raise UserError(f"{self.path} is complete (every fold and the ensemble): there is nothing to resume; "
                                "evaluate or predict with it, or train a new cross-validation in another --out")
            if not self.cv_file.is_file():
                raise UserError(f"--resume --cv needs a cross-validation run directory, and {self.path} has no "
                                f"{CV_RECORD}")
            return
        if self.cv_file.is_file() and not self.checkpoint_file.is_file():
            raise UserError(f"{self.path} is a cross-validation: continue it with perceiver-med train --resume --cv "
                            f"--out {self.path}")
        if not self.config_file.is_file():
            raise UserError(f"--resume needs an existing run directory, and {self.path} has no {CONFIG}")
        if self.metrics_file.is_file():
            raise UserError(f"{self.path} is complete (training finished and wrote {METRICS}): there is nothing to "
                            "resume; evaluate or predict with it, or train a new run in another --out")
        if not self.checkpoint_file.is_file():
            raise UserError(f"{self.path} has no {CHECKPOINT} to resume from (training stopped before its first "
                            "epoch ended): start a new run")

    def check_checkpoint(self, config: RunConfig) -> None:
        """Before a resume: the checkpoint is one config.json recorded (the last, or the one before it: a kill
        between writing the checkpoint and config.json leaves either), not a damaged or replaced file."""
        if config.checkpoint_sha256 and file_sha256(self.checkpoint_file) not in config.checkpoint_sha256:
            raise UserError(f"{self.checkpoint_file} does not match the SHA-256 recorded in {CONFIG}: the file is "
                            "damaged or was replaced, so the run cannot be resumed")

    def freeze_splits(self, rows: list[Sample]) -> str:
        """Writes the run's own copy of the splits it trains on and returns its SHA-256, for config.json."""
        write_splits(rows, self.splits_file)
        return file_sha256(self.splits_file)

    def write_config(self, config: RunConfig) -> None:
        """config.json, replaced whole: a reader never sees half of it."""
        atomic_text(self.config_file, lambda handle: handle.write(config.to_json()))

    def write_metrics(self, metrics: dict) -> None:
        """metrics.json, replaced whole; for one run its presence marks training finished."""
        atomic_text(self.metrics_file, lambda handle: json.dump(metrics, handle, indent=2))

    def discard_unfinished(self) -> None:
        """After a failed start: removes what a start writes first (config.json, splits.csv, a cross-validation's
        cv.json) where nothing can be resumed, so that a corrected retry starts afresh in the same folder. A run
        with a checkpoint, or a cross-validation with a fold that has a checkpoint or has finished, is kept whole."""
        if self.checkpoint_file.exists() or any(fold.checkpoint_file.exists() or fold.metrics_file.exists()
                                                for fold in self.folds()):
            return
        for path in (self.config_file, self.splits_file, self.cv_file):
            path.unlink(missing_ok=True)

    # ---------------------------------------------------------------- contents
    def config(self) -> RunConfig:
        """config.json, checked (load_run_config)."""
        return load_run_config(self.path)

    def metrics(self) -> dict:
        """metrics.json; a run without one (training has not finished) or with one that cannot be read is a
        UserError."""
        if not self.metrics_file.is_file():
            raise UserError(f"{self.path} has no {METRICS} (training has not finished)")
        try:
            return json.loads(self.metrics_file.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{self.metrics_file} cannot be read ({exc})") from None

    def frozen_rows(self, config: RunConfig) -> list[Sample]:
        """The splits the run was trained on: its own copy, refused if it changed since it was written."""
        if not self.splits_file.is_file():
            raise UserError(f"{self.path} has no {FROZEN_SPLITS}: it is not a complete run")
        if config.splits_sha256 and file_sha256(self.splits_file) != config.splits_sha256:
            raise UserError(f"{self.splits_file} was changed after training (its SHA-256 differs from {CONFIG})")
        return read_splits(self.splits_file)

    def trained_on(self, config: RunConfig) -> TrainedOn:
        return TrainedOn(self.frozen_rows(config))

    def load_model(self, device: torch.device | None = None, config: RunConfig | None = None) -> nn.Module:
        """The run's best model in eval mode, weights checked against config.json. A cross-validated run has no
        model of its own: its members are runs (members)."""
        config = config or self.config()
        device = device or torch.device("cpu")
        if config.ensemble:
            raise ValueError(f"{self.path} is a cross-validated run: load its members")
        from perceiver_med.models import build_model
        from perceiver_med.models.weights import load_weights

        if not self.weights_file.is_file():
            raise UserError(f"{self.path} has no {WEIGHTS} (training stopped before its first epoch ended)")
        try:  # (RunConfig.check has matched the model's outputs with the classes)
            with torch.device("meta"), warnings.catch_warnings():  # shapes only: nothing is allocated before
                warnings.simplefilter("ignore")  # the weights file agrees (a zero-sized tensor warns on meta)
                skeleton = build_model(config.model)
        except (TypeError, ValueError, RuntimeError, ArithmeticError) as exc:  # whatever an edited size breaks
            raise UserError(f"{self.config_file} describes no model this version can build: {exc}") from None
        self._check_shapes(skeleton)
        model = build_model(config.model)
        load_weights(model, self.weights_file, config.weights_sha256, weights_metadata(config))
        return model.to(device).eval()

    def _check_shapes(self, model: nn.Module) -> None:
        """Every tensor of `model` (built on the meta device) against the weights file's header, which lists the
        names and shapes without loading them: config.json describing another model is refused before it is built."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.weights_file), "pt") as handle:
                stored = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{self.weights_file} is damaged or not a safetensors file: {exc}") from None
        expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}

        def shown(shape):
            return "absent" if shape is None else "x".join(map(str, shape)) or "a scalar"

        for name in sorted(set(stored) | set(expected)):
            if stored.get(name) != expected.get(name):
                raise UserError(f"{self.config_file} describes a model other than {WEIGHTS} holds: {name} is "
                                f"{shown(expected.get(name))} in config.json, {shown(stored.get(name))} in the weights")

    def members(self, config: RunConfig) -> list["RunDir"]:
        """A cross-validated run's members (config.ensemble: its own fold folders), each opened and checked to be a
        single run with this run's classes and preprocessing; none for a single run. The Predictor averages their
        calibrated probabilities."""
        members = []
        for name in config.ensemble:
            if Path(name).name != name or name.startswith("."):
                raise UserError(f"{self.config_file} names an ensemble member outside the run: {name!r}")
            member = RunDir.open(self.path / name)
            member_config = member.config()
            why = [reason for reason, wrong in (("its classes differ", member_config.classes != config.classes),
                                                ("its preprocessing differs", member_config.preprocess != config.preprocess),
                                                ("it is an ensemble itself", bool(member_config.ensemble))) if wrong]
            if why:
                raise UserError(f"{member.path} is not a member of this run: {'; '.join(why)}")
            members.append(member)
        return members


# ---------------------------------------------------------------- who writes where
def refuse_inside_runs(output: Path | str, folds: bool = False) -> None:
    """Nothing is written inside a run directory (is_run_directory) or a cross-validation (its cv.json): a run
    holds only what training wrote, so its digests and its frozen splits stay true. `folds`: the output is a
    fold that cross-validation itself trains inside its folder."""
    for folder in Path(output).resolve().parents:
        if is_run_directory(folder) or (not folds and (folder / CV_RECORD).is_file()):
            raise UserError(f"{output} is inside the run directory {folder}: write outputs elsewhere")


def check_new_output(path: Path | str, overwrite: bool = False, inputs: tuple = ()) -> None:
    """Before any work: refuse to write inside an input folder (`inputs`) or a run directory, to replace an existing
    output unasked, anything but a regular file even when asked, or under a name the file system refuses; then
    make sure the output's folder is writable (a refused output touches nothing). An output absent now is then
    created only if it is still absent (files.expect_new)."""
    path = Path(path)
    refuse_inside(path, *inputs)
    check_name(path)
    try:
        refuse_inside_runs(path)
        what = not_regular(path)
        exists = os.path.lexists(path)
    except OSError as exc:  # a name the file system refuses (too long...)
        raise writing_error(path, exc) from None
    if what == "a folder":
        raise UserError(f"{path} is a folder: give a file name")
    if what:  # even with --overwrite: replacing a device or a pipe with a file breaks whatever uses it
        raise UserError(f"{path} is {what}, not a regular file: it is not replaced (give a file name)")
    if exists and not overwrite:
        raise UserError(f"{path} already exists: choose another name, or add --overwrite")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name[:64]}."):
            pass  # the folder takes new files
    except OSError as exc:
        raise writing_error(path, exc) from None
    expect_new(path, not exists)


class RunLock:
    """One writer per run directory: the lock file holds the owner's host and pid; a dead owner's lock is taken over."""

    def __init__(self, run: Path | str, enabled: bool = True):
        self.run, self.enabled, self.created = Path(run), enabled, False
        self.path = self.run / LOCK_NAME

    def __enter__(self) -> "RunLock":
        if not self.enabled:
            return self
        refuse_inside_runs(self.run, folds=True)
        self.created = not self.run.exists()
        try:
            self.run.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise writing_error(self.run, exc) from None
        for _attempt in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
            except FileExistsError:
                owner = self.live_owner()
                if owner:
                    raise UserError(f"{self.run} is in use by another perceiver-med ({owner}): wait for it to "
                                    "finish, or choose another --out") from None
                self.path.unlink(missing_ok=True)  # left by a process that no longer runs
                continue
            except OSError as exc:
                raise writing_error(self.path, exc) from None
            with os.fdopen(descriptor, "w") as handle:
                handle.write(f"{socket.gethostname()} {os.getpid()}\n")
            return self
        raise UserError(f"{self.run} is being locked by another process: try again")

    def live_owner(self) -> str:
        try:
            host, pid = self.path.read_text().split()
            pid = int(pid)
        except (OSError, ValueError):
            return ""  # unreadable or half-written: treated as stale
        if host != socket.gethostname():
            return f"pid {pid} on {host}"  # cannot tell whether it runs: assume it does
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return ""
        except PermissionError:
            pass
        return f"pid {pid}"

    def __exit__(self, *exc_info) -> None:
        if not self.enabled:
            return
        self.path.unlink(missing_ok=True)
        if self.created and self.run.is_dir() and not any(self.run.iterdir()):
            self.run.rmdir()  # a run that failed before writing anything leaves nothing behind


def holds_files(folder: Path) -> bool:
    """Whether a folder holds anything besides a lock."""
    return folder.exists() and (not folder.is_dir() or any(p.name != LOCK_NAME for p in folder.iterdir()))


def remove_stale_temporaries(run: Path) -> None:
    """Temporary files of writes that were killed midway (`.<name>.<random>.<suffix>`); call under RunLock."""
    if not run.is_dir():
        return
    for path in run.iterdir():
        if path.name.startswith(".") and path.name != LOCK_NAME and path.is_file():
            path.unlink(missing_ok=True)
