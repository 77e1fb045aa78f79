"""Ingest throughput: scans per second from a folder of DICOM series to model inputs, cold and cached.

    python benchmarks/bench_ingest.py --json ingest.json [--patients 40] [--workers 0]

Writes a synthetic lung set (DICOM series, files shuffled), then prepares every scan as a 3x3 grid
twice: once into an empty cache (read, decode, window, resize, tile, write) and once from the cache.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        os.environ["PERCEIVER_MED_CACHE"] = str(temp / "cache")
        from perceiver_med.cache import InputRequest, prepare_many
        from perceiver_med.io import discover
        from perceiver_med.preprocess import PreprocessConfig
        from perceiver_med.synth import synth

        started = time.perf_counter()
        data, _ = synth("lung", temp / "lung", args.patients, "dicom", 0)
        synth_seconds = time.perf_counter() - started
        started = time.perf_counter()
        found = discover(data)
        discover_seconds = time.perf_counter() - started
        files = sum(len(scan.files) for scan in found.scans)
        requests = [InputRequest(scan.path, scan.series_uid) for scan in found.scans]
        config = PreprocessConfig(input="grid", size=64)
        timings = {}
        for phase in ("cold", "warm"):
            started = time.perf_counter()
            arrays, reasons = prepare_many(requests, config, args.workers)
            timings[phase] = time.perf_counter() - started
            assert all(a is not None for a in arrays), reasons
    result = {
        "benchmark": "ingest", "scans": len(requests), "files": files, "patients": args.patients,
        "input": "grid 3x3 of 64x64 tiles from 20-slice 80x80 CT series", "workers": args.workers or os.cpu_count(),
        "cold_seconds": round(timings["cold"], 3), "warm_seconds": round(timings["warm"], 3),
        "cold_scans_per_second": round(len(requests) / timings["cold"], 2),
        "warm_scans_per_second": round(len(requests) / timings["warm"], 2),
        "cold_files_per_second": round(files / timings["cold"], 1),
        "discover_files_per_second": round(files / discover_seconds, 1),
        "synth_seconds": round(synth_seconds, 2), "cpus": os.cpu_count(), "python": platform.python_version(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
