"""`export RUN --format onnx`: a run's model as one ONNX file that runs without perceiver-med's model code, checked
against PyTorch before it is written.

The graph is the run's Predictor model (one model, or a fold ensemble averaged inside the graph) followed by a
softmax, traced by torch.onnx's dynamo exporter (torch.export) at opset 18 with a free batch size; the metadata
run/onnx_model.py defines goes with it. Before the file is written, ONNX Runtime runs the graph on a batch of the
run's own prepared inputs (val, else test), whole and one sample alone, and the export is refused where its
probabilities differ from PyTorch's in fp32 by more than onnx_model.TOLERANCE. A run that predicts in bf16
exports fp32: its weights are fp32, and bf16 is an arithmetic of the machine, not of the run.
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from perceiver_med.errors import UserError
from perceiver_med.files import atomic_path, file_sha256
from perceiver_med.inputs.loading import load_inputs
from perceiver_med.inputs.samples import Sample
from perceiver_med.inputs.splits import SPLITS
from perceiver_med.run.onnx_model import (INPUT_NAME, OPSET, OUTPUT_NAME, TOLERANCE, ExportedRun, metadata_entries,
                                          open_session)
from perceiver_med.run.predictor import Predictor
from perceiver_med.run.rundir import check_new_output
from perceiver_med.training.config import Runtime, applies_runtime
from perceiver_med.training.engine import predict_probs

FORMATS = ("onnx",)
VERIFY_SAMPLES = 16  # the batch the export is checked on


class Probabilities(nn.Module):
    """A classifier's softmax in fp32: what the exported graph gives (for an ensemble, whose output is the log of
    its mean probability, that mean)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, scans: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(scans).float(), dim=1)


@dataclass(frozen=True)
class ExportRequest:
    """The run in `run` as an ONNX file `out` (a new file unless `overwrite`)."""

    run: Path
    out: Path
    format: str = "onnx"
    overwrite: bool = False
    runtime: Runtime = field(default_factory=Runtime)


@dataclass
class Verification:
    """The export's check: ONNX Runtime against PyTorch (fp32) on `samples` of the run's `split`."""

    split: str
    samples: int
    max_abs_difference: float  # of the probabilities, over every class of every sample, batched or alone
    tolerance: float = TOLERANCE

    def as_dict(self) -> dict:
        return {"split": self.split, "samples": self.samples, "max_abs_difference": self.max_abs_difference,
                "tolerance": self.tolerance, "precision": "fp32"}


@dataclass
class Exported:
    path: Path
    size_bytes: int
    metadata: ExportedRun
    verification: Verification


@applies_runtime
def export_run(request: ExportRequest) -> Exported:
    """Export a run's model with its preprocessing and decision rule, verified; writes `out` and says what it
    wrote."""
    if request.format not in FORMATS:
        raise UserError(f"--format must be {' or '.join(FORMATS)}, not {request.format!r}")
    predictor = Predictor(request.run, "cpu")  # fp32 on the CPU: the arithmetic the graph is traced in
    check_new_output(request.out, request.overwrite)
    config = predictor.config
    split, inputs = verification_inputs(predictor, request.runtime.workers)
    network = predictor.network()
    expected = predict_probs(network.forward, torch.from_numpy(inputs), torch.device("cpu"), precision="fp32")
    graph = onnx_graph(Probabilities(network).eval(), inputs)
    metadata = ExportedRun(classes=config.classes, positive_class=config.positive_class, decision=config.decision,
                           preprocess=config.preprocess, input_version=config.input_version,
                           config_sha256=file_sha256(predictor.run.config_file), model=config.model["name"],
                           members=list(config.ensemble), scan_kinds=config.scan_kinds,
                           modality_groups=config.modality_groups, precision=config.train.precision)
    verification = verify_graph(graph.SerializeToString(), inputs, expected, split)
    metadata.verification = verification.as_dict()
    for key, value in metadata_entries(metadata).items():
        graph.metadata_props.add(key=key, value=value)
    data = graph.SerializeToString()
    with atomic_path(request.out, suffix=".onnx") as temp:
        temp.write_bytes(data)
    return Exported(Path(request.out), len(data), metadata, verification)


def verification_inputs(predictor: Predictor, workers: int = 0) -> tuple[str, np.ndarray]:
    """Up to VERIFY_SAMPLES prepared inputs of the run's val split, else of its test split (else train)."""
    rows = predictor.run.frozen_rows(predictor.config)
    split = next((name for name in (*SPLITS[1:], SPLITS[0]) if any(row.split == name for row in rows)), None)
    picked: list[Sample] = [row for row in rows if row.split == split][:VERIFY_SAMPLES]
    missing = [row.path for row in picked if not row.path.exists()]
    if missing:
        raise UserError(f"the run's {split} scans are needed to verify the export, and {len(missing)} of them are "
                        f"not where its splits.csv says (e.g. {missing[0]})")
    loaded = load_inputs(picked, predictor.config.preprocess, workers)
    return split, loaded.inputs


@contextmanager
def _quiet_exporter():
    """torch.onnx logs its progress and the optional packages it lacks (torchvision): not the user's business."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def onnx_graph(model: nn.Module, inputs: np.ndarray):
    """The ONNX ModelProto of `model` (in eval mode, on the CPU), batch size free.

    torch.onnx's dynamo exporter (torch.export) rather than the TorchScript one: it traces all three families (the
    TorchScript tracer cannot follow the hybrid's rollout map, whose side comes from a tensor shape), the
    TorchScript exporter is deprecated since torch 2.9, and torch.export reports an input size that the code fixes
    rather than silently exporting it fixed.
    """
    example = torch.from_numpy(inputs[:2] if len(inputs) >= 2 else np.concatenate([inputs, inputs]))
    with _quiet_exporter():  # two samples: torch.export specialises a size of 1
        try:
            program = torch.onnx.export(model, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        opset_version=OPSET, dynamo=True, verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch")},))
        except Exception as exc:  # torch.export's errors name the code that fixed a size; that is a defect
            raise RuntimeError(f"torch.onnx could not export this model: {exc}") from exc
    return program.model_proto


def verify_graph(data: bytes, inputs: np.ndarray, expected: np.ndarray, split: str = "") -> Verification:
    """ONNX Runtime's probabilities of `inputs` (all at once, and the first alone: the batch size is free) against
    PyTorch's `expected`; UserError where they differ by more than TOLERANCE."""
    session = open_session(data, "cpu")
    batched = session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0].astype(np.float64)
    alone = session.run([OUTPUT_NAME], {INPUT_NAME: inputs[:1]})[0].astype(np.float64)
    if batched.shape != expected.shape or alone.shape != expected[:1].shape:
        raise UserError(f"the exported graph gives probabilities of shape {batched.shape}, PyTorch {expected.shape}: "
                        "it is not the run's model")
    difference = float(max(np.abs(batched - expected).max(), np.abs(alone - expected[:1]).max()))
    if not difference <= TOLERANCE:  # NaN is refused too
        raise UserError(f"the exported graph's probabilities differ from PyTorch's by up to {difference:.3g} on "
                        f"{len(inputs)} {split} input(s), more than the tolerance {TOLERANCE:g}: nothing is written")
    return Verification(split, len(inputs), difference)
