"""ONNX export and prediction from the exported file: the graph gives PyTorch's probabilities for each model family
and for a fold ensemble, `predict model.onnx` writes what `predict RUN` writes without importing any model code,
and files that are not ours, or were edited after export, are refused."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from perceiver_med.errors import UserError
from perceiver_med.inputs.loading import load_inputs
from perceiver_med.run.onnx_model import DIGEST_KEY, METADATA_KEY, TOLERANCE, OnnxPredictor
from perceiver_med.run.predictor import Predictor
from perceiver_med.run.rundir import RunDir
from perceiver_med.training.engine import predict_probs
from perceiver_med.workflows.train import TrainRequest, train
from tests.conftest import CPU_FP32, index_volume, write_series

TINY = dict(size=32, epochs=1, batch_size=8, patience=0)
FAMILIES = {"perceiver": dict(num_latents=8, latent_dim=32), "cnn": {}, "vit-rollout-cnn": dict(depth=1, dim=32)}


@pytest.fixture(scope="module")
def folded(knee, tmp_path_factory):
    from perceiver_med.workflows.folders import split_folder

    root = tmp_path_factory.mktemp("onnx-folds")
    split_folder(knee / "data", root / "splits.csv", seed=0, folds=2)
    return root / "splits.csv"


def _train_and_export(root: Path, splits: Path, model: str, options: dict, cv: bool = False):
    from perceiver_med.results.onnx_export import ExportRequest, export_run

    trained = train(TrainRequest(splits, root / "run", model, {**TINY, **options}, CPU_FP32, cv=cv))
    return trained.run, root / "model.onnx", export_run(ExportRequest(trained.run, root / "model.onnx"))


@pytest.fixture(scope="module")
def perceiver_export(knee, tmp_path_factory):
    """A tiny fp32 Perceiver run on the knee phantom, exported: (run, model.onnx, Exported)."""
    return _train_and_export(tmp_path_factory.mktemp("onnx-perceiver"), knee / "splits.csv", "perceiver",
                             FAMILIES["perceiver"])


@pytest.fixture(scope="module", params=[*FAMILIES, "ensemble"])
def exported(request, knee, folded, tmp_path_factory):
    """Each family's tiny fp32 run (and a 2-fold cross-validated CNN), exported: (run, model.onnx, Exported)."""
    if request.param == "perceiver":
        return request.getfixturevalue("perceiver_export")
    root = tmp_path_factory.mktemp(f"onnx-{request.param}")
    if request.param == "ensemble":
        return _train_and_export(root, folded, "cnn", {}, cv=True)
    return _train_and_export(root, knee / "splits.csv", request.param, FAMILIES[request.param])


def _val_inputs(run: Path) -> np.ndarray:
    predictor = Predictor(run, "cpu")
    rows = [row for row in predictor.run.frozen_rows(predictor.config) if row.split != "train"]
    return load_inputs(rows, predictor.config.preprocess).inputs


def test_the_exported_graph_gives_pytorchs_probabilities_at_any_batch_size(exported):
    run, path, result = exported
    inputs = _val_inputs(run)  # val and test: more than the export's own check saw
    expected = Predictor(run, "cpu").probabilities(inputs)  # the run's own precision: fp32
    onnx_model = OnnxPredictor(path, "cpu")
    assert np.abs(onnx_model.probabilities(inputs) - expected).max() <= TOLERANCE
    assert np.abs(onnx_model.probabilities(inputs, batch_size=1) - expected).max() <= TOLERANCE
    assert 0 <= result.verification.max_abs_difference <= TOLERANCE
    assert result.size_bytes == path.stat().st_size


