"""`evaluate --nodules`: FROC and CPM of a point run's candidates, against the LUNA16 evaluation's own arithmetic
(scikit-learn's ROC curve rescaled to false positives per scan) on a legacy run's probabilities."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from perceiver_med.errors import UserError
from perceiver_med.inputs.references import read_nodules
from perceiver_med.inputs.splits import read_splits
from perceiver_med.results.evaluation import evaluate_run
from perceiver_med.results.predictions import read_predictions
from perceiver_med.stats.froc import FP_RATES
from tests.conftest import CPU

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_runs"


@pytest.fixture
def lung(tmp_path):
    """The legacy point run and its phantom CTs, copied; nodules.csv names the malignant points as nodules (path
    column, diameters from the points file) and excluded.csv one benign test point of unknown size."""
    root = tmp_path / "legacy"
    shutil.copytree(LEGACY / "runs" / "lung-points-perceiver", root / "run")
    shutil.copytree(LEGACY / "data" / "lung", root / "lung")
    rows = read_splits(root / "lung" / "splits.csv")
    lines = ["path,coordX,coordY,coordZ,diameter_mm"]
    lines += [f"scans/{r.path.name},{r.point[0]!r},{r.point[1]!r},{r.point[2]!r},{r.diameter_mm}" for r in rows
              if r.label == "malignant"]
    (root / "lung" / "nodules.csv").write_text("\n".join(lines) + "\n")
    benign = next(r for r in rows if r.split == "test" and r.label == "benign")
    (root / "lung" / "excluded.csv").write_text("path,coordX,coordY,coordZ,diameter_mm\n"
                                       f"scans/{benign.path.name},{benign.point[0]!r},{benign.point[1]!r},"
                                       f"{benign.point[2]!r},-1\n")
    return root, rows, benign


def _luna16_sensitivities(found_scores, false_scores, nodules, scans):
    """noduleCADEvaluationLUNA16.computeFROC: the ROC of found nodules against false positives, rescaled."""
    truth = np.r_[np.ones(len(found_scores)), np.zeros(len(false_scores))]
    fpr, tpr, _ = roc_curve(truth, np.r_[found_scores, false_scores])
    fps, sensitivity = fpr * len(false_scores) / scans, tpr * len(found_scores) / nodules
    return np.interp(FP_RATES, fps, sensitivity)


def test_evaluate_counts_the_froc_as_luna16_does(lung, tmp_path):
    root, rows, benign = lung
    out = tmp_path / "evaluation.json"
    metrics = evaluate_run(root / "run", root / "lung" / "splits.csv", "test", runtime=CPU,
                           nodules=root / "lung" / "nodules.csv", excluded=root / "lung" / "excluded.csv", out=out)
    froc = metrics["test"]["froc"]
    predictions = read_predictions(root / "run" / "predictions_test.csv", ["benign", "malignant"])
    score = predictions.probs[:, 1]
    malignant = np.array([s.label == "malignant" for s in predictions.samples])
    ignored = np.array([s.point == benign.point for s in predictions.samples])
    scans = len({s.path.name for s in predictions.samples})
    assert froc["scans"] == scans and froc["nodules"] == froc["found"] == malignant.sum()
    assert froc["on_excluded"] == 1 and froc["false_positives"] == (~malignant).sum() - 1
    hand = _luna16_sensitivities(score[malignant], score[~malignant & ~ignored], malignant.sum(), scans)
    np.testing.assert_allclose(froc["sensitivity"], hand, atol=1e-6)
    assert froc["cpm"] == pytest.approx(hand.mean(), abs=1e-6)
    written = json.loads(out.read_text())
    assert written["test"]["froc"]["cpm"] == froc["cpm"]
    assert set(written["froc_reference"]) == {"nodules", "excluded", "rule"}
    assert written["froc_reference"]["nodules"]["file"] == "nodules.csv"


def test_a_reference_that_names_none_of_the_scans_is_refused(lung, tmp_path):
    root, _, _ = lung
    (tmp_path / "other.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3,0,0,0,5\n")
    with pytest.raises(UserError, match="has no nodule on any of the .* scans scored"):
        evaluate_run(root / "run", root / "lung" / "splits.csv", "test", runtime=CPU, nodules=tmp_path / "other.csv")


def test_a_nodule_row_that_is_not_a_number_refuses_the_file(tmp_path):
    (tmp_path / "n.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3,0,0,0,5\n1.2.4,0,x,0,5\n")
    with pytest.raises(UserError, match=r"n.csv:3: coordY must be a number"):
        read_nodules(tmp_path / "n.csv")
    (tmp_path / "m.csv").write_text("seriesuid,coordX,coordY,coordZ\n1.2.3,0,0,0\n")
    with pytest.raises(UserError, match="needs the columns coordX,coordY,coordZ,diameter_mm"):
        read_nodules(tmp_path / "m.csv")


def test_the_command_prints_the_froc_and_refuses_mistakes_in_one_line(lung, run_installed, knee, tiny_run):
    root, _, _ = lung
    code, out, err = run_installed("evaluate", root / "run", "--splits", root / "lung" / "splits.csv", "--split",
                                   "test", "--nodules", root / "lung" / "nodules.csv", "--device", "cpu")
    assert code == 0, err
    assert "CPM" in out and "sens. at 0.125 FP/scan" in out
    code, _, err = run_installed("evaluate", tiny_run.run, "--nodules", root / "lung" / "nodules.csv")
    assert code == 2 and "give a run trained on points" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_the_report_shows_the_froc_of_the_run_s_predictions(tmp_path):
    from perceiver_med.results.report import write_report

    run = tmp_path / "run"
    shutil.copytree(LEGACY / "runs" / "lung-points-perceiver", run)
    rows = read_splits(run / "splits.csv")  # absolute paths, as the run froze them: the nodules name them so
    (tmp_path / "nodules.csv").write_text("path,coordX,coordY,coordZ,diameter_mm\n" + "".join(
        f"{r.path},{r.point[0]!r},{r.point[1]!r},{r.point[2]!r},{r.diameter_mm}\n" for r in rows
        if r.label == "malignant"))
    html = write_report(run, tmp_path / "report" / "report.html", nodules=tmp_path / "nodules.csv")
    predictions = read_predictions(run / "predictions_test.csv", ["benign", "malignant"])
    malignant = np.array([s.label == "malignant" for s in predictions.samples])
    score = predictions.probs[:, 1]
    hand = _luna16_sensitivities(score[malignant], score[~malignant], malignant.sum(),
                                 len({s.path for s in predictions.samples}))
    markdown = html.with_suffix(".md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("|  | train"))
    cpm = next(line for line in markdown.splitlines() if line.startswith("| CPM |"))
    assert "## Detection: FROC" in markdown and header.split("|")[-2].strip() == "test"
    assert cpm.split("|")[-2].strip().startswith(f"{hand.mean():.3f} (")
    assert (tmp_path / "report" / "report_files" / "froc.png").is_file()
