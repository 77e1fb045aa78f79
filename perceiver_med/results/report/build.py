"""write_report: a run directory -> REPORT.html (self-contained), REPORT.md and the figures in REPORT_files/."""
from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from perceiver_med import __version__
from perceiver_med.errors import UserError
from perceiver_med.files import FILE_MODE, atomic_path, refuse_inside
from perceiver_med.run.rundir import check_new_output
from perceiver_med.results.display import REPORTED_SPLITS
from perceiver_med.results.report import figures as figs
from perceiver_med.training.engine import unfitted_note
from perceiver_med.results.report.claim import checklist_table
from perceiver_med.results.report.document import PLACEHOLDER, Image, Paragraph, Section, render_html, render_markdown
from perceiver_med.results.report.flow import read_flow_record
from perceiver_med.results.report.headers import NOT_RECORDED, PATIENT_FIELDS, Characteristics, characteristics
from perceiver_med.results.report.run_record import (RunRecord, file_digests, read_run,
                                                software_versions)
from perceiver_med.results.report.sections import (characteristics_section, configuration_section, decision_section,
                                              flow_section, froc_section, metrics_section, number, software_section)


def report_paths(out: Path) -> tuple[Path, Path, Path]:
    """(HTML, Markdown beside it, folder of the Markdown's images)."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out {out} must end in .html (the Markdown and its images are written beside it)")
    return out, out.with_suffix(".md"), out.parent / f"{out.stem}_files"


def _input_folders(record: RunRecord) -> set[Path]:
    """Each scan's folder, and their common folder where it is one of them or holds one of them: the data
    folder `split` read, where a PNG left behind would be read as a scan by the next `split`."""
    folders = {row.path if row.path.is_dir() else row.path.parent for row in record.rows}
    try:
        common = Path(os.path.commonpath([str(f) for f in folders]))
    except ValueError:  # different drives
        return folders
    if any(folder == common or folder.parent == common for folder in folders):
        folders.add(common)
    return folders


def _check_outputs(record: RunRecord, html: Path, markdown: Path, images: Path, overwrite: bool) -> None:
    for target in (html, markdown, images / "x.png"):
        refuse_inside(target, *_input_folders(record))
    check_new_output(html, overwrite)
    check_new_output(markdown, overwrite)
    if images.exists():
        if not overwrite:
            raise UserError(f"{images} already exists: choose another --out, or add --overwrite")
        strangers = [p for p in images.iterdir() if not (p.is_file() and p.suffix == ".png")] if images.is_dir() \
            else [images]
        if strangers:
            raise UserError(f"{images} holds files a report did not write ({strangers[0].name}): move it away first")


def _publish_folder(built: Path, target: Path) -> None:
    """Put the new images folder in place of the old one (renames, so readers see one or the other)."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(built, target)
    if old is not None:
        shutil.rmtree(old)


def _summary(record: RunRecord) -> Section:
    test = record.metrics.get("test") or {}
    ci = test.get("ci95") or {}
    at = test.get("threshold") or {}
    config = record.config
    _, height, width = config.preprocess.output_shape
    tiles = config.preprocess.kind.tiles
    lines = [f"{config.model['name']} classifying {', '.join(config.classes)} (positive class "
             f"{config.positive_class}), trained on {config.preprocess.input} inputs of {height}\u00d7{width} pixels"
             + (f" ({tiles}\u00d7{tiles} tiles of {config.preprocess.size})" if tiles > 1 else "") + "."]
    notes = (unfitted_note(record.history, stage) for stage in dict.fromkeys(row["stage"] for row in record.history))
    lines += ["Note: " + note.removeprefix("note: ") + "." for note in notes if note]  # as train printed them
    if config.ensemble:
        oof = record.metrics.get("out_of_fold") or {}
        lines.append(f"{len(config.ensemble)}-fold cross-validation: the test split is scored by the ensemble of "
                     f"the {len(config.ensemble)} fold models (mean of their calibrated probabilities); out of fold, "
                     f"{oof.get('n', 0)} samples, ROC AUC "
                     f"{number(oof.get('roc_auc'), (oof.get('ci95') or {}).get('roc_auc'))}.")
    if test.get("n"):
        lines.append(f"Test split: {test['n']} samples; ROC AUC {number(test.get('roc_auc'), ci.get('roc_auc'))}; "
                     + (f"sensitivity {number(at.get('sensitivity'), ci.get('threshold.sensitivity'))} and "
                        f"specificity {number(at.get('specificity'), ci.get('threshold.specificity'))} at the "
                        f"threshold {at['value']:.4g}." if at else
                        f"accuracy {number(test.get('accuracy'), ci.get('accuracy'))}."))
    else:
        lines.append("The run has no test split: no held-out performance can be reported.")
    return Section("summary", "Summary", [Paragraph(line) for line in lines])


