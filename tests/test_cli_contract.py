"""The promises of the command line, through the installed `perceiver-med` in a subprocess, as users run it.

Usage errors, bad paths, damaged or foreign run files, interrupts, locks: an exit code, one line on stderr,
no traceback, and nothing written where it should not be.
"""
import csv
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import installed_command

def one_line(result, code=2):
    """The error contract: the exit code, exactly one line on stderr, no traceback."""
    got, out, err = result
    assert got == code, (got, out[-500:], err[-1500:])
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out, err
    return err


@pytest.fixture
def run(tiny_run):
    return tiny_run.run


def copy_run(run, tmp_path):
    target = tmp_path / "run-copy"
    shutil.copytree(run, target)
    return target


# ---------------------------------------------------------------- usage errors
@pytest.mark.parametrize("args, expected", [
    (["train", "--no-such-option"], "No such option"),
    (["train"], "Missing"),
    (["train", "s.csv", "--out", "r", "--epochs", "abc"], "'--epochs': must be a whole number, not abc"),
    (["train", "s.csv", "--out", "r", "--epochs", "-1"], "'--epochs': must be at least 0, not -1"),
    (["train", "s.csv", "--out", "r", "--batch-size", "0"], "'--batch-size': must be at least 1, not 0"),
    (["train", "s.csv", "--out", "r", "--lr", "nan"], "'--lr': must be at least 0, not nan"),
    (["train", "s.csv", "--out", "r", "--model", "resnet"], "--model"),
    (["-V"], "No such option"),
    (["predict"], "Missing"),
    (["split", "--label-from", "colour"], "--label-from"),
])
def test_usage_errors_are_one_line_with_exit_code_2(run_installed, tmp_path, args, expected):
    err = one_line(run_installed(*args, cwd=tmp_path))
    assert expected in err
    assert list(tmp_path.iterdir()) == []


def test_no_arguments_prints_the_help(run_installed):
    code, out, err = run_installed()
    assert code == 2 and "Usage" in out and "train" in out and "Traceback" not in err


def test_help_shows_defaults_and_choices_not_types(run_installed):
    code, out, _ = run_installed("train", "--help", env={"COLUMNS": "160"})
    assert code == 0
    out = " ".join(out.split())
    assert "<bool>" not in out and "<str>" not in out and "<int>" not in out
    assert "perceiver|vit-rollout-cnn" in out and "auto|cpu|cuda|mps" in out
    for default in ("16", "0.002", "20", "64"):  # batch size, lr, patience, size
        assert f"default: ({default})" in out or f"default: {default}" in out, default


def test_train_help_shows_each_model_option_with_its_default_and_model(run_installed):
    """The options come from the model registry: each names the models that take it and train's default."""
    code, out, _ = run_installed("train", "--help", env={"COLUMNS": "160"})
    out = " ".join(out.split())
    assert code == 0
    assert "--num-latents N latents (perceiver) [default: (64); 1<=x<=4096]" in out
    assert "--depth N ViT blocks (vit-rollout-cnn) [default: (4); 1<=x<=64]" in out
    assert "(perceiver and vit-rollout-cnn) [default: (1); x>=0.0]" in out.replace("- ", "-")  # wrapped at a dash


def test_a_misspelt_model_is_one_line_with_the_nearest_name(run_installed, tmp_path):
    err = one_line(run_installed("train", "s.csv", "--out", "r", "--model", "perciever", cwd=tmp_path))
    assert "--model" in err and "did you mean 'perceiver'" in err and list(tmp_path.iterdir()) == []


def test_choices_accept_any_case(run_installed, knee, tmp_path):
    # the model name is parsed (any case), then the option check refuses a ViT option for the Perceiver
    err = one_line(run_installed("train", knee / "splits.csv", "--out", tmp_path / "r", "--model", "Perceiver",
                                 "--depth", "2"))
    assert "--depth is an option of vit-rollout-cnn, not perceiver" in err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- bad paths and files
