"""Prediction throughput of an exported model in ONNX Runtime against the run's PyTorch Predictor, on the CPU.

    python benchmarks/bench_onnx.py [--models perceiver,vit-rollout-cnn,cnn] [--points] [--repeats 5]
                                    [--threads N] [--json onnx.json]

Trains each model for one epoch on a phantom (throughput does not depend on the weights) with train's defaults:
knee radiographs as 64x64 images (60 patients, the demo's set), and with --points, nodule points of phantom chest
CTs as point grids (3x3 tiles of 64x64: 192x192; 10 patients). Each run is exported (`export_run`, which
verifies it), then the same batch of the run's own prepared inputs goes through, alternately: the Predictor at
the run's precision ("auto": bf16 autocast on a CPU with bf16 units, what `predict RUN` does), the Predictor in
fp32, and the OnnxPredictor (what `predict model.onnx` does; fp32). Preprocessing is left out: it is the same
code for both. Rates are the batch over the median of --repeats timed passes after one warm-up; ratios are the
medians of the paired passes' ratios. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _train(folder: Path, splits: Path, name: str, model: str, options: dict) -> Path:
    from perceiver_med.training.config import Runtime
    from perceiver_med.workflows.train import TrainRequest, train

    return train(TrainRequest(splits, folder / f"run-{name}", model, {"epochs": 1, "patience": 0, **options},
                              Runtime(device="cpu"))).run


def _knee(folder: Path) -> Path:
    from perceiver_med.synth.phantoms import synth
    from perceiver_med.workflows.folders import split_folder

    data, _ = synth("knee", folder / "knee", 60, "png", 0)
    split_folder(data, folder / "knee-splits.csv", seed=0)
    return folder / "knee-splits.csv"


def _lung_points(folder: Path) -> Path:
    from perceiver_med.synth.nodules import write_points
    from perceiver_med.workflows.folders import split_folder

    (folder / "lung").mkdir()
    write_points(folder / "lung", 10, "dicom", seed=0)
    split_folder(folder / "lung" / "scans", folder / "lung-splits.csv", points_csv=folder / "lung" / "points.csv")
    return folder / "lung-splits.csv"


def measure(run: Path, out: Path, batch: int, repeats: int, threads: int = 0) -> dict:
    import numpy as np

    from perceiver_med.inputs.loading import load_inputs
    from perceiver_med.results.onnx_export import ExportRequest, export_run
    from perceiver_med.run.onnx_model import OnnxPredictor
    from perceiver_med.run.predictor import Predictor
    from perceiver_med.training.engine import native_cpu_bf16, predict_probs

    started = time.perf_counter()
    exported = export_run(ExportRequest(run, out))
    export_seconds = time.perf_counter() - started
    torch_predictor = Predictor(run, "cpu")
    config = torch_predictor.config
    rows = torch_predictor.run.frozen_rows(config)[:batch]
    inputs = load_inputs(rows, config.preprocess).inputs
    onnx_predictor = OnnxPredictor(out, "cpu", threads)
    import torch

    tensor = torch.from_numpy(inputs)
    paths = {
        "pytorch_run_precision": lambda: torch_predictor.probabilities(inputs),
        "pytorch_fp32": lambda: predict_probs(torch_predictor.network().forward, tensor, torch.device("cpu"),
                                              precision="fp32"),
        "onnxruntime": lambda: onnx_predictor.probabilities(inputs),
    }
    times = {name: [] for name in paths}
    for name, call in paths.items():
        call()
    for _ in range(repeats):  # alternating, so that a neighbour's load falls on every path alike
        for name, call in paths.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    noun = f"{config.preprocess.kind.noun}s_per_second"
    rates = {name: round(len(inputs) / statistics.median(values), 1) for name, values in times.items()}
    ratio = {f"onnxruntime_over_{name}": round(statistics.median(
        [t / o for t, o in zip(times[name], times["onnxruntime"])]), 2) for name in paths if name != "onnxruntime"}
    difference = float(np.abs(onnx_predictor.probabilities(inputs) - paths["pytorch_fp32"]()).max())
    return {"model": config.model["name"], "input": config.preprocess.input,
            "input_shape": list(config.preprocess.output_shape), "batch": len(inputs),
            "run_precision": config.train.precision, "bf16_autocast_at_run_precision": native_cpu_bf16()
            and config.train.precision == "auto",
            noun: rates, "ratios": ratio, "seconds": {k: [round(v, 4) for v in vs] for k, vs in times.items()},
            "onnx_bytes": out.stat().st_size, "safetensors_bytes": (run / "model.safetensors").stat().st_size,
            "export_seconds_with_verification": round(export_seconds, 1),
            "verified_max_abs_difference": exported.verification.max_abs_difference,
            "max_abs_difference_fp32_on_batch": difference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="perceiver,vit-rollout-cnn,cnn", help="on knee images ('' for none)")
    parser.add_argument("--points", action="store_true", help="also a Perceiver on nodule point grids")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="threads of torch and of ONNX Runtime (0: their "
                        "own defaults, one per core)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        os.environ.setdefault("PERCEIVER_MED_CACHE", str(temp / "cache"))
        import onnxruntime
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)

        result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                              "cores": os.cpu_count(), "torch": torch.__version__, "onnxruntime":
                              onnxruntime.__version__, "torch_threads": torch.get_num_threads(),
                              "onnxruntime_threads": args.threads or "its default, one per core",
                              "load_average_at_start": os.getloadavg()[0]}, "runs": []}
        knee = _knee(temp) if args.models else None
        for model in filter(None, args.models.split(",")):
            run = _train(temp, knee, model, model, {})
            result["runs"].append(measure(run, temp / f"{model}.onnx", args.batch, args.repeats, args.threads))
            print(json.dumps(result["runs"][-1]), file=sys.stderr, flush=True)  # as it comes: runs take minutes
        if args.points:
            run = _train(temp, _lung_points(temp), "points", "perceiver", {})
            result["runs"].append(measure(run, temp / "points.onnx", args.batch, args.repeats, args.threads))
        result["machine"]["load_average_at_end"] = os.getloadavg()[0]
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