def _claim_fills(record: RunRecord, found: Characteristics, flow_known: bool, gallery_done: bool) -> dict:
    bootstrap = record.metrics.get("bootstrap") or {}
    has_threshold = any((record.metrics.get(s) or {}).get("threshold") for s in REPORTED_SPLITS)
    recorded = lambda table, names: any(  # noqa: E731
        value != NOT_RECORDED for name in names for value in table[name])
    fills = {9: ("Configuration", "preprocess settings (input, size, window, channels)"),
             12: ("Flow of data", "samples not scored counted; header fields missing counted as not recorded"),
             19: ("Flow of data", "patients, scans and classes per split"),
             20: ("Flow of data", "patient level, checked on the run's splits"),
             22: ("Configuration", "model settings and trainable parameters"),
             23: ("Software and files", "versions at training and at reporting"),
             24: ("Configuration", "random initialisation from train.seed"),
             25: ("Configuration", "training and augmentation settings; training curves under Figures"),
             26: ("Configuration", "weights of the epoch with the lowest validation loss"),
             28: ("Metrics", "discrimination, decisions at the threshold, calibration, patient level"),
             32: ("Metrics", "held-out test split (internal)"),
             35: ("Flow of data", "flow diagram with counts" + ("" if flow_known else "; files skipped not recorded")),
             37: ("Metrics", "every metric with its 95% interval"),
             43: ("Software and files", f"versions and SHA-256 of the weights; availability statement "
                                        f"{PLACEHOLDER}")}
    folds = record.metrics.get("cross_validation")
    if isinstance(folds, dict):
        fills[27] = ("Metrics", f"{folds.get('folds')} fold models as one: {folds.get('ensemble')}")
    elif not any(p.name.startswith("fold_") for p in record.run.iterdir()):
        fills[27] = ("Configuration", "one model, no ensemble")
    if bootstrap:
        fills[29] = ("Metrics", f"95% intervals from {bootstrap.get('resamples')} patient-bootstrap resamples, "
                                f"seed {bootstrap.get('seed')}")
    if has_threshold:
        fills[38] = ("Metrics", "sensitivity, specificity, PPV and NPV at the threshold, with intervals; "
                                "confusion matrices under Figures")
    if flow_known:
        fills[8] = ("Flow of data", "technical exclusions only (files skipped and why)")
        fills[14] = ("Flow of data", "where the labels came from (partly)")
    if recorded(found.scans, ("modality", "manufacturer", "pixel spacing (mm)")):
        fills[13] = ("Characteristics", "modality, manufacturer, view and spacing from DICOM headers (partly)")
    if recorded(found.patients, PATIENT_FIELDS):
        fills[36] = ("Characteristics", "sex and age bands per split from DICOM headers")
    if gallery_done:
        fills[31] = ("Failure analysis", "occlusion evidence with its parameters; its validation is not reported")
        fills[39] = ("Failure analysis", "the most confident test errors with evidence overlays")
    return fills


