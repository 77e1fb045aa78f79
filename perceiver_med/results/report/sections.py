"""The report's sections, built from a RunRecord: flow, characteristics, configuration, software and files,
the decision rule, metrics with intervals. Counts only: no patient id and no scan path is ever put in a section.
"""
from __future__ import annotations

from perceiver_med.inputs.splits import SPLITS
from perceiver_med.results.display import REPORTED_SPLITS
from perceiver_med.results.report.document import PLACEHOLDER, Box, Cell, Flow, Paragraph, Section, Table
from perceiver_med.results.report.flow import SplitCounts, patients_in_two_splits, read_flow_record, split_counts
from perceiver_med.results.report.headers import NOT_RECORDED, Characteristics
from perceiver_med.results.report.run_record import FileDigest, RunRecord
from perceiver_med.run.rundir import CONFIG

SAMPLE_METRICS = (("n", "samples scored"), ("roc_auc", "ROC AUC"), ("average_precision", "average precision"),
                  ("sensitivity_at_95_specificity", "sensitivity at 95% specificity"), ("accuracy", "accuracy"),
                  ("balanced_accuracy", "balanced accuracy"), ("f1_macro", "F1 (macro)"),
                  ("sensitivity", "sensitivity (run's decisions)"),
                  ("specificity", "specificity (run's decisions)"), ("loss", "cross-entropy (calibrated)"))
THRESHOLD_METRICS = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
                     ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("ppv", "PPV"), ("npv", "NPV"))
CALIBRATION_METRICS = (("ece", "ECE before", "calibration.ece"), ("ece_after", "ECE after", "calibration.ece_after"),
                       ("brier", "Brier before", "calibration.brier"),
                       ("brier_after", "Brier after", "calibration.brier_after"),
                       ("loss", "cross-entropy before", "calibration.loss"),
                       ("loss_after", "cross-entropy after", "loss"))
