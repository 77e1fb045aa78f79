"""Preprocessed model inputs on disk, keyed by file identity and preprocessing config.

The cache lives outside every input folder ($PERCEIVER_MED_CACHE, else ~/.cache/perceiver-med);
entries are written under a temporary name and renamed, so parallel workers and interrupted
runs never leave a half-written array behind.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import select
import stat
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from perceiver_med import __version__
from perceiver_med.errors import ScanError, UserError
from perceiver_med.files import atomic_path
from perceiver_med.io import discover
from perceiver_med.io.limits import describe, max_voxels, over_memory, set_max_voxels
from perceiver_med.io.formats import files_of
from perceiver_med.inputs.preprocess import PreprocessConfig, point_inputs, scan_input
from perceiver_med.inputs.samples import Sample


def cache_root() -> Path:
    return Path(os.environ.get("PERCEIVER_MED_CACHE") or Path.home() / ".cache" / "perceiver-med")


def find_scan(path: Path, series_uid: str = ""):
    """The one scan at `path` (a file, or a folder holding a series)."""
    found = discover(path)
    scans = [s for s in found.scans if not series_uid or s.series_uid == series_uid]
    if not scans:
        reason = found.skipped[0].reason if found.skipped else "no scan found"
        raise ScanError(reason if not series_uid else f"series {series_uid} not found")
    if len(scans) > 1 and path.is_dir():
        raise ScanError(f"{len(scans)} scans in this folder: give one scan's file or series folder (in a splits "
                        "file, a series_uid column names one)")
    return scans[0]


BLOCK = 1 << 16


def _file_identity(path: Path) -> tuple:
    """Size, mtime, inode and a hash of the first and last 64 KiB: a same-size rewrite changes the key."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise ScanError("not a regular file")  # opening a named pipe would wait forever
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(BLOCK))
        if info.st_size > 2 * BLOCK:
            handle.seek(-BLOCK, os.SEEK_END)
            digest.update(handle.read(BLOCK))
    return str(path.resolve()), info.st_size, info.st_mtime_ns, info.st_ino, digest.hexdigest()[:16]


def _identity(path: Path, series_uid: str) -> list:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else files_of(path)
    return [series_uid] + [_file_identity(p) for p in files]


# Bump when the same files and config make a different input: 2 = every DICOM path in one orientation
# convention (single files, multi-frame files without positions, InstanceNumber-ordered series).
INPUT_VERSION = 2


def cache_key(sample: Sample, config: PreprocessConfig, identity: list | None = None) -> str:
    """`identity`: `_identity` of the sample's files, when the caller has it already (points of one scan). What
    is known of a sample (label, patient, split) is no part of its input."""
    point = None if sample.point is None else [float(v) for v in sample.point]
    blob = json.dumps([__version__, INPUT_VERSION, asdict(config), sample.slice, point,
                       identity if identity is not None else _identity(sample.path, sample.series_uid)])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _valid_entry(array: np.ndarray, config: PreprocessConfig) -> bool:
    """A cache entry is used only if it is exactly what preprocessing makes: shape, dtype, finite, in [0, 1]."""
    return (array.shape == config.output_shape and array.dtype == np.float32 and bool(np.isfinite(array).all())
            and float(array.min(initial=0.0)) >= 0.0 and float(array.max(initial=0.0)) <= 1.0)


def _load_entry(entry: Path, config: PreprocessConfig) -> np.ndarray | None:
    try:
        array = np.load(entry, allow_pickle=False)
    except Exception:  # empty, truncated or foreign: rebuilt by the caller
        return None
    return array if _valid_entry(array, config) else None


def usable_cache_root() -> Path | None:
    """The cache folder if entries can be written there; None (work without a cache) otherwise."""
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".probe."):
            pass
    except OSError:
        return None
    return root


def prepare(sample: Sample, config: PreprocessConfig, root: Path | None = None,
            use_cache: bool = True) -> np.ndarray:
    """The model input of one sample, from the cache when a sound entry is there."""
    entry = None
    if use_cache:
        entry = (root or cache_root()) / f"{cache_key(sample, config)}.npy"
        if entry.exists():
            cached = _load_entry(entry, config)
            if cached is not None:
                return cached
    tensor = scan_input(find_scan(sample.path, sample.series_uid), config, sample.slice,  # reads only the slices used
                        sample.point)
    _store(entry, tensor)
    return tensor


def _store(entry: Path | None, tensor: np.ndarray) -> None:
    if entry is not None:
        try:
            with atomic_path(entry, suffix=".npy") as temp:
                np.save(temp, tensor)
        except OSError:
            pass  # a full or read-only cache costs speed, never the result


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ScanError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "not enough memory to read this scan"
    return f"could not be prepared ({type(exc).__name__}: {describe(exc)})"


def _prepare_or_reason(args) -> tuple[np.ndarray | None, str]:
    """Every failure of one scan becomes its reason, so one scan can never stop or stall the others."""
    sample, config, root, use_cache = args
    try:
        return prepare(sample, config, root, use_cache), ""
    except Exception as exc:
        return None, _reason(exc)


