"""`perceiver-med report`: a tiny real run on phantom DICOM knees whose headers the test wrote itself, reported,
then every number checked against its source computed another way, and the page opened in Chromium."""
import csv
import json
import os
import re
import shutil
from collections import Counter, defaultdict
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pydicom
import pytest

from perceiver_med.errors import UserError
from perceiver_med.results.report import write_report
from perceiver_med.results.report.claim import ITEMS
from perceiver_med.results.report.document import PLACEHOLDER
from perceiver_med.results.report.figures import GALLERY_SIZE, confident_errors
from perceiver_med.inputs.samples import Sample
from perceiver_med.results.predictions import PredictionsFile
from perceiver_med.results.report.headers import age_band
from tests.conftest import CPU, TINY_PERCEIVER_RUN

SPLITS = ("train", "val", "test")


def _sex(index):
    return "F" if index % 2 == 0 else "M"


def _age(index):
    return f"{31 + 9 * index:03d}Y"  # 31, 40, 49, ... 94: bands 30-39, 40-49, 40-49, ... 90+


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """Phantom DICOM knees with sex, age and manufacturer written into their headers, one non-scan file, a
    splits file with its flow record, a tiny trained run and its report."""
    from perceiver_med.workflows.folders import split_folder
    from perceiver_med.workflows.train import TrainRequest, train
    from perceiver_med.synth.phantoms import synth

    root = tmp_path_factory.mktemp("report")
    data, _ = synth("knee", root / "data", 8, "dicom", 5)
    patients = sorted(folder.name for folder in data.iterdir() if folder.is_dir())
    for index, patient in enumerate(patients):
        for file in (data / patient).iterdir():
            ds = pydicom.dcmread(file)
            ds.PatientSex, ds.PatientAge = _sex(index), _age(index)
            if index % 3:
                ds.Manufacturer = "ACME"
            ds.save_as(file)
    (data / "notes.txt").write_text("not a scan\n")
    split_folder(data, root / "splits.csv", seed=0)
    run = train(TrainRequest(root / "splits.csv", root / "run", "perceiver", TINY_PERCEIVER_RUN, CPU)).run
    html = write_report(run, root / "out" / "report.html")
    return {"root": root, "data": data, "run": run, "html": html, "patients": patients,
            "page": html.read_text(encoding="utf-8"), "markdown": html.with_suffix(".md").read_text(encoding="utf-8")}