def test_the_metadata_is_the_runs_decision_rule_and_preprocessing(exported):
    from perceiver_med.inputs.cache import INPUT_VERSION
    from perceiver_med.run.rundir import load_run_config

    run, path, _ = exported
    config, metadata = load_run_config(run), OnnxPredictor(path, "cpu").config
    assert (metadata.classes, metadata.positive_class) == (config.classes, config.positive_class)
    assert (metadata.decision.temperature, metadata.decision.threshold) == (config.decision.temperature,
                                                                            config.decision.threshold)
    assert metadata.preprocess == config.preprocess and metadata.input["shape"] == ["batch", 1, 32, 32]
    assert metadata.config_sha256 == hashlib.sha256((run / "config.json").read_bytes()).hexdigest()
    assert metadata.input_version == INPUT_VERSION
    assert metadata.members == config.ensemble and (len(metadata.members) == 2) == bool(config.ensemble)


def test_a_run_that_predicts_in_bf16_exports_fp32(tiny_run, tmp_path):
    """tiny_run trained at precision "auto", recorded as the arithmetic used (bf16 autocast where the CPU has bf16
    units): the graph is fp32 whatever the run's, and it is checked against PyTorch in fp32."""
    from perceiver_med.results.onnx_export import ExportRequest, export_run

    result = export_run(ExportRequest(tiny_run.run, tmp_path / "model.onnx"))
    recorded = RunDir.open(tiny_run.run).config().train.precision
    assert recorded in ("bf16", "fp32") and result.metadata.precision == recorded
    assert result.verification.as_dict()["precision"] == "fp32"
    graph = onnx.load(str(tmp_path / "model.onnx"))
    assert {onnx.TensorProto.FLOAT} == {tensor.data_type for tensor in graph.graph.initializer
                                        if tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.BFLOAT16,
                                                                onnx.TensorProto.FLOAT16)}
    inputs = _val_inputs(tiny_run.run)
    fp32 = predict_probs(Predictor(tiny_run.run, "cpu").network().forward, torch.from_numpy(inputs),
                         torch.device("cpu"), precision="fp32")
    assert np.abs(OnnxPredictor(tmp_path / "model.onnx", "cpu").probabilities(inputs) - fp32).max() <= TOLERANCE


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _same_predictions(by_run: Path, by_onnx: Path, threshold: float | None, positive: str) -> None:
    """The same rows, probabilities within the tolerance, and the same decisions unless a probability lies within
    the tolerance of the threshold."""
    a, b = _rows(by_run), _rows(by_onnx)
    assert a[0].keys() == b[0].keys() and len(a) == len(b) > 10
    named = [column for column in a[0] if not column.startswith("prob_") and column != "pred"]  # scan, point, label
    assert [[row[c] for c in named] for row in a] == [[row[c] for c in named] for row in b]
    probabilities = [column for column in a[0] if column.startswith("prob_")]
    for x, y in zip(a, b):
        assert max(abs(float(x[c]) - float(y[c])) for c in probabilities) <= TOLERANCE
        near = threshold is not None and abs(float(x[f"prob_{positive}"]) - threshold) <= TOLERANCE
        assert x["pred"] == y["pred"] or near


def test_predict_with_the_onnx_file_writes_what_predict_with_the_run_writes(exported, knee, run_cli, tmp_path):
    run, path, result = exported
    code, _, err = run_cli("predict", run, knee / "data", "--out", tmp_path / "run.csv", "--device", "cpu")
    assert code == 0, err
    code, out, err = run_cli("predict", path, knee / "data", "--out", tmp_path / "onnx.csv")
    assert code == 0, err
    assert "does not say which patients it learnt from" in out
    metadata = result.metadata
    _same_predictions(tmp_path / "run.csv", tmp_path / "onnx.csv", metadata.decision.threshold,
                      metadata.positive_class)


