"""An exported model: an ONNX file that carries everything needed to reproduce a run's predictions, and the
predictor that runs it with ONNX Runtime alone.

The graph (results/onnx_export.py writes it) takes `scans`, a float32 batch (N, C, H, W) of model inputs in [0, 1],
and gives `probabilities`, float32 (N, K): the run's model probabilities before its temperature (for a fold
ensemble, the mean of its members' calibrated probabilities). The batch size is free. A network without its
preprocessing is useless (nnU-Net declined ONNX for that reason), so the file's metadata holds the run's
preprocessing as config.json stores it, described in words as well (layout, window per kind of scan), its
classes, positive class, temperature and threshold, the scans it suits, the SHA-256 of the run's config.json
and its input version. `OnnxPredictor` reads them back and decides with the decision rule of stats/decision.py,
the one a run's Predictor uses, so `predict model.onnx` and `predict RUN` agree to the export tolerance.

This module imports no model code (nor anything that does): an exported model predicts where the models are not
installed, which tests/results/test_onnx.py checks by making perceiver_med.models unimportable.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perceiver_med import __version__
from perceiver_med.errors import UserError
from perceiver_med.inputs.cache import INPUT_VERSION
from perceiver_med.inputs.preprocess import PreprocessConfig
from perceiver_med.inputs.windows import window_by_scan
from perceiver_med.io.scans import SCAN_KINDS
from perceiver_med.stats.decision import Decision, Decisions
from perceiver_med.training.config import from_dict, to_dict

FORMAT = "perceiver-med classifier"
METADATA_VERSION = 1  # bump when a field changes meaning; a reader refuses versions it does not know
METADATA_KEY = "perceiver_med"  # the ONNX metadata_props entry holding the JSON below
DIGEST_KEY = "perceiver_med_sha256"  # SHA-256 of that JSON text: a field edited after export is refused
INPUT_NAME = "scans"
OUTPUT_NAME = "probabilities"
OPSET = 18  # read by ONNX Runtime 1.14+, TensorRT 8.6+ and OpenVINO 2023+
# fp32 on both sides: ONNX Runtime's and PyTorch's probabilities of the same inputs differ by about 1e-7 (other
# kernels sum in another order); an export differing by more than this is refused
TOLERANCE = 1e-5


def describe_input(preprocess: PreprocessConfig) -> dict:
    """The graph's input in words and numbers, for a deployment that prepares scans without perceiver-med."""
    kind = preprocess.kind
    description = {"name": INPUT_NAME, "shape": ["batch", *preprocess.output_shape], "dtype": "float32",
                   "values": "0..1 after the window", "kind": preprocess.input, "size": preprocess.size,
                   "channels": preprocess.channels, "tiles_per_side": kind.tiles, "layout": kind.layout,
                   "window": preprocess.window, "window_by_scan": window_by_scan(preprocess.window)}
    if kind.takes_points:
        description.update(fov_mm=preprocess.fov_mm, slice_mm=preprocess.slice_mm,
                           point="coordX,coordY,coordZ in DICOM patient coordinates (LPS mm)")
    return description


def describe_output(classes: list[str]) -> dict:
    return {"name": OUTPUT_NAME, "shape": ["batch", len(classes)], "dtype": "float32", "columns": list(classes),
            "values": "the model's probabilities before the temperature: calibrated = softmax(log(p) / "
                      "temperature); the positive class is called where its calibrated probability is at least "
                      "the threshold (null threshold: the most probable class)"}