def test_bad_paths_get_a_sentence_that_says_what_is_wrong(run_installed, tmp_path, knee, run):
    assert "does not exist" in one_line(run_installed("inspect", tmp_path / "missing"))
    assert "folder" in one_line(run_installed("split", "--check", knee / "data"))
    err = one_line(run_installed("train", knee / "data", "--out", tmp_path / "r"))
    assert "is a folder" in err and f"perceiver-med split {knee / 'data'} --out splits.csv" in err
    points = tmp_path / "points.csv"
    points.write_text("seriesuid,coordX,coordY,coordZ,label,patient_id\n1.2.3,0,0,0,benign,P1\n")
    err = one_line(run_installed("train", points, "--out", tmp_path / "r"))
    assert "is a points file" in err and f"--points {points}" in err
    err = one_line(run_installed("train", knee / "splits.csv", "--out", tmp_path / "r", "--lr", "inf"))
    assert "--lr must be a finite number, not inf" in err and not (tmp_path / "r").exists()
    err = one_line(run_installed("evaluate", run, "--split", "testing"))
    assert "'testing' is not one of 'all', 'train', 'val', 'test'" in err and "Value error" not in err
    semicolons = tmp_path / "semicolons.csv"
    semicolons.write_text((knee / "splits.csv").read_text().replace(",", ";"))
    assert "separated by ';'" in one_line(run_installed("train", semicolons, "--out", tmp_path / "r"))
    err = one_line(run_installed("predict", run, knee / "data", "--out", run / "config.json"))
    assert "run directory" in err
    json.loads((run / "config.json").read_text())  # untouched


def test_a_refused_output_touches_no_input_and_one_scan_is_not_a_folder(run_installed, tmp_path, knee, run):
    data = tmp_path / "data"
    shutil.copytree(knee / "data", data)
    before = (sorted(data.rglob("*")), data.stat().st_mtime_ns)
    assert "inside the input folder" in one_line(run_installed("inspect", data, "--out", data / "f.csv"))
    assert "inside the input folder" in one_line(run_installed("split", data, "--out", data / "s.csv"))
    assert (sorted(data.rglob("*")), data.stat().st_mtime_ns) == before  # not even a temporary file came and went
    scan = next(data.glob("*.png"))  # one scan given: its folder is not an input folder
    code, out, err = run_installed("predict", run, scan, "--out", data / "one.csv")
    assert code == 0 and (data / "one.csv").is_file(), err
    assert "the input scan itself" in one_line(run_installed("predict", run, scan, "--out", scan, "--overwrite"))


def test_outputs_are_not_replaced_unasked(run_installed, tmp_path, knee, run):
    target = tmp_path / "out.csv"
    target.write_text("keep me\n")
    for args in (["inspect", knee / "data", "--out", target], ["split", knee / "data", "--out", target],
                 ["predict", run, knee / "data", "--out", target]):
        assert "already exists" in one_line(run_installed(*args))
        assert target.read_text() == "keep me\n"
    code, _, err = run_installed("predict", run, knee / "data", "--out", target, "--overwrite")
    assert code == 0, err
    assert target.read_text().startswith("path,")