def test_predict_points_with_the_onnx_file_writes_what_predict_points_with_the_run_writes(tmp_path, run_cli):
    """A run on point grids in patient mm: the exported file carries the field of view and plane spacing."""
    from perceiver_med.synth.nodules import write_points
    from perceiver_med.workflows.folders import split_folder

    (tmp_path / "d").mkdir()
    write_points(tmp_path / "d", 6, "dicom", seed=1)
    split_folder(tmp_path / "d" / "scans", tmp_path / "s.csv", points_csv=tmp_path / "d" / "points.csv")
    run, path, result = _train_and_export(tmp_path, tmp_path / "s.csv", "cnn", dict(size=16, slice_mm=2.5))
    assert (result.metadata.input["fov_mm"], result.metadata.input["slice_mm"]) == (40.0, 2.5)
    assert result.metadata.input["shape"] == ["batch", 1, 48, 48]
    written = {}
    for name, model in (("run", run), ("onnx", path)):
        code, _, err = run_cli("predict", model, tmp_path / "d" / "scans", "--points", tmp_path / "d" / "points.csv",
                               "--out", tmp_path / f"{name}.csv", "--device", "cpu")
        assert code == 0, err
        written[name] = tmp_path / f"{name}.csv"
    assert _rows(written["onnx"])[0].keys() >= {"seriesuid", "coordX", "coordY", "coordZ"}
    _same_predictions(written["run"], written["onnx"], result.metadata.decision.threshold,
                      result.metadata.positive_class)
    code, _, err = run_cli("predict", path, tmp_path / "d" / "scans", "--out", tmp_path / "p.csv")
    assert code == 2 and "centred on points" in err, err  # as predict RUN: points needed


BLOCK_MODELS = """
import sys

class NoModels:
    def find_spec(self, name, path=None, target=None):
        if name == "perceiver_med.models" or name.startswith("perceiver_med.models."):
            raise ImportError(f"{name} is not installed here")

sys.meta_path.insert(0, NoModels())
"""


def test_predict_with_the_onnx_file_needs_no_model_code(perceiver_export, knee, run_cli, tmp_path):
    """With perceiver_med.models unimportable, the library call behind `predict model.onnx` still works, and gives
    the numbers `predict RUN` gives."""
    run, path, result = perceiver_export
    code, _, err = run_cli("predict", run, knee / "data", "--out", tmp_path / "run.csv", "--device", "cpu")
    assert code == 0, err
    script = BLOCK_MODELS + textwrap.dedent(f"""
        from pathlib import Path
        from perceiver_med.results.predictions import PredictRequest, predict_run
        from perceiver_med.training.config import Runtime

        predict_run(PredictRequest(Path({str(path)!r}), Path({str(knee / 'data')!r}),
                                   Path({str(tmp_path / 'onnx.csv')!r}), runtime=Runtime(device="cpu")))
        loaded = sorted(name for name in sys.modules if name.startswith("perceiver_med."))
        assert not [name for name in loaded if name.startswith(("perceiver_med.models", "perceiver_med.training.engine",
                                                                "perceiver_med.run.predictor"))], loaded
        assert "onnxruntime" in sys.modules
        print("predicted without model code")
    """)
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=environment)
    assert done.returncode == 0 and "predicted without model code" in done.stdout, done.stderr[-3000:]
    _same_predictions(tmp_path / "run.csv", tmp_path / "onnx.csv", result.metadata.decision.threshold,
                      result.metadata.positive_class)
    # the check itself can fail: the PyTorch predictor cannot be imported under the same block
    refused = subprocess.run([sys.executable, "-c", BLOCK_MODELS + "import perceiver_med.run.predictor"],
                             capture_output=True, text=True, timeout=300, env=environment)
    assert refused.returncode != 0 and "perceiver_med.models is not installed here" in refused.stderr


# ---------------------------------------------------------------- refusals
def _edit_metadata(source: Path, target: Path, change, redigest: bool = True) -> None:
    """A copy of an exported model whose metadata JSON `change(data)` edits; `redigest`: its SHA-256 follows."""
    model = onnx.load(str(source))
    entries = {entry.key: entry.value for entry in model.metadata_props}
    data = json.loads(entries[METADATA_KEY])
    change(data)
    text = json.dumps(data)
    entries[METADATA_KEY] = text
    if redigest:
        entries[DIGEST_KEY] = hashlib.sha256(text.encode()).hexdigest()
    del model.metadata_props[:]
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(target))


