"""Training end to end on tiny phantom sets: honest split metrics, resume, predict, explain, DDP."""
import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from perceiver_med.errors import Interrupted
from perceiver_med.results.evaluation import evaluate_run
from perceiver_med.workflows.train import TrainRequest, train
from tests.conftest import CPU

TINY_PERCEIVER = {"num_latents": 8, "latent_dim": 32, "num_iterations": 2}
TINY_VIT = {"depth": 1, "dim": 32}


def _train(knee, out, model="perceiver", epochs=2, reporter=None, **options):
    options = {**(TINY_PERCEIVER if model == "perceiver" else TINY_VIT), **options}
    return train(TrainRequest(knee / "splits.csv", out, model, dict(size=32, epochs=epochs, batch_size=8, patience=0,
                                                                    **options), CPU), reporter)


@pytest.fixture
def perceiver_run(tiny_run):
    return tiny_run


def _predictions(path):
    return list(csv.DictReader(open(path)))


def test_run_directory_holds_every_artefact(perceiver_run):
    run = perceiver_run.run
    for name in ("config.json", "model.safetensors", "checkpoint.pt", "metrics.json", "history.csv", "curves.png",
                 "confusion_test.png", "predictions_train.csv", "predictions_val.csv", "predictions_test.csv"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"positive_class", "train", "val", "test", "bootstrap", "threshold", "temperature",
                            "temperature_fitted_on"} and metrics["positive_class"] == "right"
    for split in (metrics[name] for name in ("train", "val", "test")):
        assert {"loss", "accuracy", "balanced_accuracy", "roc_auc", "f1_macro", "confusion_matrix", "n",
                "sensitivity", "specificity"} <= set(split)
    config = json.loads((run / "config.json").read_text())
    assert config["preprocess"]["size"] == 32 and config["augment"]["flip"] is False  # laterality: no flip
    assert not list(run.glob(".*"))  # no temporary files left


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_each_split_loss_is_the_mean_cross_entropy_of_its_own_predictions(perceiver_run, split):
    rows = _predictions(perceiver_run.run / f"predictions_{split}.csv")
    metrics = perceiver_run.metrics[split]
    assert len(rows) == metrics["n"] > 0
    nll = [-np.log(float(row[f"prob_{row['label']}"])) for row in rows]
    assert metrics["loss"] == pytest.approx(float(np.mean(nll)), rel=1e-9)
    accuracy = np.mean([row["pred"] == row["label"] for row in rows])
    assert metrics["accuracy"] == pytest.approx(accuracy)
    assert sum(map(sum, metrics["confusion_matrix"])) == len(rows)


def test_evaluate_equals_what_training_reported(perceiver_run):
    again = evaluate_run(perceiver_run.run, runtime=CPU)
    for split in ("train", "val", "test"):
        assert again[split]["loss"] == pytest.approx(perceiver_run.metrics[split]["loss"], rel=1e-12)
        assert again[split]["confusion_matrix"] == perceiver_run.metrics[split]["confusion_matrix"]


class _StopAfter:
    """A reporter that interrupts training after a given epoch, as Ctrl-C would."""

    def __init__(self, epoch):
        self.epoch = epoch

    def stage_start(self, *args): ...
    def step(self, loss): ...
    def message(self, text): ...

    def epoch_end(self, row):
        if row["epoch"] == self.epoch:
            raise KeyboardInterrupt


def test_resume_after_an_interruption_gives_a_complete_run(knee, tmp_path):
    out = tmp_path / "run"
    # Ctrl-C says what continues the run, and that command does
    with pytest.raises(Interrupted, match=re.escape(f"the last completed epoch is kept. Continue with:\n    "
                                                    f"perceiver-med train --resume --out {out}")):
        _train(knee, out, epochs=3, reporter=_StopAfter(2))
    assert not (out / "metrics.json").exists() and (out / "checkpoint.pt").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["state"]["epoch"] == 2
    result = train(TrainRequest(knee / "splits.csv", out, "perceiver", resume=True))
    assert [row["epoch"] for row in result_history(out)] == ["1", "2", "3"]
    assert (out / "metrics.json").is_file() and (out / "predictions_test.csv").is_file()
    assert result.metrics["test"]["n"] > 0


def result_history(run):
    return list(csv.DictReader(open(run / "history.csv")))


def test_hybrid_reports_both_stages(knee, tmp_path):
    result = _train(knee, tmp_path / "hybrid", model="vit-rollout-cnn", epochs=1)
    stages = [row["stage"] for row in result_history(result.run)]
    assert stages == ["vit", "cnn"]
    metrics = json.loads((result.run / "metrics.json").read_text())
    assert set(metrics["vit"]) == {"train", "val", "test"} and "test" in metrics