def test_outputs_get_the_mode_the_umask_allows(tmp_path, knee):
    script = ("import os, sys; os.umask(0o022); sys.argv = ['perceiver-med', 'split', sys.argv[1], '--out', "
              "sys.argv[2]]; from perceiver_med.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", script, str(knee / "data"), str(tmp_path / "s.csv")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((tmp_path / "s.csv").stat().st_mode) == 0o644


# ---------------------------------------------------------------- damaged and foreign run files
def test_bit_rotted_weights_are_refused(run_installed, run, knee, tmp_path):
    damaged = copy_run(run, tmp_path)
    data = bytearray((damaged / "model.safetensors").read_bytes())
    header = int.from_bytes(data[:8], "little") + 8
    for offset in range(header, len(data), 4096):
        data[offset] ^= 0x40  # one flipped bit per 4 KiB of tensor data: still a valid file
    (damaged / "model.safetensors").write_bytes(bytes(data))
    err = one_line(run_installed("predict", damaged, knee / "data", "--out", tmp_path / "p.csv"))
    assert "SHA-256" in err and not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("edit", ["three classes", "swapped classes", "input size"])
def test_a_config_out_of_step_with_its_weights_is_refused(run_installed, run, knee, tmp_path, edit):
    changed = copy_run(run, tmp_path)
    config = json.loads((changed / "config.json").read_text())
    if edit == "three classes":
        config["classes"] = ["left", "right", "middle"]
    elif edit == "swapped classes":
        config["classes"] = config["classes"][::-1]
    else:
        config["preprocess"]["size"] = 64
    config["weights_sha256"] = ""  # a careful editor would not leave the digest either
    (changed / "config.json").write_text(json.dumps(config))
    err = one_line(run_installed("predict", changed, knee / "data", "--out", tmp_path / "p.csv"))
    assert "config.json" in err and not (tmp_path / "p.csv").exists()


# ---------------------------------------------------------------- the run remembers what it was trained on
def test_evaluate_uses_the_frozen_splits_and_refuses_leaked_ones(run_installed, run, knee, tmp_path):
    rows = list(csv.DictReader(open(run / "splits.csv")))
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    config = json.loads((run / "config.json").read_text())
    assert config["splits_sha256"] and config["weights_sha256"] and config["positive_class"] == "right"
    before = json.loads((run / "metrics.json").read_text())["test"]
    leaked = tmp_path / "leaked.csv"  # the same scans, with training patients now called "test"
    with open(knee / "splits.csv") as handle:
        original = list(csv.DictReader(handle))
    with open(leaked, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(original[0]))
        writer.writeheader()
        for row in original:
            writer.writerow({**row, "path": str((knee / row["path"]).resolve()),
                             "split": {"train": "test", "test": "train"}.get(row["split"], row["split"])})
    assert "leaked" in one_line(run_installed("evaluate", run, "--splits", leaked, "--split", "test"))
    code, out, err = run_installed("evaluate", run, "--split", "test")
    assert code == 0, err
    assert f"{before['accuracy']:.3f}" in out and "positive class: right" in out


def test_a_knee_model_skips_ct_volumes(run_installed, run, tmp_path):
    from perceiver_med.synth.phantoms import synth

    mixed = tmp_path / "mixed"
    synth("lung", mixed / "ct", 2, "dicom", 1)
    synth("knee", mixed / "knee", 2, "png", 1)
    code, out, err = run_installed("predict", run, mixed, "--out", tmp_path / "p.csv")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert rows and all("/knee/" in r["path"] for r in rows)
    assert "trained on 2D images" in out


def test_model_options_the_model_does_not_take_are_refused(run_installed, knee, tmp_path):
    err = one_line(run_installed("train", knee / "splits.csv", "--out", tmp_path / "r", "--model",
                                 "vit-rollout-cnn", "--num-latents", "8"))
    assert "--num-latents is an option of perceiver" in err and not (tmp_path / "r").exists()
    err = one_line(run_installed("train", knee / "splits.csv", "--out", tmp_path / "r", "--model", "cnn",
                                 "--deep-supervision", "0"))
    assert "--deep-supervision is an option of perceiver and vit-rollout-cnn, not cnn" in err
    assert not (tmp_path / "r").exists()


def test_a_diverging_run_says_so(run_installed, knee, tmp_path):
    err = one_line(run_installed("train", knee / "splits.csv", "--out", tmp_path / "r", "--size", "32",
                                 "--epochs", "3", "--lr", "1e30", "--num-latents", "8", "--latent-dim", "32"))
    assert "diverged" in err and "--lr" in err


# ---------------------------------------------------------------- resume, interrupts, locks
def _train_in_background(knee, out, *extra):
    return subprocess.Popen(
        [installed_command(), "train", str(knee / "splits.csv"), "--out", str(out), "--size", "32",
         "--batch-size", "4", "--num-latents", "8", "--latent-dim", "32", "--patience", "0", *map(str, extra)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PERCEIVER_MED_CACHE": str(out.parent / "cache")},
        # a shell's background job ignores SIGINT; a terminal's Ctrl-C reaches a process with the default handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_ctrl_c_during_train_exits_130_and_says_how_to_resume(run_installed, knee, tmp_path):
    out = tmp_path / "run"
    process = _train_in_background(knee, out, "--epochs", "200")
    deadline = time.monotonic() + 240
    while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and f"--resume --out {out}" in stderr and "Traceback" not in stderr
    assert not (out / "metrics.json").exists() and not (out / ".lock").exists()
    import torch

    assert torch.load(out / "checkpoint.pt", weights_only=True)["state"]["epoch"] >= 1
    # config.json is the truth on --resume: an option that contradicts it is refused, by name
    err = one_line(run_installed("train", "--resume", "--out", out, "--lr", "0.1"))
    assert "contradict" in err and "--lr 0.1" in err
    # a stopped run is not used as if finished
    err = one_line(run_installed("predict", out, knee / "data", "--out", tmp_path / "p.csv"))
    assert "stopped before training finished" in err and f"perceiver-med train --resume --out {out}" in err
    assert not (tmp_path / "p.csv").exists()


def test_a_second_train_into_the_same_run_is_refused_at_once(run_installed, knee, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(f"{os.uname().nodename} {os.getpid()}\n")  # this test process: alive
    started = time.monotonic()
    assert "in use" in one_line(run_installed("train", knee / "splits.csv", "--out", out))
    assert time.monotonic() - started < 60
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / ".lock").write_text(f"{os.uname().nodename} {dead.stdout.strip()}\n")  # a process that has ended
    code, _, err = run_installed("train", knee / "splits.csv", "--out", out, "--size", "32", "--epochs", "1",
                                 "--num-latents", "8", "--latent-dim", "32")
    assert code == 0, err
    assert (out / "metrics.json").exists() and not (out / ".lock").exists()


def test_resume_of_a_hybrid_needs_no_options_and_cleans_killed_writes(run_installed, knee, tmp_path):
    out = tmp_path / "hybrid"
    code, _, err = run_installed("train", knee / "splits.csv", "--out", out, "--model", "vit-rollout-cnn",
                                 "--size", "32", "--epochs", "1", "--depth", "1", "--dim", "32")
    assert code == 0, err
    checkpoint = out / "checkpoint.pt"
    import torch

    saved = torch.load(checkpoint, weights_only=True)
    saved["state"]["stage_index"], saved["state"]["epoch"] = 1, 0  # as if stopped between the two stages
    torch.save(saved, checkpoint)
    from perceiver_med.files import file_sha256

    config = json.loads((out / "config.json").read_text())
    config["checkpoint_sha256"] = [file_sha256(checkpoint)]  # as training itself records it
    (out / "config.json").write_text(json.dumps(config))
    (out / "metrics.json").unlink()
    (out / ".checkpoint.pt.k2j3h4.pt").write_bytes(b"half a checkpoint")  # kill -9 during a write
    code, out_text, err = run_installed("train", "--resume", "--out", out)
    assert code == 0, err
    assert "stage cnn" in out_text and "stage vit" not in out_text
    assert not list(out.glob(".checkpoint.pt.*")) and (out / "metrics.json").exists()


def test_a_damaged_checkpoint_is_not_resumed(run_installed, run, tmp_path):
    damaged = copy_run(run, tmp_path)
    data = bytearray((damaged / "checkpoint.pt").read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0x55 for b in data[middle:middle + 64])
    (damaged / "checkpoint.pt").write_bytes(bytes(data))
    (damaged / "metrics.json").unlink()  # an interrupted run: a finished one is not resumed at all
    err = one_line(run_installed("train", "--resume", "--out", damaged))
    assert "checkpoint.pt" in err and "SHA-256" in err


def test_resume_without_a_checkpoint_says_so(run_installed, knee, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"classes": ["left", "right"], "preprocess": {}, "model": {
        "name": "perceiver"}, "train": {}, "augment": {}}))
    assert "no checkpoint" in one_line(run_installed("train", "--resume", "--out", out))


def test_predictions_of_the_cli_match_the_library(run, knee, tmp_path, run_installed):
    code, _, err = run_installed("predict", run, knee / "data", "--out", tmp_path / "p.csv")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    probs = np.array([[float(r["prob_left"]), float(r["prob_right"])] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-12)


# ---------------------------------------------------------------- what a user sees in a real terminal
def test_training_display_in_a_terminal_has_one_clean_row_per_epoch(knee, tmp_path):
    import re

    from tests.terminal import render, run_in_terminal

    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", PERCEIVER_MED_CACHE=str(tmp_path / "cache"))
    code, raw = run_in_terminal([installed_command(), "train", str(knee / "splits.csv"), "--out",
                                 str(tmp_path / "run"), "--size", "32", "--epochs", "3", "--num-latents", "8",
                                 "--latent-dim", "32"], env, columns=100)
    screen = render(raw, width=100)
    assert code == 0, "\n".join(screen)
    rows = [line for line in screen if re.match(r"^\s*\d+/3\s", line)]
    assert len(rows) == 3, "\n".join(screen)
    for row in rows:  # whole rows: every number intact, nothing drawn beside them
        assert re.fullmatch(r"\s*\d+/3\s+(\d+\.\d{4}\s+){4}\d\.\d\de[+-]\d\d\s+\d+\.\ds(\s+best)?", row), row
    bars = [line for line in screen if line.startswith(("preprocessing", "loss ", "epoch ")) or "/?" in line]
    assert not bars, "\n".join(screen)  # progress bars are gone once done, and never showed an unknown total
    assert any(line.startswith("run written to") for line in screen)


@pytest.mark.parametrize("fmt", ["dicom", "png"])
def test_inspect_and_predict_tables_fit_80_columns_and_tell_the_scans_apart(tmp_path, run, fmt):
    """At 80 columns every table keeps its right edge and no name is cut to "OAI9000…": long names fold."""
    from tests.terminal import render, run_in_terminal

    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", PERCEIVER_MED_CACHE=str(tmp_path / "cache"))
    data = tmp_path / "data"
    assert subprocess.run([installed_command(), "synth", "knee", str(data), "--patients", "2", "--format", fmt],
                          capture_output=True).returncode == 0
    for command in (["inspect", str(data)], ["predict", str(run), str(data), "--out", str(tmp_path / "p.csv")]):
        code, raw = run_in_terminal([installed_command(), *command], env, columns=80, rows=200)
        screen = render(raw, width=80)
        assert code == 0, "\n".join(screen)
        table = [line for line in screen if line and line[0] in "┏┃┡│└"]
        cut = [line for line in table if not line.endswith(("┓", "┃", "┩", "│", "┘"))]
        assert table and not cut, cut
        assert "…" not in "\n".join(screen)
        names = [line.split("│")[1].strip() for line in table if line.startswith("│")]
        if fmt == "dicom":  # IMG00000.dcm is in every patient's folder: the folder is shown with it
            assert any(re.fullmatch(r"OAI\d+/IMG\d+\.dcm", name) for name in names), names


def test_an_error_in_a_terminal_is_one_line_without_a_blank_line_before_it(tmp_path, knee):
    from tests.terminal import render, run_in_terminal

    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", PERCEIVER_MED_CACHE=str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    code, raw = run_in_terminal([installed_command(), "predict", "nope", "empty", "--out", "p.csv"], env,
                                cwd=tmp_path)
    screen = [line for line in render(raw)]
    while screen and not screen[-1]:
        screen.pop()
    assert code == 2 and len(screen) == 1 and screen[0].startswith("error: "), screen
