"""Number options have ranges, shared by the command line (shown in --help) and config.json; a request is sized
before it is allocated; workers are capped at the cores; a repeated point is prepared once. Through the installed
command, where users meet them."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import installed_command

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy_runs"
KNEE_SPLITS = LEGACY / "data" / "knee" / "splits.csv"


@pytest.mark.parametrize("args, option", [
    (["train", KNEE_SPLITS, "--num-latents", "100000000"], "--num-latents"),
    (["train", KNEE_SPLITS, "--seed", "-1"], "--seed"),
    (["train", KNEE_SPLITS, "--seed", "99999999999999999999"], "--seed"),
    (["train", KNEE_SPLITS, "--batch-size", "100000000"], "--batch-size"),
    (["split", LEGACY / "data" / "knee" / "scans", "--seed", "-1"], "--seed"),
    (["synth", "knee", "--patients", "2", "--seed", "-1"], "--seed"),
])
def test_a_number_option_out_of_its_range_is_one_line_naming_it(args, option, tmp_path, run_installed):
    out = tmp_path / "out"
    command = [*args[:2], out, *args[2:]] if args[0] == "synth" else [*args, "--out", out]

    code, stdout, err = run_installed(*command)

    assert code == 2, (stdout, err)
    assert err.count("\n") == 1 and "Traceback" not in err and option in err, err
    assert not out.exists()


def test_help_shows_the_ranges(run_installed):
    code, out, _ = run_installed("train", "--help")
    assert code == 0
    flat = " ".join(out.split())
    assert "0<=x<=4294967295" in flat and "1<=x<=4096" in flat


def test_a_model_too_big_for_this_machine_is_refused_with_its_size_before_it_is_built(tmp_path, run_installed):
    code, out, err = run_installed("train", KNEE_SPLITS, "--out", tmp_path / "run", "--model", "vit-rollout-cnn",
                                   "--dim", "4096", "--depth", "64", "--epochs", "1", "--device", "cpu")

    assert code == 2, (out, err)
    assert err.count("\n") == 1 and "12,888,909,942 parameters" in err and "GB" in err, err
    assert not (tmp_path / "run").exists()


def test_a_config_json_holds_the_model_options_to_the_same_ranges(tmp_path, run_installed):
    run = tmp_path / "run"
    shutil.copytree(LEGACY / "runs" / "knee-perceiver", run)
    config = json.loads((run / "config.json").read_text())
    config["model"]["num_latents"] = 100_000_000
    (run / "config.json").write_text(json.dumps(config))

    code, out, err = run_installed("predict", run, LEGACY / "data" / "knee" / "scans", "--out", tmp_path / "p.csv",
                                   "--device", "cpu")

    assert code == 2, (out, err)
    assert err.count("\n") == 1 and "num_latents must be from 1 to 4096" in err, err


def _descendants(pid: int) -> set[int]:
    found, queue = set(), [pid]
    while queue:
        parent = queue.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            if child not in found:
                found.add(child)
                queue.append(child)
    return found


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="counts processes through Linux's /proc")
def test_prepare_starts_no_more_workers_than_cores(tmp_path):
    cores = len(os.sched_getaffinity(0))
    environment = {**os.environ, "PERCEIVER_MED_CACHE": str(tmp_path / "cache")}
    process = subprocess.Popen([installed_command(), "prepare", KNEE_SPLITS, "--workers", "1000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    most = 0
    while process.poll() is None:
        most = max(most, len(_descendants(process.pid)))
        time.sleep(0.02)
    out, err = process.communicate()

    assert process.returncode == 0, err
    assert "46 scan(s) ready" in " ".join(out.split())
    assert 1 <= most <= cores + 2, most  # the workers, the forkserver and multiprocessing's resource tracker


def test_a_repeated_point_is_prepared_and_predicted_once(tmp_path, run_installed):
    run = tmp_path / "run"
    shutil.copytree(LEGACY / "runs" / "lung-points-perceiver", run)
    with open(LEGACY / "expected" / "lung-points-perceiver" / "predict.csv", newline="") as handle:
        expected = list(csv.DictReader(handle))[:2]
    rows = [",".join([str(LEGACY / "data" / "lung" / e["path"]), e["coordX"], e["coordY"], e["coordZ"]])
            for e in expected]
    points = tmp_path / "points.csv"
    points.write_text("path,coordX,coordY,coordZ\n" + f"{rows[0]}\n" * 500 + f"{rows[1]}\n" + f"{rows[0]}\n")

    code, out, err = run_installed("predict", run, LEGACY / "data" / "lung" / "scans", "--points", points,
                                   "--out", tmp_path / "p.csv", "--device", "cpu")

    assert code == 0, err
    with open(tmp_path / "p.csv", newline="") as handle:
        got = list(csv.DictReader(handle))
    assert len(got) == 2
    for row, want in zip(got, expected):
        assert abs(float(row["prob_malignant"]) - float(want["prob_malignant"])) < 1e-6
    assert "500 point row(s) skipped" in " ".join(out.split())
    assert "the same point of the same scan as line 2" in " ".join(out.split())
