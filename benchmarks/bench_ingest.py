"""Ingest throughput: scans per second from a folder of DICOM series to model inputs, cold and cached; points per
second for grids centred on nodule points.

    python benchmarks/bench_ingest.py --json ingest.json [--patients 40] [--workers 0]
        [--sections scans,points] [--point-patients 10]

scans: writes a synthetic lung set (DICOM series, files shuffled), then prepares every scan as a 3x3 grid
twice: once into an empty cache (read, decode, window, resize, tile, write) and once from the cache.
points: writes `synth lung --points` sets (DICOM series and NIfTI, 1-4 nodules per patient, 40-120 slices),
then prepares every point of points.csv as a point grid (9 planes 2 mm apart, 40 mm squares), cold and cached.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    parser.add_argument("--sections", default="scans,points", help="scans, points, or both (comma-separated)")
    parser.add_argument("--point-patients", type=int, default=10, help="patients of each points set")
    args = parser.parse_args()
    sections = args.sections.split(",")
    result = scans_benchmark(args) if "scans" in sections else {"benchmark": "ingest"}
    if "points" in sections:
        result["points"] = {fmt: points_benchmark(args, fmt) for fmt in ("dicom", "nifti")}
    result.update(cpus=os.cpu_count(), python=platform.python_version(), load_average=os.getloadavg()[0])
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


def scans_benchmark(args) -> dict:
    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        os.environ["PERCEIVER_MED_CACHE"] = str(temp / "cache")
        from perceiver_med.inputs.cache import prepare_many
        from perceiver_med.inputs.preprocess import PreprocessConfig
        from perceiver_med.inputs.samples import Sample
        from perceiver_med.io import discover
        from perceiver_med.synth.phantoms import synth

        started = time.perf_counter()
        data, _ = synth("lung", temp / "lung", args.patients, "dicom", 0)
        synth_seconds = time.perf_counter() - started
        started = time.perf_counter()
        found = discover(data)
        discover_seconds = time.perf_counter() - started
        files = sum(len(scan.files) for scan in found.scans)
        samples = [Sample.of(scan) for scan in found.scans]
        config = PreprocessConfig(input="grid", size=64)
        timings = cold_and_warm(prepare_many, samples, config, args.workers)
    return {
        "benchmark": "ingest", "scans": len(samples), "files": files, "patients": args.patients,
        "input": "grid 3x3 of 64x64 tiles from 20-slice 80x80 CT series", "workers": args.workers or os.cpu_count(),
        "cold_seconds": round(timings["cold"], 3), "warm_seconds": round(timings["warm"], 3),
        "cold_scans_per_second": round(len(samples) / timings["cold"], 2),
        "warm_scans_per_second": round(len(samples) / timings["warm"], 2),
        "cold_files_per_second": round(files / timings["cold"], 1),
        "discover_files_per_second": round(files / discover_seconds, 1),
        "synth_seconds": round(synth_seconds, 2),
    }


def cold_and_warm(prepare_many, samples, config, workers: int) -> dict[str, float]:
    """Seconds to prepare every sample from the files (cold), then again from the cache (warm)."""
    timings = {}
    for phase in ("cold", "warm"):
        started = time.perf_counter()
        arrays, reasons = prepare_many(samples, config, workers)
        timings[phase] = time.perf_counter() - started
        assert all(a is not None for a in arrays), reasons
    return timings


def points_benchmark(args, fmt: str) -> dict:
    """Points per second of `prepare` for point grids, from cold files and from the cache."""
    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        os.environ["PERCEIVER_MED_CACHE"] = str(temp / "cache")
        from perceiver_med.inputs.cache import prepare, prepare_many
        from perceiver_med.io import discover, read_scan
        from perceiver_med.inputs.points import match_points, read_points
        from perceiver_med.inputs.preprocess import PreprocessConfig
        from perceiver_med.synth.nodules import write_points

        write_points(temp, args.point_patients, fmt, seed=0)
        found = discover(temp / "scans")
        samples, skipped = match_points(read_points(temp / "points.csv"), found)
        assert not skipped, skipped
        config = PreprocessConfig(input="point", size=64)
        timings = cold_and_warm(prepare_many, samples, config, args.workers)
        # what prepare_many did before it grouped a scan's points: find, read and window the scan for every point
        started = time.perf_counter()
        for sample in samples:
            prepare(sample, config, use_cache=False)
        timings["alone"] = time.perf_counter() - started
        pointed = {(s.path, s.series_uid) for s in samples}
        scans = [scan for scan in found.scans if (scan.path, scan.series_uid) in pointed]
        started = time.perf_counter()
        voxels = sum(read_scan(scan).voxels.size for scan in scans)  # the reference: every volume read once, whole
        whole_seconds = time.perf_counter() - started
    return {
        "format": fmt, "patients": args.point_patients, "scans": len(scans), "points": len(samples),
        "input": "point grid: 9 planes 2 mm apart, 40 mm squares, 64x64 tiles",
        # prepare_many makes a scan's points one job, and works in the calling process below 16 jobs
        "workers": (args.workers or min(os.cpu_count() or 1, 8)) if len(scans) >= 16 else 1,
        "mean_slices_per_scan": round(float(np.mean([scan.shape[0] for scan in scans])), 1),
        "cold_seconds": round(timings["cold"], 3), "warm_seconds": round(timings["warm"], 3),
        "cold_points_per_second": round(len(samples) / timings["cold"], 2),
        "warm_points_per_second": round(len(samples) / timings["warm"], 1),
        "cold_one_point_at_a_time_points_per_second": round(len(samples) / timings["alone"], 2),
        "read_every_volume_whole_once_seconds": round(whole_seconds, 3),
        "voxels_per_scan": int(voxels / len(scans)),
    }


if __name__ == "__main__":
    sys.exit(main())
