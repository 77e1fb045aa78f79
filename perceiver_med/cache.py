"""Preprocessed model inputs on disk, keyed by file identity and preprocessing config.

The cache lives outside every input folder ($PERCEIVER_MED_CACHE, else ~/.cache/perceiver-med);
entries are written under a temporary name and renamed, so parallel workers and interrupted
runs never leave a half-written array behind.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from perceiver_med import __version__
from perceiver_med.errors import ScanError
from perceiver_med.files import atomic_path
from perceiver_med.io import discover, read_scan
from perceiver_med.preprocess import PreprocessConfig, model_input


def cache_root() -> Path:
    return Path(os.environ.get("PERCEIVER_MED_CACHE") or Path.home() / ".cache" / "perceiver-med")


@dataclass(frozen=True)
class InputRequest:
    """Which scan to prepare: a file, or a series folder plus its SeriesInstanceUID."""

    path: Path
    series_uid: str = ""
    slice: int | None = None


def find_scan(path: Path, series_uid: str = ""):
    """The one scan at `path` (a file, or a folder holding a series)."""
    found = discover(path)
    scans = [s for s in found.scans if not series_uid or s.series_uid == series_uid]
    if not scans:
        reason = found.skipped[0].reason if found.skipped else "no scan found"
        raise ScanError(reason if not series_uid else f"series {series_uid} not found")
    if len(scans) > 1 and path.is_dir():
        raise ScanError(f"{len(scans)} scans in this folder: name one with a series_uid column")
    return scans[0]


def _identity(path: Path, series_uid: str) -> list:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [series_uid] + [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def cache_key(request: InputRequest, config: PreprocessConfig) -> str:
    blob = json.dumps([__version__, config.to_dict(), request.slice, _identity(request.path, request.series_uid)])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def prepare(request: InputRequest, config: PreprocessConfig, root: Path | None = None,
            use_cache: bool = True) -> np.ndarray:
    """The model input for one scan, from the cache when it is there."""
    entry = None
    if use_cache:
        entry = (root or cache_root()) / f"{cache_key(request, config)}.npy"
        if entry.exists():
            try:
                return np.load(entry)
            except (OSError, ValueError):
                pass  # a damaged entry is rebuilt below
    array, meta = read_scan(find_scan(request.path, request.series_uid))
    tensor = model_input(array, meta, config, request.slice)
    if entry is not None:
        with atomic_path(entry, suffix=".npy") as temp:
            np.save(temp, tensor)
    return tensor


def _prepare_or_reason(args) -> tuple[np.ndarray | None, str]:
    request, config, root, use_cache = args
    try:
        return prepare(request, config, root, use_cache), ""
    except ScanError as exc:
        return None, str(exc)


def prepare_many(requests: list[InputRequest], config: PreprocessConfig, workers: int = 0,
                 use_cache: bool = True, on_done: Callable[[], None] | None = None
                 ) -> tuple[list[np.ndarray | None], list[str]]:
    """Prepare many scans in parallel processes. Returns arrays (None where a scan failed) and reasons."""
    root = cache_root()
    jobs = [(request, config, root, use_cache) for request in requests]
    workers = workers or min(os.cpu_count() or 1, 8)
    results = []
    if workers <= 1 or len(jobs) < 16:
        for job in jobs:
            results.append(_prepare_or_reason(job))
            if on_done:
                on_done()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(_prepare_or_reason, jobs, chunksize=max(1, len(jobs) // (workers * 8))):
                results.append(result)
                if on_done:
                    on_done()
    return [array for array, _ in results], [reason for _, reason in results]
