"""Outputs replace only regular files, a second writer of the same new file is refused, and a name the file system
refuses is one line: through the installed command, with the knee fixture run (tests/fixtures/legacy_runs)."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import installed_command

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy_runs"
KNEE_PNG = "OAI9000038_BaseLine_3_de3d1_SAG_3D_DESS_WE_RIGHT.nii.gz_1.png"


@pytest.fixture
def knee_run(tmp_path) -> tuple[Path, Path]:
    run, scans = tmp_path / "run", tmp_path / "scans"
    shutil.copytree(LEGACY / "runs" / "knee-perceiver", run)
    scans.mkdir()
    shutil.copy(LEGACY / "data" / "knee" / "scans" / KNEE_PNG, scans / KNEE_PNG)
    return run, scans


def _node(path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    else:
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # what /dev/null is
        except PermissionError:
            pytest.skip("making a character device needs privileges this test does not have")


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_overwrite_replaces_only_regular_files(kind, knee_run, tmp_path, run_installed):
    run, scans = knee_run
    node = tmp_path / "node"
    _node(node, kind)
    before = os.stat(node)

    code, out, err = run_installed("predict", run, scans, "--out", node, "--overwrite", "--device", "cpu",
                                   timeout=120)

    assert code == 2, (out, err)
    assert err.count("\n") == 1 and "not a regular file" in err, err
    after = os.stat(node)
    assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode) and after.st_ino == before.st_ino


def test_of_two_commands_writing_the_same_new_file_the_second_is_refused(knee_run, tmp_path):
    run, scans = knee_run
    out = tmp_path / "predictions.csv"
    environment = {**os.environ, "PERCEIVER_MED_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}
    command = [installed_command(), "predict", str(run), str(scans), "--out", str(out), "--device", "cpu"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    results = [(p.wait(timeout=300), *p.communicate()) for p in (first, second)]

    codes = sorted(code for code, _, _ in results)
    if codes == [0, 0]:  # only when one finished before the other checked its output: then it was refused upfront
        pytest.fail(f"both wrote {out}: {results}")
    assert codes == [0, 2], results
    refused = next(err for code, _, err in results if code == 2)
    assert refused.count("\n") == 1 and str(out) in refused and "Traceback" not in refused, refused
    assert "already exists" in refused or "created by another writer" in refused
    assert out.read_text().count("\n") == 2  # the header and the one scan: one whole result


def test_a_name_the_file_system_refuses_is_one_line_before_any_work(knee_run, tmp_path, run_installed):
    run, scans = knee_run
    out = tmp_path / ("p" * 300 + ".csv")

    code, stdout, err = run_installed("predict", run, scans, "--out", out, "--device", "cpu")

    assert code == 2, (stdout, err)
    assert err.count("\n") == 1 and "Traceback" not in err and "refuses a name this long (304 bytes)" in err, err
    assert stdout == ""  # refused before a scan was read