UNIT_METRICS = (("n", "units"), ("mixed_label_units", "units left out (mixed labels)"), ("roc_auc", "ROC AUC"),
                ("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
                ("sensitivity", "sensitivity (run's decisions)"),
                ("specificity", "specificity (run's decisions)"))


def number(value, interval=None) -> str:
    """0.900 (0.833-0.900): three decimals, the 95% interval in brackets; 'undefined' for None."""
    if value is None:
        return "undefined"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    text = f"{value:.3f}"
    return text + (f" ({interval[0]:.3f}\u2013{interval[1]:.3f})" if interval else "")


# ---------------------------------------------------------------- flow
def _split_box(split: str, counts: SplitCounts, title: str = "") -> Box:
    lines = [Cell(f"patients: {counts.patients}", f"flow-{split}-patients"),
             Cell(f"scans: {counts.scans}", f"flow-{split}-scans")]
    if counts.samples != counts.scans:
        lines.append(Cell(f"samples (points or slices): {counts.samples}", f"flow-{split}-samples"))
    lines += [Cell(f"{label}: {n} samples, {p} patients") for label, (n, p) in counts.per_class.items()]
    return Box(title or split, lines, "split")


def _redactor(record: RunRecord):
    """Skip reasons may quote a file name ("the same image as ..."), and names may hold patient ids."""
    secrets = sorted({row.patient_id for row in record.rows} | {row.path.name for row in record.rows}, key=len,
                     reverse=True)
    secrets = [secret for secret in secrets if len(secret) >= 3]  # shorter ones identify nobody, and are in numbers

    def redact(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "\u2026")
        return text

    return redact


def flow_section(record: RunRecord) -> Section:
    counts = split_counts(record.rows)
    found, note = read_flow_record(record.config.splits_file, record.rows)
    redact = _redactor(record)
    rows: list[list[Box]] = []
    if found:
        rows.append([Box("files in the data folder", [Cell(f"files found: {found['files_found']}",
                                                           "flow-files-found")]),
                     Box("files skipped", [Cell(f"files: {found['files_skipped']}", "flow-files-skipped")] + [
                         Cell(f"{redact(reason)}: {n}") for reason, n in found["skipped_reasons"].items()],
                         "excluded")])
        rows.append([Box("scans found", [Cell(f"scans: {found['scans_found']}", "flow-scans-found")]),
                     Box("scans not labelled", [Cell(f"scans: {found['scans_unlabelled']}", "flow-scans-unlabelled")]
                         + [Cell(f"{redact(reason)}: {n}") for reason, n in found["unlabelled_reasons"].items()],
                         "excluded")])
    else:
        rows.append([Box("files found and skipped", [Cell("not recorded by this run")], "excluded")])
    total = counts["all"]
    rows.append([Box("in the run's splits file", [Cell(f"patients: {total.patients}", "flow-all-patients"),
                                                   Cell(f"scans: {total.scans}", "flow-all-scans")]
                     + ([Cell(f"samples: {total.samples}", "flow-all-samples")] if total.samples != total.scans
                        else []))])
    folds = len(record.config.ensemble)
    if folds:  # a cross-validated run: its train and val patients are dealt into folds, each one val in turn
        rows.append([_split_box("train", counts["train"], f"train and val, in {folds} folds"),
                     _split_box("test", counts["test"])])
    else:
        rows.append([_split_box(split, counts[split]) for split in SPLITS])
    scored = []
    for split in scored_splits(record.metrics):
        n = record.metrics[split].get("n", 0)
        lines = [Cell(f"scored: {n}", f"flow-{split}-scored")]
        if split in counts and n != counts[split].samples:
            lines.append(Cell(f"not scored: {counts[split].samples - n} (unreadable when the run was trained)"))
        scored.append(Box(f"{split.replace('_', '-')}: in metrics.json", lines, "split"))
    rows.append(scored)
    leaking = patients_in_two_splits(record.rows)
    blocks = [Flow(rows), Paragraph(f"Files found and skipped: {note}." + (
        "" if found else " Counts from discovery (files found, skipped and why, scans without a label) appear here "
        "when split leaves SPLITS.flow.json beside its CSV.")),
        Paragraph(f"Partitions are disjoint at the patient level: {leaking} patients appear in more than one split "
                  "(checked on the run's frozen splits.csv)." if not leaking else
                  f"WARNING: {leaking} patients appear in more than one split of the run's splits.csv.")]
    if found:
        blocks.append(Paragraph(redact(f"Labels from {found['label_source']}; patients from "
                                       f"{found['patient_source']}.")))
    return Section("flow", "Flow of data", blocks)


# ---------------------------------------------------------------- characteristics
def _count_row(name: str, value: str, per_split: dict, totals: dict) -> list:
    cells = [name, value]
    for split in SPLITS:
        n, total = per_split[split], totals.get(split, 0)
        cells.append(f"{n} ({100 * n / total:.0f}%)" if total else "0")
    return cells


def characteristics_section(record: RunRecord, found: Characteristics) -> Section:
    counts = split_counts(record.rows)
    classes = Table(["class", *SPLITS], [[label] + [Cell(f"{counts[s].per_class[label][0]} samples, "
                                                          f"{counts[s].per_class[label][1]} patients",
                                                          f"class-{s}-{label}") for s in SPLITS]
                                         for label in counts["all"].per_class], "reference-standard labels per split")
    scan_rows = [_count_row(name, value, per_split, found.totals["scans"])
                 for name, values in found.scans.items() for value, per_split in values.items()]
    patient_rows = [_count_row(name, value, per_split, found.totals["patients"])
                    for name, values in found.patients.items() for value, per_split in values.items()]
    header = ["characteristic", "value", *SPLITS]
    blocks = [classes,
              Table(header, scan_rows, "per scan, from DICOM headers (NIfTI and PNG record none of these)"),
              Table(header, patient_rows, "per patient, from DICOM headers (PatientSex; PatientAge in ten-year bands)")]
    unrecorded = all(list(values) == [NOT_RECORDED] for values in found.patients.values())
    if unrecorded:
        blocks.append(Paragraph("Sex and age are not recorded in these scans' headers: report them from the "
                                "source data. " + PLACEHOLDER))
    return Section("characteristics", "Characteristics of each split", blocks)


# ---------------------------------------------------------------- configuration, software, files
def _settings(value) -> str:
    """A config group as `key = value; ...` (lists joined by commas, nested groups in braces)."""
    if isinstance(value, dict):
        return "; ".join(f"{key} = {_settings(inner) if not isinstance(inner, dict) else '{' + _settings(inner) + '}'}"
                         for key, inner in value.items())
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def configuration_section(record: RunRecord, num_parameters: int | None) -> Section:
    import json

    data = json.loads(record.config.to_json())
    for key in ("splits_sha256", "weights_sha256", "checkpoint_sha256", "versions"):
        data.pop(key, None)  # shown with the files and the software
    if data.get("splits_file"):  # a path may name a patient (or a user): the report holds no paths
        data["splits_file"] = "(path withheld)"
    groups = {key: value for key, value in data.items() if isinstance(value, dict)}
    rest = {key: value for key, value in data.items() if not isinstance(value, dict)}
    rows = [[Cell(name, f"config-{name}"), _settings(value)] for name, value in {**groups, "run": rest}.items()]
    if num_parameters is not None:
        rows.insert(0, ["trainable parameters", Cell(f"{num_parameters:,}", "config-parameters")])
    text = ("Weights are initialised at random from train.seed (no pretrained weights); the kept weights are those "
            "of the epoch with the lowest validation loss (training loss without a validation split).")
    return Section("configuration", "Configuration (config.json)",
                   [Paragraph(text), Table(["group", "settings"], rows)])


def software_section(versions: list[tuple[str, str, str]], digests: list[FileDigest]) -> Section:
    return Section("software", "Software and files", [
        Table(["software", "at training (config.json)", "writing this report"],
              [[name, trained or "not recorded", now] for name, trained, now in versions]),
        Table(["file in the run", "bytes", "SHA-256", CONFIG],
              [[d.name, str(d.size), d.sha256, d.recorded] for d in digests])])


# ---------------------------------------------------------------- decision and metrics
def decision_section(record: RunRecord) -> Section:
    metrics = record.metrics  # every key below is written by scoring.run_summary
    threshold, bootstrap = metrics["threshold"], metrics["bootstrap"]
    value = threshold["value"]
    rows = [["positive class", Cell(str(metrics["positive_class"]), "decision-positive")],
            ["threshold", Cell("most probable class" if value is None else f"{value:.6g}", "decision-threshold")],
            ["threshold rule", Cell(str(threshold["rule"]), "decision-rule")],
            ["threshold chosen on", str(threshold["chosen_on"] or "not chosen (default)")],
            ["threshold applies to", str(threshold["applies_to"])],
            ["temperature", Cell(f"{metrics['temperature']:.6g}", "decision-temperature")],
            ["temperature fitted on", str(metrics["temperature_fitted_on"] or "not fitted (default 1)")],
            ["bootstrap", f"{bootstrap['resamples']} resamples of {bootstrap['unit']}s, seed {bootstrap['seed']}; "
                          f"{bootstrap['interval']}"]]
    return Section("decision", "Threshold and calibration", [
        Paragraph("The temperature and the threshold were fitted on the validation split alone, before the test "
                  "split was scored; every probability and decision below uses them."),
        Table(["", "value"], rows)])


def scored_splits(metrics: dict) -> list[str]:
    return [split for split in REPORTED_SPLITS if isinstance(metrics.get(split), dict)]


def _metric_table(by_split: dict, spec, pick, caption: str, prefix: str) -> Table:
    """Rows of metrics, a column per split. `pick` finds the metrics in a split's entry; an interval comes from
    the picked dict's ci95, or from the split's ci95 under the spec's third element when it has one. A metric no
    split has (one a later version added) has no row."""
    rows, splits = [], scored_splits(by_split)
    for key, name, *interval_key in spec:
        if not any(key in (pick(by_split.get(split) or {}) or {}) for split in splits):
            continue  # a metric added after this run was scored
        cells = [name]
        for split in splits:
            entry = by_split.get(split) or {}
            values = pick(entry)
            if not values:
                cells.append("")
                continue
            ci = (entry if interval_key else values).get("ci95") or {}
            cells.append(Cell(number(values.get(key), ci.get(interval_key[0] if interval_key else key)),
                              f"{prefix}-{split}-{key}"))
        rows.append(cells)
    return Table(["metric", *splits], rows, caption)


def metrics_section(record: RunRecord) -> Section:
    blocks = [Paragraph("Point estimates with 95% patient-bootstrap intervals in brackets (metrics.json ci95); "
                        "'undefined' where a split lacks a class the metric needs."),
              _metric_table(record.metrics, SAMPLE_METRICS, lambda v: v if v.get("n") else None,
                            "per sample, calibrated probabilities", "m")]
    if any((record.metrics.get(s) or {}).get("threshold") for s in REPORTED_SPLITS):
        spec = [(key, name, f"threshold.{key}") for key, name in THRESHOLD_METRICS]
        blocks.append(_metric_table(record.metrics, spec, lambda v: v.get("threshold"),
                                    "at the run's threshold (the decisions predict makes)", "t"))
    if any((record.metrics.get(s) or {}).get("calibration") for s in REPORTED_SPLITS):
        blocks.append(_metric_table(record.metrics, CALIBRATION_METRICS, lambda v: v.get("calibration"),
                                    "calibration before and after temperature scaling", "c"))
    for unit in ("patient", "knee", "series"):
        levels = [(record.metrics.get(s) or {}).get("patient_level") or {} for s in REPORTED_SPLITS]
        if not any(level.get(unit) for level in levels):
            continue
        rule = next(level.get("rule") for level in levels if level.get(unit))
        blocks.append(_metric_table(record.metrics, UNIT_METRICS,
                                    lambda v, unit=unit: (v.get("patient_level") or {}).get(unit),
                                    f"per {unit}: {rule}", f"u-{unit}"))
    if isinstance(record.metrics.get("cross_validation"), dict):
        blocks += _folds_blocks(record.metrics["cross_validation"])
    for stage, scored in _earlier_stages(record.metrics):  # e.g. the hybrid's ViT alone, uncalibrated
        blocks.append(_metric_table(scored, SAMPLE_METRICS, lambda v: v if v.get("n") else None,
                                    f"stage {stage} alone (no temperature, no threshold)", stage))
    return Section("metrics", "Metrics", blocks)


def _earlier_stages(metrics: dict) -> list[tuple[str, dict]]:
    """metrics.json's entries of a model's earlier training stages, each scored alone: {split: metrics}."""
    return [(name, value) for name, value in metrics.items() if name not in REPORTED_SPLITS
            and isinstance(value, dict) and value and set(value) <= set(SPLITS)]


def _folds_blocks(cross_validation: dict) -> list:
    """A cross-validated run: how its folds scored one by one (no intervals: each fold sees few patients)."""
    per_fold = cross_validation.get("per_fold") or []
    splits = [s for s in SPLITS if any(s in fold for fold in per_fold)]
    rows = [[str(fold.get("fold", ""))] + [
        "" if split not in fold else f"n {fold[split].get('n')}, accuracy {number(fold[split].get('accuracy'))}, "
        f"ROC AUC {number(fold[split].get('roc_auc'))}" for split in splits] for fold in per_fold]
    return [Paragraph(f"{cross_validation.get('folds', len(per_fold))}-fold cross-validation; the folds' models as "
                      f"one: {cross_validation.get('ensemble', 'not recorded')}."),
            Table(["fold", *splits], rows, "each fold's own model on its splits")]


def froc_section(froc: dict[str, dict], reference: dict, positive_class: str) -> Section:
    """FROC of a point run's candidates against a nodule reference: CPM and the sensitivity at each rate with
    95% intervals, and how the candidates were counted; the reference files by name and SHA-256."""
    splits = list(froc)
    rows = [["CPM", *(Cell(number(froc[s]["cpm"], froc[s]["ci95"]["cpm"]), f"froc-{s}-cpm") for s in splits)]]
    for k, rate in enumerate(froc[splits[0]]["fp_rates"]):
        rows.append([f"sensitivity at {rate:g} false positives per scan",
                     *(number(froc[s]["sensitivity"][k], froc[s]["ci95"]["sensitivity"][k]) for s in splits)])
    for key, name in (("scans", "scans"), ("nodules", "nodules"), ("found", "nodules hit"),
                      ("false_positives", "false-positive marks"), ("on_excluded", "marks on excluded findings"),
                      ("double_hits", "further hits on a nodule already hit (not counted)"),
                      ("candidates", "candidates"), ("scored", f"candidates scored (at most "
                                                               f"{froc[splits[0]]['max_marks_per_scan']} a scan)")):
        rows.append([name, *(str(froc[s][key]) for s in splits)])
    files = "; ".join(f"{name}: {entry['file']} (SHA-256 {entry['sha256'][:16]}\u2026)"
                      for name, entry in reference.items() if name != "rule")
    return Section("froc", "Detection: FROC", [
        Paragraph(f"Candidates scored by the run's calibrated probability of {positive_class}, counted against the "
                  f"nodule reference as {reference['rule']}. Reference files: {files}. Intervals: 95% percentile "
                  "intervals of patient-bootstrap resamples."),
        Table(["", *splits], rows, "FROC per split")])