def write_report(run: Path, out: Path, overwrite: bool = False, nodules: Path | None = None,
                 excluded: Path | None = None) -> Path:
    """Write the report of a run: OUT.html (one self-contained page), OUT.md and OUT_files/ beside it.

    Everything comes from the run directory (config.json, metrics.json, predictions, its frozen splits.csv)
    and from the DICOM headers of the splits' scans; patient ids and scan paths are never written. With a
    `nodules` reference (and its `excluded` findings), a point run's report adds FROC and CPM of its predictions.
    Returns the HTML's path.
    """
    from perceiver_med.models import build_model
    from perceiver_med.results.detection import NoduleReference, check_reference_names_scans

    if excluded is not None and nodules is None:
        raise UserError("--excluded needs --nodules: the excluded findings only qualify a nodule reference")
    html_path, markdown_path, images = report_paths(out)
    record = read_run(run)
    if nodules is not None and not record.config.preprocess.kind.takes_points:
        raise UserError("--nodules scores candidate points, and this run classifies whole scans: give a run "
                        "trained on points (split --points CSV)")
    reference = None if nodules is None else NoduleReference.read(Path(nodules),
                                                                  None if excluded is None else Path(excluded))
    _check_outputs(record, html_path, markdown_path, images, overwrite)
    found = characteristics(record.rows)
    flow_known = read_flow_record(record.config.splits_file, record.rows)[0] is not None
    try:
        num_parameters = build_model(record.config.model).num_parameters
    except (TypeError, ValueError):
        num_parameters = None
    html_path.parent.mkdir(parents=True, exist_ok=True)
    built = Path(tempfile.mkdtemp(prefix=f".{images.name}.", dir=html_path.parent))
    os.chmod(built, FILE_MODE | (FILE_MODE & 0o444) >> 2)  # searchable wherever readable, as mkdir would make it
    try:
        roc = figs.roc_figure(record, built)
        froc = {} if reference is None else figs.froc_results(record, reference)
        if reference is not None:
            check_reference_names_scans(froc, reference)
        froc_plot = figs.froc_figure(froc, built)
        per_split = figs.split_figures(record, built)
        curves = figs.curves_figure(record, built)
        gallery, gallery_sentence = figs.gallery(record, built)
        figure_blocks = [Image(f.file, f.caption) for f in [roc, froc_plot, *[f for s in per_split.values()
                                                                              for f in s], curves] if f is not None]
        sections = [_summary(record), flow_section(record), characteristics_section(record, found),
                    configuration_section(record, num_parameters),
                    software_section(software_versions(record.config), file_digests(record.run, record.config)),
                    decision_section(record), metrics_section(record),
                    *([froc_section(froc, reference.record(), record.config.positive_class)] if froc else []),
                    Section("figures", "Figures", figure_blocks),
                    Section("errors", "Failure analysis",
                            [Paragraph(gallery_sentence), *[Image(f.file, f.caption) for f in gallery]]),
                    Section("claim", "Appendix: CLAIM 2024 checklist", [
                        Paragraph("Which items of the Checklist for Artificial Intelligence in Medical Imaging "
                                  "(CLAIM 2024 update; Tejani et al., Radiology: Artificial Intelligence 2024) this "
                                  "report fills. Item texts are paraphrased: check them against the published list."),
                        checklist_table(_claim_fills(record, found, flow_known, bool(gallery) or
                                                     gallery_sentence.startswith("No errors")))])]
        title = f"Model report: {record.run.resolve().name}"
        subtitle = (f"Written by perceiver-med {__version__} on "
                    f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from the run directory alone. "
                    "Counts only: no patient id, name or file path appears in this report.")
        page = render_html(title, subtitle, sections, built)
        markdown = render_markdown(title, subtitle, sections, images.name)
        _publish_folder(built, images)
    finally:
        if built.exists():
            shutil.rmtree(built)
    for target, text in ((markdown_path, markdown), (html_path, page)):
        with atomic_path(target) as temp:
            temp.write_text(text, encoding="utf-8")
    return html_path