def test_predict_and_explain_on_a_folder_the_model_has_not_seen(perceiver_run, tmp_path, run_cli):
    from perceiver_med.synth.phantoms import synth

    unseen, count = synth("knee", tmp_path / "unseen", 3, "dicom", 99)
    (unseen / "README.txt").write_text("not a scan")
    code, out, err = run_cli("predict", perceiver_run.run, unseen, "--out", tmp_path / "pred.csv", "--device", "cpu")
    assert code == 0, err
    rows = _predictions(tmp_path / "pred.csv")
    # DICOM laterality labels the knees of a left/right run, as explain reads it
    assert len(rows) == count and list(rows[0])[:3] == ["path", "label", "pred"]
    assert {r["label"] for r in rows} <= {"left", "right"}
    probs = np.array([[float(r["prob_left"]), float(r["prob_right"])] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-9)
    assert "README.txt" in out and "PHANTOM" not in out + err
    scans = sorted(unseen.rglob("*.dcm"))[:2]
    code, out, err = run_cli("explain", perceiver_run.run, *scans, "--out", tmp_path / "explain")
    assert code == 0, err
    assert len(list((tmp_path / "explain").glob("*.png"))) == 2


def test_tampered_or_foreign_run_files_are_refused(perceiver_run, tmp_path, run_cli):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(perceiver_run.run, run)
    data = bytearray((run / "model.safetensors").read_bytes())
    data[10:30] = b"\xff" * 20
    (run / "model.safetensors").write_bytes(bytes(data))
    code, _, err = run_cli("evaluate", run, "--device", "cpu")
    assert code == 2 and "damaged" in err and "Traceback" not in err
    # a pickle that would run code on load is refused by weights_only loading
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))
    torch.save({"model": Evil()}, run / "checkpoint.pt")
    from perceiver_med.training.engine import load_checkpoint
    from perceiver_med.errors import UserError

    with pytest.raises(UserError, match="damaged or not"):
        load_checkpoint(run / "checkpoint.pt")
    assert not (tmp_path / "pwned").exists()


def test_bad_inputs_to_run_commands(perceiver_run, knee, tmp_path, run_cli):
    def one_line(result):
        code, out, err = result
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        return err

    assert "does not exist" in one_line(run_cli("evaluate", tmp_path / "nope"))
    assert "does not exist" in one_line(run_cli("predict", tmp_path / "nope", knee / "data", "--out",
                                                tmp_path / "p.csv"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    assert "no readable scans" in one_line(run_cli("predict", perceiver_run.run, tmp_path / "empty", "--out",
                                                   tmp_path / "p.csv"))
    lines = (knee / "splits.csv").read_text().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([lines[0], lines[1].replace(".png", "_missing.png")] + lines[2:]) + "\n")
    assert "missing" in one_line(run_cli("train", bad, "--out", tmp_path / "r"))
    assert "already holds files" in one_line(run_cli("train", knee / "splits.csv", "--out", perceiver_run.run))
    assert not (tmp_path / "r").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo")
@pytest.mark.parametrize("model, options", [
    ("perceiver", ["--num-latents", "8", "--latent-dim", "32"]),
    ("vit-rollout-cnn", ["--depth", "1", "--dim", "32"]),  # BatchNorm statistics must agree between processes
])
def test_two_process_training_matches_a_one_process_evaluation(knee, tmp_path, model, options):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(_free_port()), "-m", "perceiver_med", "train", str(knee / "splits.csv"), "--out", str(out),
               "--size", "32", "--epochs", "2", "--batch-size", "4", "--device", "cpu", "--precision", "fp32",
               "--model", model, *options, "--quiet"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("run written to") == 1  # rank 0 alone prints
    trained = json.loads((out / "metrics.json").read_text())
    again = evaluate_run(out, runtime=CPU)
    for split in ("train", "val", "test"):
        # 1e-4: convolution kernels are picked by batch size and each process evaluates a different batch (2e-6 seen,
        # after temperature scaling); batch-norm statistics that differ between processes move the loss by 1e-2
        assert again[split]["loss"] == pytest.approx(trained[split]["loss"], rel=1e-4)
        assert again[split]["accuracy"] == trained[split]["accuracy"]
    assert len(list(csv.DictReader(open(out / "history.csv")))) == 2 * (1 if model == "perceiver" else 2)


def test_resume_of_a_finished_run_says_it_is_complete(perceiver_run, run_installed):
    """It printed 'resuming at stage perceiver, epoch 1' and scored the run again."""
    before = (perceiver_run.run / "metrics.json").read_bytes()
    code, _, err = run_installed("train", "--resume", "--out", perceiver_run.run)
    assert code == 2 and "is complete" in err and "nothing to resume" in err
    assert (perceiver_run.run / "metrics.json").read_bytes() == before


def test_stop_loss_ends_a_stage_at_the_first_armed_epoch_its_validation_loss_reaches_it(knee, tmp_path):
    """Oracle: the same run without the rule. With stop_loss set to the best validation loss of its first four
    epochs, training repeats that run's epochs exactly and stops at the first one whose best loss is that low once
    stopping is armed (the training set fitted, or 3/4 of the epochs run), as patience counts."""
    from perceiver_med.training.engine import FITTED_ACCURACY

    def history(run):
        return _predictions(run / "history.csv")

    _train(knee, tmp_path / "full", epochs=8)
    full = history(tmp_path / "full")
    losses = [float(row["val_loss"]) for row in full]
    bound = min(losses[:4])

    def armed(k):
        return k + 1 >= 8 * 3 / 4 or any(float(row["train_accuracy"]) >= FITTED_ACCURACY for row in full[:k + 1])

    stop_at = next(k for k in range(8) if min(losses[:k + 1]) <= bound and armed(k)) + 1
    _train(knee, tmp_path / "stopped", epochs=8, stop_loss=bound)
    assert stop_at < 8
    assert [float(row["val_loss"]) for row in history(tmp_path / "stopped")] == pytest.approx(losses[:stop_at],
                                                                                              abs=1e-9)
    assert json.loads((tmp_path / "stopped" / "config.json").read_text())["train"]["stop_loss"] == bound