@dataclass
class ExportedRun:
    """The metadata of an exported model: what `predict` needs of a run (the attributes a RunConfig gives it:
    classes, positive_class, decision, preprocess, scan_kinds, modality_groups), and where it came from.

    Args:
        format, metadata_version: what this file is, and the version of these fields.
        exported_by: the perceiver-med version that exported it.
        input_version: how its inputs are prepared (inputs.cache.INPUT_VERSION); another version is refused.
        config_sha256: SHA-256 of the run's config.json.
        model: the registry name of the model (each member's, for an ensemble).
        members: the folds of a cross-validated run, averaged inside the graph; empty for one model.
        precision: the run's own arithmetic ("auto", "bf16", "fp32"); the graph is fp32 whatever it is.
        input, output: the graph's input and output described (describe_input, describe_output); checked against
            preprocess and classes when read.
        verification: the export's check against PyTorch: split, samples, max_abs_difference, tolerance.
    """

    classes: list[str]
    positive_class: str
    decision: Decision
    preprocess: PreprocessConfig
    input_version: int
    config_sha256: str
    model: str
    format: str = FORMAT
    metadata_version: int = METADATA_VERSION
    exported_by: str = __version__
    members: list[str] = field(default_factory=list)
    scan_kinds: list[str] = field(default_factory=list)
    modality_groups: list[str] = field(default_factory=list)
    precision: str = "fp32"
    input: dict = field(default_factory=dict)
    output: dict = field(default_factory=dict)
    verification: dict = field(default_factory=dict)

    def __post_init__(self):
        self.input = self.input or describe_input(self.preprocess)
        self.output = self.output or describe_output(self.classes)

    def check(self) -> None:
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes) or "" in self.classes:
            raise ValueError(f"classes must be two or more distinct names, not {self.classes}")
        if self.positive_class not in self.classes:
            raise ValueError(f"positive_class {self.positive_class!r} is not one of the classes")
        if not set(self.scan_kinds) <= set(SCAN_KINDS):
            raise ValueError(f"scan_kinds must hold {' and/or '.join(map(repr, SCAN_KINDS))}, not {self.scan_kinds}")
        self.preprocess.check()
        # json round trip: the stored description has lists where a fresh one has tuples
        if self.input != json.loads(json.dumps(describe_input(self.preprocess))):
            raise ValueError("input does not describe the preprocessing the file holds")
        if self.output != describe_output(self.classes):
            raise ValueError("output does not describe the classes the file holds")

    def to_json(self) -> str:
        return json.dumps(to_dict(self), indent=1)


def metadata_entries(exported: ExportedRun) -> dict[str, str]:
    """The ONNX metadata_props of an exported model: the JSON, and its SHA-256."""
    text = exported.to_json()
    return {METADATA_KEY: text, DIGEST_KEY: hashlib.sha256(text.encode()).hexdigest()}


def read_metadata(entries: dict[str, str], path: Path | str) -> ExportedRun:
    """An exported model's metadata from its ONNX metadata_props, checked whole: one UserError line naming `path`
    and what is wrong (no metadata, a version this perceiver-med does not read, an edit after export, a field)."""
    if METADATA_KEY not in entries:
        raise UserError(f"{path} is an ONNX model without perceiver-med's metadata, so its preprocessing and "
                        "decision rule are unknown: give a model written by `perceiver-med export RUN --format onnx`")
    text = entries[METADATA_KEY]
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        data = None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path}: its {METADATA_KEY} metadata is not a {FORMAT}'s")
    version = data.get("metadata_version")
    if version != METADATA_VERSION:
        raise UserError(f"{path} holds metadata version {version!r}; this perceiver-med reads version "
                        f"{METADATA_VERSION}: export the run again with this version, or predict with the version "
                        f"that exported it ({data.get('exported_by', 'unknown')})")
    if hashlib.sha256(text.encode()).hexdigest() != entries.get(DIGEST_KEY):
        raise UserError(f"{path}: its metadata was changed after export (its SHA-256 differs from "
                        f"{DIGEST_KEY}): export the run again rather than edit the file")
    try:
        exported = from_dict(ExportedRun, data)
    except ValueError as exc:
        raise UserError(f"{path}: its metadata is refused: {exc}") from None
    if exported.input_version != INPUT_VERSION:
        raise UserError(f"{path} was exported from a run trained on inputs prepared by input version "
                        f"{exported.input_version}; this perceiver-med prepares them as input version {INPUT_VERSION}, "
                        "so its predictions would be wrong: train and export the run again")
    return exported


PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def providers_for(device: str) -> list[str]:
    """ONNX Runtime's execution providers for --device: "auto" takes CUDA where this onnxruntime has it."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device == "auto":
        return [p for p in (PROVIDERS["cuda"], PROVIDERS["cpu"]) if p in available]
    if device not in PROVIDERS:
        raise UserError(f"--device {device}: an ONNX model runs on cpu or cuda")
    if PROVIDERS[device] not in available:
        raise UserError(f"--device {device}: this onnxruntime has no {PROVIDERS[device]} (onnxruntime-gpu has)")
    return [PROVIDERS[device]] + ([PROVIDERS["cpu"]] if device != "cpu" else [])


def open_session(model: Path | str | bytes, device: str = "cpu", threads: int = 0):
    """An ONNX Runtime session of a model file (or its bytes); UserError where ONNX Runtime cannot load it.
    `threads`: intra-op threads (0: ONNX Runtime's choice, one per core)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its notices are not the user's business
    options.intra_op_num_threads = threads
    try:
        source = model if isinstance(model, bytes) else str(model)
        return onnxruntime.InferenceSession(source, options, providers=providers_for(device))
    except UserError:
        raise
    except Exception as exc:  # onnxruntime raises its own types for files it cannot read
        what = "the exported graph" if isinstance(model, bytes) else model
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from X failed:Protobuf parsing failed." -> the end
        reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Load model from .* failed:)?", "", reason).strip()
        raise UserError(f"{what} is not an ONNX model ONNX Runtime can load: {reason}") from None


class OnnxPredictor:
    """An exported model with its decision rule, run by ONNX Runtime: `OnnxPredictor(path)` loads the file and
    checks its metadata and its graph against each other. Its `config` (the ExportedRun) serves `predict` where a
    run's RunConfig does: preprocessing, the scans it suits, classes and decision."""

    def __init__(self, path: Path | str, device: str = "auto", threads: int = 0):
        self.path = Path(path)
        self.session = open_session(self.path, device, threads)
        self.config = read_metadata(self.session.get_modelmeta().custom_metadata_map, self.path)
        self._check_graph()

    def _check_graph(self) -> None:
        """The graph takes the inputs the metadata describes and gives one probability per class."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        expected = list(self.config.preprocess.output_shape)
        if (len(inputs) != 1 or inputs[0].name != INPUT_NAME or list(inputs[0].shape[1:]) != expected
                or len(outputs) != 1 or outputs[0].name != OUTPUT_NAME
                or outputs[0].shape[1:] != [len(self.config.classes)]):
            got = ", ".join(f"{i.name} {i.shape}" for i in inputs) + " -> " + ", ".join(
                f"{o.name} {o.shape}" for o in outputs)
            raise UserError(f"{self.path}: its graph ({got}) is not the one its metadata describes "
                            f"({INPUT_NAME} [batch, {', '.join(map(str, expected))}] -> {OUTPUT_NAME} "
                            f"[batch, {len(self.config.classes)}])")

    @property
    def classes(self) -> list[str]:
        return self.config.classes

    @property
    def positive(self) -> int:
        return self.config.classes.index(self.config.positive_class)

    def probabilities(self, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """(N, K) model probabilities in float64, `batch_size` inputs (N, C, H, W) at a time; each row divided by
        its sum, so that it sums to 1 as PyTorch's float64 softmax does (fp32 rows miss by about 1e-7)."""
        inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        parts = [self.session.run([OUTPUT_NAME], {INPUT_NAME: inputs[start:start + batch_size]})[0]
                 for start in range(0, len(inputs), batch_size)]
        probs = np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, len(self.classes)))
        if not np.isfinite(probs).all():
            raise UserError(f"{self.path} gave non-finite outputs (NaN or infinity): the file is damaged")
        return probs / probs.sum(axis=1, keepdims=True) if len(probs) else probs

    def decide(self, raw: np.ndarray) -> Decisions:
        return Decisions.of(raw, self.config)

    def predict(self, inputs: np.ndarray) -> Decisions:
        return self.decide(self.probabilities(inputs))
