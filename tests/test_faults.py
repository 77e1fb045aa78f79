"""Faults around the work: killed processes, full disks, unwritable folders. Nothing is lost or left behind."""
import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from perceiver_med.errors import UserError
from perceiver_med.files import atomic_text
from tests.conftest import installed_command


def _children(pid: int) -> set[int]:
    """Every descendant of `pid` (Linux /proc)."""
    found, frontier = set(), {pid}
    while frontier:
        parents, frontier = frontier, set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) in parents and int(entry.name) not in found:
                found.add(int(entry.name))
                frontier.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_preprocessing_workers_die_with_a_killed_predict(tiny_run, tmp_path):
    from PIL import Image

    scans = tmp_path / "scans"
    scans.mkdir()
    picture = (np.random.default_rng(0).random((3000, 3000)) * 255).astype(np.uint8)
    for k in range(24):  # large enough that preprocessing lasts seconds, in a pool of worker processes
        Image.fromarray(np.roll(picture, k, axis=1)).save(scans / f"knee_{k:02d}.png", compress_level=0)
    env = {**os.environ, "PERCEIVER_MED_CACHE": str(tmp_path / "cache")}
    process = subprocess.Popen([installed_command(), "predict", str(tiny_run.run), str(scans), "--out",
                                str(tmp_path / "p.csv")], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    workers, deadline = set(), time.monotonic() + 120
    while len(workers) < 2 and time.monotonic() < deadline and process.poll() is None:
        workers = _children(process.pid)
        time.sleep(0.05)
    assert len(workers) >= 2, "the pool never started"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if _alive(pid)], "workers outlived their parent"
    assert not (tmp_path / "p.csv").exists()


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path):
    def write(handle):
        handle.write("path,pred\n")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match="disk is full"):
        atomic_text(tmp_path / "predictions.csv", write)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_output_folder_is_refused_before_any_work(run_installed, tiny_run, knee, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    started = time.monotonic()
    code, out, err = run_installed("predict", tiny_run.run, knee / "data", "--out", blocker / "sub" / "p.csv")
    assert code == 2 and "cannot write" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert "prediction" not in out  # refused before predicting
    assert time.monotonic() - started < 60
    code, _, err = run_installed("train", knee / "splits.csv", "--out", blocker / "run")
    assert code == 2 and "cannot write" in err and "Traceback" not in err