def _set(*path_and_value):
    *path, value = path_and_value

    def change(data):
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value
    return change


@pytest.mark.parametrize("change, redigest, message", [
    (_set("decision", "threshold", 0.01), False, "changed after export"),
    (_set("classes", ["right", "left"]), False, "changed after export"),
    (_set("metadata_version", 2), True, "metadata version 2; this perceiver-med reads version 1"),
    (_set("input_version", 1), True, "input version 1"),
    (_set("input", "size", 64), True, "input does not describe the preprocessing"),
    (_set("preprocess", "channels", 2), True, "channels must be 1 or 3"),
    (_set("decision", "temperature", -1.0), True, "decision.temperature must be"),
])
def test_an_edited_or_unknown_metadata_field_is_refused(perceiver_export, knee, run_cli, tmp_path, change, redigest,
                                                        message):
    _, path, _ = perceiver_export
    edited = tmp_path / "edited.onnx"
    _edit_metadata(path, edited, change, redigest)
    code, out, err = run_cli("predict", edited, knee / "data", "--out", tmp_path / "p.csv")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and not (tmp_path / "p.csv").exists()


def test_an_onnx_file_without_our_metadata_and_a_file_that_is_not_onnx_are_refused(perceiver_export, knee, run_cli,
                                                                                   tmp_path):
    _, path, _ = perceiver_export
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "bare.onnx"))
    code, _, err = run_cli("predict", tmp_path / "bare.onnx", knee / "data", "--out", tmp_path / "p.csv")
    assert code == 2 and "without perceiver-med's metadata" in err, err
    (tmp_path / "notes.onnx").write_text("not a model")
    code, _, err = run_cli("predict", tmp_path / "notes.onnx", knee / "data", "--out", tmp_path / "p.csv")
    assert code == 2 and "is not an ONNX model ONNX Runtime can load" in err and "ONNXRuntimeError" not in err, err
    assert not (tmp_path / "p.csv").exists()


def test_scans_of_another_kind_and_tta_are_refused_as_predict_run_refuses_them(perceiver_export, run_cli, tmp_path):
    _, path, _ = perceiver_export
    write_series(tmp_path / "ct" / "series", index_volume())  # a CT volume for a model of 2D radiographs
    code, _, err = run_cli("predict", path, tmp_path / "ct", "--out", tmp_path / "p.csv")
    assert code == 2 and "suits this run" in err and "trained on 2D images" in err, err
    code, _, err = run_cli("predict", path, tmp_path / "ct", "--out", tmp_path / "p.csv", "--tta", 2)
    assert code == 2 and "--tta needs the run directory" in err, err


def test_a_graph_that_is_not_the_runs_model_fails_the_export_check(perceiver_export):
    """The check compares ONNX Runtime with PyTorch: another run's graph on the same inputs differs."""
    from perceiver_med.results.onnx_export import verify_graph

    run, path, _ = perceiver_export
    inputs = _val_inputs(run)
    other = 1.0 - Predictor(run, "cpu").probabilities(inputs)  # what a model with the classes swapped would say
    with pytest.raises(UserError, match="differ from PyTorch's"):
        verify_graph(path.read_bytes(), inputs, other, "val")
    assert verify_graph(path.read_bytes(), inputs, Predictor(run, "cpu").probabilities(inputs)).samples == len(inputs)


def test_export_refuses_an_existing_output_and_writes_nothing_inside_the_run(perceiver_export, run_cli, tmp_path):
    run, path, _ = perceiver_export
    before = sorted(p.name for p in run.iterdir())
    code, _, err = run_cli("export", run, "--out", path)
    assert code == 2 and "already exists" in err, err
    code, _, err = run_cli("export", run, "--out", run / "model.onnx")
    assert code == 2 and "inside the run directory" in err, err
    code, _, err = run_cli("export", run, "--format", "tflite", "--out", tmp_path / "m.tflite")
    assert code == 2 and "--format" in err, err
    assert sorted(p.name for p in run.iterdir()) == before and list(tmp_path.iterdir()) == []