def _prepare_points_or_reasons(args) -> list[tuple[np.ndarray | None, str]]:
    """The point grids of one scan (samples of one path and series): its files are identified, found and
    decoded once for all the points not in the cache. A failure is the reason of every point it concerns."""
    samples, config, root, use_cache = args
    results: list[tuple[np.ndarray | None, str] | None] = [None] * len(samples)
    entries: list[Path | None] = [None] * len(samples)
    try:
        if use_cache:
            identity = _identity(samples[0].path, samples[0].series_uid)
            for n, sample in enumerate(samples):
                entries[n] = (root or cache_root()) / f"{cache_key(sample, config, identity)}.npy"
                cached = _load_entry(entries[n], config) if entries[n].exists() else None
                if cached is not None:
                    results[n] = (cached, "")
        missing = [n for n, result in enumerate(results) if result is None]
        if missing:
            scan = find_scan(samples[0].path, samples[0].series_uid)
            for n, grid in zip(missing, point_inputs(scan, config, [samples[n].point for n in missing])):
                if isinstance(grid, ScanError):
                    results[n] = (None, str(grid))
                else:
                    _store(entries[n], grid)
                    results[n] = (grid, "")
    except Exception as exc:
        reason = _reason(exc)
        results = [result or (None, reason) for result in results]
    return results


def _prepare_job(args) -> list[tuple[np.ndarray | None, str]]:
    samples, config, root, use_cache = args
    if config.kind.takes_points:
        return _prepare_points_or_reasons(args)
    return [_prepare_or_reason((samples[0], config, root, use_cache))]


def _jobs(samples: list[Sample], config: PreprocessConfig) -> list[list[int]]:
    """Indices of the samples each job prepares: one scan's points together, any other sample alone."""
    if not config.kind.takes_points:
        return [[k] for k in range(len(samples))]
    groups: dict[tuple, list[int]] = {}
    for k, sample in enumerate(samples):
        groups.setdefault((str(sample.path), sample.series_uid), []).append(k)
    return list(groups.values())


def _worker_start(parent: int, budget: int) -> None:
    """Workers read with the voxel budget of the process that started them, use one thread each, and end when
    that process ends (even by kill -9)."""
    import torch

    set_max_voxels(budget)
    torch.set_num_threads(1)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(pid: int) -> None:
    try:
        handle = os.pidfd_open(pid)  # Linux: readable once the process has ended
        select.select([handle], [], [])
    except (AttributeError, OSError):  # elsewhere, or already gone: ask every second
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                pass
            time.sleep(1.0)
    os._exit(1)


def _pool_context():
    # Never fork a process whose torch/BLAS threads may hold locks (a forked worker can wait forever):
    # forkserver starts workers from a clean server process; spawn where forkserver does not exist.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if "forkserver" in methods:
        context.set_forkserver_preload(["perceiver_med.inputs.cache"])
    return context


def worker_count(asked: int = 0) -> int:
    """Processes to prepare inputs with: as asked (0: one per core, up to 8), never more than the cores this process
    may run on, where more would only wait for each other and each holds a decoded scan in memory."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(asked or 8, cores))


def prepare_many(samples: list[Sample], config: PreprocessConfig, workers: int = 0,
                 use_cache: bool = True, on_done: Callable[[int, int], None] | None = None
                 ) -> tuple[list[np.ndarray | None], list[str]]:
    """Prepare many samples in parallel processes. Returns arrays (None where a sample failed) and reasons.

    `on_done(done, total)` reports progress. A worker that dies (killed, out of memory) costs the scans it
    held a retry in a fresh pool, never a hang. The points of one scan are one job (see point_inputs). A sample
    repeated (the same point ten thousand times) is prepared once, and its rows share one array. The memory the
    inputs take together is estimated first, and a request over the budget is refused before any scan is read.
    """
    problem = over_memory(len(samples) * int(np.prod(config.output_shape)) * 4,
                          f"{len(samples):,} model inputs of shape {'x'.join(map(str, config.output_shape))}")
    if problem:
        raise UserError(f"{problem}: give fewer scans or points at a time, or a smaller --size")
    first = {}
    for sample in samples:
        first.setdefault(sample.key, sample)
    if len(first) < len(samples):
        arrays, reasons = prepare_many(list(first.values()), config, workers, use_cache, on_done)
        index = {key: k for k, key in enumerate(first)}
        return ([arrays[index[s.key]] for s in samples], [reasons[index[s.key]] for s in samples])
    root = usable_cache_root() if use_cache else None
    groups = _jobs(samples, config)
    jobs = [(tuple(samples[k] for k in group), config, root, root is not None) for group in groups]
    workers = worker_count(workers)
    results: list[tuple[np.ndarray | None, str] | None] = [None] * len(samples)
    done = 0

    def finish(job, job_results):
        nonlocal done
        for index, result in zip(groups[job], job_results):
            results[index] = result
            done += 1
            if on_done:
                on_done(done, len(samples))

    if workers <= 1 or len(jobs) < 16:
        for job in range(len(jobs)):
            finish(job, _prepare_job(jobs[job]))
    else:
        for _attempt in range(2):
            pending = [g for g, group in enumerate(groups) if any(results[k] is None for k in group)]
            if not pending:
                break
            with ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=_pool_context(),
                                     initializer=_worker_start, initargs=(os.getpid(), max_voxels())) as pool:
                futures = {pool.submit(_prepare_job, jobs[g]): g for g in pending}
                for future in as_completed(futures):
                    try:
                        finish(futures[future], future.result())
                    except BrokenProcessPool:
                        continue
        # workers import the script that started them: without a __main__ guard it runs again there and they die
        died = (None, "a preprocessing worker died while reading this scan (out of memory, or a script that calls "
                      "perceiver-med outside `if __name__ == \"__main__\":`)")
        for job, group in enumerate(groups):
            if results[group[0]] is None:  # a job's results come back together, or not at all
                finish(job, [died] * len(group))
    return [array for array, _ in results], [reason for _, reason in results]
