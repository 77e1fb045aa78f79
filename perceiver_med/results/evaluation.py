"""`evaluate`: a run's metrics on chosen splits, scored by the same function (predict_splits, then
SplitPredictions.metrics) that writes a run's own metrics.json, so a run's own metrics and a later evaluate agree;
for a point run given a nodule reference, also FROC and CPM (results/detection.py). Nothing is written inside the
run: `out` is elsewhere."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import json

import numpy as np
import torch

from perceiver_med.errors import UserError
from perceiver_med.files import atomic_text
from perceiver_med.inputs.kinds import check_samples
from perceiver_med.inputs.splits import SPLITS, read_sound_splits
from perceiver_med.inputs.loading import LoadedInputs, load_split_inputs
from perceiver_med.inputs.samples import Sample
from perceiver_med.results.detection import NoduleReference, check_reference_names_scans, split_froc
from perceiver_med.results.scoring import run_summary, score_split
from perceiver_med.run.predictor import Predictor
from perceiver_med.run.rundir import TrainedOn, check_new_output
from perceiver_med.stats.decision import Decisions
from perceiver_med.training.config import RunConfig, Runtime
from perceiver_med.training.engine import Processes


@dataclass
class SplitPredictions:
    """What a run's Predictor gives the loaded samples of each split that has any (train, val, test in order)."""

    rows: dict[str, list[Sample]]  # the samples, in the splits file's order
    labels: dict[str, np.ndarray]  # (N,) their label indices among the run's classes
    raw: dict[str, np.ndarray]  # (N, K) the probabilities the run's decision applies to (Predictor.probabilities)

    def decided(self, predictor: Predictor) -> dict[str, Decisions]:
        """What the run decides for each split's samples (its temperature and threshold as they are now)."""
        return {split: predictor.decide(raw) for split, raw in self.raw.items()}

    def metrics(self, config: RunConfig) -> dict:
        """metrics.json: the run's positive class, threshold, temperature and bootstrap, and each split's scores."""
        scored = {split: score_split(self.labels[split], raw, self.rows[split], config)
                  for split, raw in self.raw.items()}
        return {"positive_class": config.positive_class, **run_summary(config), **scored}


def predict_splits(predictor: Predictor, loaded: LoadedInputs, processes: Processes | None = None,
                   data: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> SplitPredictions:
    """The Predictor's probabilities for every split of `loaded`: what training, `evaluate` and cross-validation
    score. `data` is `loaded.by_split(classes)` where the caller holds it already (training fits on it), so the
    inputs are not copied twice."""
    data = loaded.by_split(predictor.classes) if data is None else data
    present = [split for split in SPLITS if split in data and len(data[split][1])]
    return SplitPredictions({split: [row for row in loaded.samples if row.split == split] for split in present},
                            {split: data[split][1].numpy() for split in present},
                            {split: predictor.probabilities(data[split][0], processes) for split in present})


def evaluate_run(run: Path, splits: Path | None = None, split: str = "all", tta: int = 1,
                 runtime: Runtime = Runtime(), nodules: Path | None = None, excluded: Path | None = None,
                 out: Path | None = None, overwrite: bool = False) -> dict:
    """Metrics of a saved run on the chosen splits (the run's frozen copy of its splits by default), with the
    run's own temperature and threshold, as metrics.json has them; with `tta` > 1, of the mean probabilities
    over that many label-preserving views of each scan.

    Another splits file may be given; scans or patients the run trained on are refused in its val/test rows.
    A cross-validated run (an ensemble) is scored on its test split unless a split is named.

    With a `nodules` reference (and optionally the `excluded` findings), a point run's splits also get "froc"
    (CPM, sensitivity at 1/8..8 false positives per scan, intervals, the curve) and the top level "froc_reference"
    (the files, by name and SHA-256, and the rule). With `out`, the metrics are also written there as JSON (a new
    file unless `overwrite`; never inside a run directory).
    """
    if split not in (*SPLITS, "all"):
        raise UserError("--split must be train, val, test or all")
    if excluded is not None and nodules is None:
        raise UserError("--excluded needs --nodules: the excluded findings only qualify a nodule reference")
    predictor = Predictor(run, runtime.device, tta)
    config = predictor.config
    if nodules is not None and not config.preprocess.kind.takes_points:
        raise UserError("--nodules scores candidate points, and this run classifies whole scans: give a run "
                        "trained on points (split --points CSV)")
    if out is not None:
        check_new_output(out, overwrite)
    reference = None if nodules is None else NoduleReference.read(Path(nodules),
                                                                  None if excluded is None else Path(excluded))
    rows = predictor.run.frozen_rows(config) if splits is None else read_sound_splits(Path(splits))
    if config.ensemble and split == "all" and splits is None:
        split = "test"  # the folds' own scans trained most of the ensemble: only the held-out test scores it
    rows = [row for row in rows if split == "all" or row.split == split]
    if splits is not None:  # only the rows scored: a cross-validation's own splits file scores its test split
        refuse_training_scans(rows, predictor.run.trained_on(config))
    if not rows and config.ensemble and splits is None and split == "test":  # split --folds-from: no test split
        raise UserError(f"{run} is a cross-validation whose folds hold every sample, so nothing is held out for it: "
                        f"its out-of-fold scores are in its metrics.json; score a fold with evaluate {run}/fold_<k> "
                        "--split val, or unseen scans with --splits")
    if not rows:
        raise UserError(f"{splits or predictor.run.splits_file} has no {split} scans")
    check_samples(config.preprocess.kind, any(row.point is not None for row in rows), "this run",
                  f"give a splits file of points (split --points CSV), not {splits}",
                  f"give a splits file of scans, not {splits}")
    with runtime.reading():
        loaded = load_split_inputs(rows, config.preprocess, runtime.workers)
    predicted = predict_splits(predictor, loaded)
    metrics = predicted.metrics(config)
    if reference is not None:
        positive = config.classes.index(config.positive_class)
        froc = {name: split_froc(predicted.rows[name], decided.probs[:, positive], reference, seed=config.train.seed)
                for name, decided in predicted.decided(predictor).items()}
        check_reference_names_scans(froc, reference)
        for name, entry in froc.items():
            metrics[name]["froc"] = entry
        metrics["froc_reference"] = reference.record()
    if out is not None:
        atomic_text(out, lambda handle: json.dump(metrics, handle, indent=2))
    return metrics


def refuse_training_scans(rows: list[Sample], trained_on: TrainedOn) -> None:
    """Val and test rows of another splits file must be samples and patients the run did not train on."""
    leaked = [r for r in rows if r.split != "train" and trained_on.split_of(r) == "train"]
    if leaked:
        raise UserError(f"{len(leaked)} {leaked[0].split} scan(s) of that splits file were training scans or "
                        f"patients of this run (e.g. patient {leaked[0].patient_id}): their scores would be leaked")