class _Page(HTMLParser):
    """The text inside each element with an id, and every image's src."""

    def __init__(self):
        super().__init__()
        self.by_id, self.images, self.open = {}, [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in ("span", "td") and attrs.get("id"):
            self.open.append(attrs["id"])
            self.by_id[attrs["id"]] = ""

    def handle_endtag(self, tag):
        if tag in ("span", "td") and self.open:
            self.open.pop()

    def handle_data(self, data):
        for anchor in self.open:
            self.by_id[anchor] += data


def _parsed(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


def _splits(reported) -> list[dict]:
    with open(reported["run"] / "splits.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _count(text: str) -> int:
    return int(text.rsplit(":", 1)[1])


# ---------------------------------------------------------------- the flow diagram
def test_flow_diagram_counts_equal_the_splits_file_and_the_data_folder(reported):
    shown = _parsed(reported["page"]).by_id
    rows = _splits(reported)
    for split in SPLITS:
        picked = [row for row in rows if row["split"] == split]
        assert _count(shown[f"flow-{split}-patients"]) == len({row["patient_id"] for row in picked})
        assert _count(shown[f"flow-{split}-scans"]) == len(picked)
        assert _count(shown[f"flow-{split}-scored"]) == json.loads(
            (reported["run"] / "metrics.json").read_text())[split]["n"]
        for label in ("left", "right"):
            mine = [row for row in picked if row["label"] == label]
            assert shown[f"class-{split}-{label}"] == (f"{len(mine)} samples, "
                                                      f"{len({row['patient_id'] for row in mine})} patients")
    assert _count(shown["flow-all-patients"]) == len(reported["patients"])
    files = sum(len(names) for _, _, names in os.walk(reported["data"]))
    assert _count(shown["flow-files-found"]) == files
    assert _count(shown["flow-files-skipped"]) == 1  # notes.txt
    assert _count(shown["flow-scans-unlabelled"]) == 0
    assert _count(shown["flow-scans-found"]) == files - 1


def test_flow_record_of_another_splits_file_is_not_used(reported, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reported["run"], run)
    config = json.loads((run / "config.json").read_text())
    (tmp_path / "splits.csv").write_bytes(Path(config["splits_file"]).read_bytes() + b"\n")  # other bytes
    shutil.copy(Path(config["splits_file"]).with_suffix(".flow.json"), tmp_path / "splits.flow.json")
    config["splits_file"] = str(tmp_path / "splits.csv")
    (run / "config.json").write_text(json.dumps(config))
    page = write_report(run, tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "flow-files-found" not in page and "describes another version of the splits file" in page


# ---------------------------------------------------------------- characteristics from headers
def test_sex_age_and_manufacturer_per_split_are_those_written_into_the_headers(reported):
    index = {patient: k for k, patient in enumerate(reported["patients"])}
    split_of = {row["patient_id"]: row["split"] for row in _splits(reported)}
    scans_of = Counter(row["split"] for row in _splits(reported))
    sexes, bands, makers = defaultdict(Counter), defaultdict(Counter), defaultdict(Counter)
    for row in _splits(reported):
        makers[row["split"]]["ACME" if index[row["patient_id"]] % 3 else "not recorded"] += 1
    for patient, split in split_of.items():
        sexes[split][{"F": "female", "M": "male"}[_sex(index[patient])]] += 1
        years = int(_age(index[patient])[:3])
        bands[split]["90+" if years >= 90 else f"{years // 10 * 10}\u2013{years // 10 * 10 + 9}"] += 1
    page = reported["page"]
    for split_counts, name, total in ((sexes, "sex", None), (bands, "age band (years)", None),
                                      (makers, "manufacturer", scans_of)):
        for value in {v for counter in split_counts.values() for v in counter}:
            cells = []
            for split in SPLITS:
                n = split_counts[split][value]
                whole = (total or Counter(split_of.values()))[split]
                cells.append(f"<td>{n} ({100 * n / whole:.0f}%)</td>" if whole else "<td>0</td>")
            assert f"<td>{name}</td><td>{value}</td>{''.join(cells)}" in page, (name, value)
    assert "<td>modality</td><td>DX</td>" in page


def test_age_bands_are_ten_years_wide_and_close_at_ninety():
    assert [age_band(a) for a in ("045Y", "040Y", "049Y", "090Y", "104Y", "018M", "003W", "010D", "", "45")] == [
        "40\u201349", "40\u201349", "40\u201349", "90+", "90+", "0\u20139", "0\u20139", "0\u20139", "", ""]


# ---------------------------------------------------------------- metrics
NUMBER = re.compile(r"-?\d+\.\d+|undefined")


def _expected(value, interval):
    return ["undefined"] if value is None else [value] + (list(interval) if interval else [])


def _same(shown: str, expected: list) -> bool:
    found = NUMBER.findall(shown)
    return len(found) == len(expected) and all(
        f == e if e == "undefined" else abs(float(f) - e) <= 5e-4 for f, e in zip(found, expected))


def test_every_metric_shown_equals_metrics_json_with_its_interval(reported):
    shown = _parsed(reported["page"]).by_id
    metrics = json.loads((reported["run"] / "metrics.json").read_text())
    checked = 0
    for split in SPLITS:
        entry, ci = metrics[split], metrics[split]["ci95"]
        assert shown[f"m-{split}-n"] == str(entry["n"])
        for key in ("roc_auc", "accuracy", "balanced_accuracy", "f1_macro", "sensitivity", "specificity", "loss"):
            assert _same(shown[f"m-{split}-{key}"], _expected(entry[key], ci.get(key))), (split, key)
            checked += 1
        for key in ("accuracy", "sensitivity", "specificity", "ppv", "npv"):
            assert _same(shown[f"t-{split}-{key}"], _expected(entry["threshold"][key], ci.get(f"threshold.{key}")))
            checked += 1
        calibration = entry["calibration"]
        for key in ("ece", "ece_after", "brier", "brier_after"):
            assert _same(shown[f"c-{split}-{key}"], _expected(calibration[key], ci.get(f"calibration.{key}")))
            checked += 1
        for unit, values in entry["patient_level"].items():
            if isinstance(values, dict):
                assert shown[f"u-{unit}-{split}-n"] == str(values["n"])
                assert _same(shown[f"u-{unit}-{split}-roc_auc"],  # no units (all of mixed labels): undefined
                             _expected(values.get("roc_auc"), values.get("ci95", {}).get("roc_auc")))
                checked += 1
    assert checked >= 3 * 16
    assert float(shown["decision-threshold"]) == pytest.approx(metrics["threshold"]["value"])
    assert shown["decision-rule"] == metrics["threshold"]["rule"]
    assert float(shown["decision-temperature"]) == pytest.approx(metrics["temperature"], rel=1e-5)


# ---------------------------------------------------------------- privacy and self-containment
def test_no_patient_id_name_or_path_reaches_the_report(reported):
    for text in (reported["page"], reported["markdown"]):
        for patient in {row["patient_id"] for row in _splits(reported)}:
            assert patient not in text
        assert "PHANTOM" not in text  # the phantoms' PatientName
        assert str(reported["data"]) not in text and "IMG0" not in text
        assert str(reported["root"]) not in text  # nor the splits file's (a user's folder can name them too)


def test_skip_reasons_lose_the_patient_ids_and_file_names_they_quote():
    from types import SimpleNamespace

    from perceiver_med.results.report.sections import _redactor
    rows = [Sample(Path("/data/OAI9000042/IMG00007.dcm"), label="left", patient_id="OAI9000042", split="test"),
            Sample(Path("/data/7/x.dcm"), label="left", patient_id="7", split="train")]
    redact = _redactor(SimpleNamespace(rows=rows))
    assert redact("the same image as IMG00007.dcm (OAI9000042), 7 files") == "the same image as \u2026 (\u2026), 7 files"


def test_the_page_needs_nothing_but_itself_and_the_markdown_its_folder(reported):
    page = _parsed(reported["page"])
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", reported["page"], re.IGNORECASE)
    assert "<script" not in reported["page"].lower()
    links = re.findall(r"\]\(([^)]+\.png)\)", reported["markdown"])
    assert len(links) == len(page.images)
    assert all((reported["html"].parent / link).is_file() for link in links)


def test_gallery_shows_the_most_confident_test_errors(reported):
    with open(reported["run"] / "predictions_test.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    wrong = sorted((row for row in rows if row["pred"] != row["label"]), key=lambda r: -float(r[f"prob_{r['pred']}"]))
    shown = sorted((reported["html"].parent / "report_files").glob("error_*.png"))
    assert len(shown) == min(GALLERY_SIZE, len(wrong))
    for rank, row in enumerate(wrong[:GALLERY_SIZE], 1):
        assert (f"test error {rank}: true {row['label']}, predicted {row['pred']} "
                f"(p = {float(row['prob_' + row['pred']]):.3f})") in reported["page"]


def test_the_roc_dots_are_the_decisions_the_run_wrote(reported):
    """Oracle: the false- and true-positive rates of the `pred` column the Predictor wrote in predictions_<split>.csv,
    split by split, in the order the curves are drawn."""
    import matplotlib.pyplot as plt
    import numpy as np

    from perceiver_med.results.display import REPORTED_SPLITS
    from perceiver_med.results.report.figures import roc_plot
    from perceiver_med.results.report.run_record import read_run

    record = read_run(reported["run"])
    positive = record.config.positive_class
    expected = []
    for split in REPORTED_SPLITS:
        path = reported["run"] / f"predictions_{split}.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        truth = np.array([row["label"] == positive for row in rows])
        called = np.array([row["pred"] == positive for row in rows])
        if truth.any() and not truth.all():
            expected += [called[~truth].mean(), called[truth].mean()]
    figure = roc_plot(record)
    dots = [float(v) for line in figure.axes[0].lines if line.get_marker() == "o" for v in line.get_xydata()[0]]
    plt.close(figure)
    assert expected and dots == pytest.approx(expected, abs=1e-12)


def test_confident_errors_are_wrong_and_ordered_by_the_probability_of_the_call():
    calls = [("left", "right", 0.7), ("left", "left", 0.1), ("right", "left", 0.05), ("", "right", 0.99),
             ("left", "right", 0.9)]  # (label, pred, p(right))
    predictions = PredictionsFile(samples=[Sample(Path("x.png"), label=label) for label, _, _ in calls],
                                  names=[pred for _, pred, _ in calls],
                                  probs=np.array([[1 - right, right] for _, _, right in calls]),
                                  classes=["left", "right"], lines=list(range(2, 2 + len(calls))))
    assert confident_errors(predictions) == [2, 4, 0]  # p(left) = 0.95, then p(right) = 0.9, then 0.7
    assert confident_errors(predictions, limit=1) == [2]


def test_claim_appendix_lists_all_44_items_and_marks_the_rest_for_the_authors(reported):
    shown = _parsed(reported["page"]).by_id
    assert [n for n, _, _ in ITEMS] == list(range(1, 45))
    statuses = [shown[f"claim-{n}"] for n in range(1, 45)]
    assert set(statuses) == {"filled", "not filled"}
    rows = reported["page"].split('id="claim"')[1].split("<tr>")[2:]
    assert len(rows) == 44
    assert all(PLACEHOLDER in row for row in rows if ">not filled<" in row)
    for item in (20, 23, 29, 35, 36, 37, 39):  # flow, versions, intervals, demographics from headers, errors
        assert shown[f"claim-{item}"] == "filled", item


# ---------------------------------------------------------------- where it may write
def test_refuses_to_write_inside_the_data_or_the_run_or_over_a_report(reported):
    for out in (reported["data"] / "report.html", reported["data"] / reported["patients"][0] / "report.html",
                reported["run"] / "report.html", reported["html"]):
        with pytest.raises(UserError):
            write_report(reported["run"], out)
    assert not (reported["data"] / "report.html").exists() and not (reported["run"] / "report.html").exists()


def test_command_writes_the_report_and_refuses_a_bad_run_in_one_line(reported, run_cli, run_installed, tmp_path):
    code, out, err = run_cli("report", reported["run"], "--out", tmp_path / "card.html")
    assert code == 0 and (tmp_path / "card.html").is_file() and (tmp_path / "card.md").is_file()
    assert sorted(p.name for p in (tmp_path / "card_files").iterdir()) == sorted(
        p.name for p in (reported["html"].parent / "report_files").iterdir())
    for args in (["report", tmp_path / "no-such-run", "--out", tmp_path / "other.html"],
                 ["report", reported["run"], "--out", tmp_path / "other.txt"],
                 ["report", reported["run"], "--out", tmp_path / "card.html"]):  # exists, no --overwrite
        code, out, err = run_installed(*args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.html", "card.md", "card_files"]


# ---------------------------------------------------------------- in a real browser
def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,1600"):
        options.add_argument(argument)
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def test_report_renders_in_chromium_with_every_image_loaded_and_no_console_error(reported):
    browser = _browser()
    try:
        browser.get(reported["html"].resolve().as_uri())
        browser.execute_script("return document.readyState")
        assert browser.title == f"Model report: {reported['run'].name}"
        body = browser.find_element("tag name", "body").text
        assert "Flow of data" in body and "Appendix: CLAIM 2024 checklist" in body
        widths = browser.execute_script(
            "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        assert widths and all(width > 0 for width in widths), widths
        severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        browser.quit()


def test_the_summary_gives_the_input_as_the_model_sees_it_and_says_a_stage_never_fitted(tmp_path):
    """A point run's inputs are 192x192 grids, not '64 pixels'; train's never-fitted note is the report's too."""
    import shutil

    from perceiver_med.results.report.build import write_report

    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "fixtures" / "legacy_runs" / "runs" / "lung-points-perceiver", run)
    html = write_report(run, tmp_path / "report" / "report.html")
    text = " ".join(html.with_suffix(".md").read_text().split())
    assert "point inputs of 192\u00d7192 pixels (3\u00d73 tiles of 64)" in text
    assert "Note: stage perceiver never fitted its training set (best training accuracy 0.56 in 2 epochs" in text
