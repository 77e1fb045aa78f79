"""Training policy and the CNN baseline: early stopping waits for learning to start; `--model cnn` is a model
like the others (same engine, metrics, explain)."""
from __future__ import annotations

from perceiver_med.dataset_ops import split_folder
from perceiver_med.engine import stopping_armed
from perceiver_med.runs import train_run
from perceiver_med.synth import synth


def test_early_stopping_waits_for_the_training_set_or_half_the_epochs():
    plateau = [{"stage": "perceiver", "train_accuracy": 0.5} for _ in range(29)]
    assert not stopping_armed(plateau, "perceiver", 60)
    assert stopping_armed(plateau + [{"stage": "perceiver", "train_accuracy": 0.5}], "perceiver", 60)
    assert stopping_armed(plateau[:3] + [{"stage": "perceiver", "train_accuracy": 0.97}], "perceiver", 60)
    assert not stopping_armed([{"stage": "vit", "train_accuracy": 1.0}], "cnn", 60)  # each stage for itself


def test_cnn_baseline_learns_knee_laterality_and_is_explained(tmp_path):
    """--model cnn goes through the same engine, metrics and explain as the transformers; global max pooling
    must not cost it laterality (a mirrored knee is the other class)."""
    from perceiver_med.explain import explain_run

    data, _ = synth("knee", tmp_path / "knee", 40, "png", 0)
    split_folder(data, tmp_path / "splits.csv", seed=0)
    result = train_run(tmp_path / "splits.csv", "cnn", tmp_path / "run", epochs=12, device="cpu", precision="fp32")
    assert result.config.model["name"] == "cnn" and result.num_parameters < 50_000
    assert result.metrics["train"]["accuracy"] >= 0.95 and result.metrics["test"]["accuracy"] >= 0.9
    scans = sorted(data.iterdir())[:2]
    written, skipped = explain_run(tmp_path / "run", scans, tmp_path / "explain")
    assert len(written) == 2 and not skipped
