"""What `perceiver-med report` adds to a demo-sized run: seconds of write_report, against the demo's own time.

    python benchmarks/bench_report.py [--epochs 2] [--json report.json]
    python benchmarks/bench_report.py --run RUN        # an existing run (e.g. demo-output/run)

Without --run it builds the demo's data set (60 phantom knee patients, PNG, the demo's seed and Perceiver) and
trains it for --epochs epochs only: the report's cost does not depend on the epochs, and a barely trained model
makes errors, so the failure gallery (the report's dearest part) is drawn. The demo's 40-epoch time is then
estimated from the measured time per epoch. The report is written twice: cold (first imports, matplotlib's
font cache) and warm. Prints JSON.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

DEMO_EPOCHS = 40  # perceiver-med demo's default


def _demo_run(folder: Path, epochs: int) -> tuple[Path, dict]:
    from perceiver_med.workflows.folders import split_folder
    from perceiver_med.training.config import Runtime
    from perceiver_med.workflows.train import TrainRequest, train
    from perceiver_med.synth.phantoms import synth

    started = time.perf_counter()
    data, _ = synth("knee", folder / "knee", 60, "png", 0)
    split_folder(data, folder / "splits.csv", seed=0)
    train(TrainRequest(folder / "splits.csv", folder / "run", "perceiver", {"epochs": epochs, "seed": 0},
                       Runtime(device="cpu", precision="fp32")))
    seconds = time.perf_counter() - started
    with open(folder / "run" / "history.csv", newline="") as handle:
        per_epoch = [float(row["seconds"]) for row in csv.DictReader(handle)]
    mean_epoch = sum(per_epoch) / len(per_epoch)
    return folder / "run", {"epochs_trained": len(per_epoch), "pipeline_seconds": round(seconds, 2),
                            "seconds_per_epoch": round(mean_epoch, 2),
                            "demo_seconds_estimate": round(seconds - sum(per_epoch) + DEMO_EPOCHS * mean_epoch, 1)}


def _bootstrap_seconds(run: Path) -> dict:
    """Seconds of the scoring `train` does after training (intervals from 1,000 patient resamples, calibration,
    patient level) for every split of the run, from its own predictions files."""
    import numpy as np

    from perceiver_med.run.rundir import RunDir
    from perceiver_med.results.scoring import score_split

    config = RunDir.open(run).config()
    rows = RunDir(run).frozen_rows(config)
    started, samples = time.perf_counter(), 0
    for split in ("train", "val", "test"):
        with open(run / f"predictions_{split}.csv", newline="") as handle:
            table = list(csv.DictReader(handle))
        split_rows = [row for row in rows if row.split == split][:len(table)]
        labels = np.array([config.classes.index(row["label"]) for row in table])
        probs = np.array([[float(row[f"prob_{c}"]) for c in config.classes] for row in table])
        score_split(labels, probs, split_rows, config)
        samples += len(table)
    return {"bootstrap_seconds": round(time.perf_counter() - started, 3), "bootstrap_samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="report this run instead of building a demo-sized one")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        os.environ.setdefault("PERCEIVER_MED_CACHE", str(temp / "cache"))
        import torch

        from perceiver_med.results.report import write_report

        run, demo = (args.run, {}) if args.run else _demo_run(temp, args.epochs)
        timings = []
        for attempt in ("cold", "warm"):
            started = time.perf_counter()
            html = write_report(run, temp / attempt / "report.html")
            timings.append(time.perf_counter() - started)
        errors = len(list((temp / "warm" / "report_files").glob("error_*.png")))
        with open(run / "predictions_test.csv", newline="") as handle:
            wrong = sum(row["pred"] != row.get("label", row["pred"]) for row in csv.DictReader(handle))
        scoring = _bootstrap_seconds(run)
        result = {"benchmark": "report", **scoring, "report_seconds_cold": round(timings[0], 2),
                  "report_seconds_warm": round(timings[1], 2), "html_bytes": html.stat().st_size,
                  "test_errors": wrong, "gallery_images": errors, **demo,
                  "platform": {"python": platform.python_version(), "torch": torch.__version__,
                               "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
                               "machine": platform.machine()}}
        if demo:
            result["report_fraction_of_demo"] = round(timings[0] / demo["demo_seconds_estimate"], 4)
            result["bootstrap_fraction_of_demo"] = round(scoring["bootstrap_seconds"] / demo["demo_seconds_estimate"],
                                                         4)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
