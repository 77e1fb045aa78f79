"""Rich tables for the terminal, and figures. Patient names are never read, so they can never be shown.

Text that comes from files or users (names, labels, reasons) enters tables as `plain(...)`: never parsed
as rich markup ("[/]" in a label), and printable whatever bytes a file name holds.
"""
from __future__ import annotations

import re

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from perceiver_med.csvfiles import printable
from perceiver_med.inputs.splits import SPLITS
from perceiver_med.io.discover import Discovery, Skip

console = Console()
err_console = Console(stderr=True)


def plain(value: object) -> Text:
    return Text(printable(value))


# Columns whose text must be read whole (names that differ at their end): folded onto a second line when the
# terminal is narrow, never cut to "OAI9000…" as every row would then read the same.
FOLDED = {"overflow": "fold"}


def scans_table(discovery: Discovery, limit: int = 40) -> Table:
    """The scans found, one row each; a column empty for every scan (no modality in PNGs) is left out so the rest
    fit 80 columns."""
    # the shape tells the kind, the file name the format (both are in inspect --out's CSV)
    columns = ("scan", "modality", "shape, spacing mm", "patient", "label")
    rows = []
    for scan in discovery.scans[:limit]:
        shape = "x".join(map(str, scan.shape))
        spacing = "\n" + "x".join(f"{s:.3g}" for s in scan.spacing) if scan.spacing else ""
        rows.append([plain(scan.id), plain(scan.modality), shape + spacing,
                     plain(discovery.patients.get(scan.id, scan.patient_id)),
                     plain(discovery.labels.get(scan.id, ""))])
    kept = [k for k, name in enumerate(columns) if name == "scan" or any(row[k] for row in rows)]
    table = Table(title=plain(f"{len(discovery.scans)} scan(s) in {discovery.root}"))
    for k in kept:  # the scan's name gets the room (up to 24 characters); the other columns fold to give it
        widest = max((len(row[k]) for row in rows), default=0)
        table.add_column(columns[k], min_width=min(widest, 24) if columns[k] == "scan" else None, **FOLDED)
    for row in rows:
        table.add_row(*(row[k] for k in kept))
    if len(discovery.scans) > limit:
        table.caption = f"... and {len(discovery.scans) - limit} more (the CSV from --out lists them all)"
    return table


def skipped_table(skipped: list[Skip], title: str = "skipped") -> Table | None:
    if not skipped:
        return None
    # A points file's rows whose reasons differ only in their numbers (the line, the point's coordinates) are one
    # reason: 128 points outside their scans are one row with a count, not 128 rows. Files keep their own reasons
    # (PixelSpacing 0\0 and -1\1 are two findings).
    groups: dict[str, list[Skip]] = {}
    for skip in skipped:
        groups.setdefault(_NUMBER.sub("…", skip.reason) if skip.row is not None else skip.reason, []).append(skip)
    table = Table(title=f"{skip_count(skipped)} {title}")
    table.add_column("reason")
    table.add_column("count", justify="right")
    table.add_column("example", **FOLDED)
    for shape, members in sorted(groups.items(), key=lambda item: -len(item[1])):
        first = members[0]
        example = first.file.name + (f", line {first.row}" if first.row is not None and len(members) > 1 else "")
        same = all(member.reason == first.reason for member in members)
        table.add_row(plain(first.reason if same else shape), str(len(members)), plain(example))
    return table


_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?:x\d+)*(?![\w.])")


def skip_count(skipped: list[Skip]) -> str:
    """"M file(s)", "K point row(s)" or both: a points file's rows are counted as rows, not files."""
    rows = sum(skip.row is not None for skip in skipped)
    counts = [f"[bold]{len(skipped) - rows}[/] file(s)"] if len(skipped) > rows or not rows else []
    counts += [f"[bold]{rows}[/] point row(s)"] if rows else []
    return " and ".join(counts)


def summary_line(read: int, skipped: list[Skip], what: str = "scan(s) read") -> str:
    """"N <what>, M file(s) skipped"."""
    return f"[bold]{read}[/] {what}, {skip_count(skipped)} skipped"


def counts_table(counts: dict[str, dict[str, tuple[int, int]]], unit: str = "split", samples: str = "scans"
                 ) -> Table:
    labels = sorted({label for per_split in counts.values() for label in per_split})
    table = Table(title=f"{samples} (patients) per {unit} and class")
    table.add_column(unit)
    for label in labels:
        table.add_column(plain(label), justify="right")
    table.add_column("total", justify="right")
    for split, per_label in counts.items():
        scans = sum(v[0] for v in per_label.values())
        table.add_row(split, *[f"{per_label[label][0]} ({per_label[label][1]})" for label in labels], str(scans))
    return table


# ---------------------------------------------------------------- figures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Text from users (class names, file names) is drawn as it is: "$\\foo$" must not be read as mathtext.
PLAIN = {"parse_math": False, "usetex": False}


def save_figure(figure, path, metadata: dict[str, str] | None = None) -> None:
    """Write a figure as PNG (with optional text chunks) under a temporary name, rename it into place, free it."""
    from perceiver_med.files import atomic_path

    with atomic_path(path, suffix=".png") as temp:
        figure.savefig(temp, dpi=100, format="png", metadata=metadata)
    _pyplot().close(figure)


def save_curves(history: list[dict], path) -> None:
    """Loss and accuracy per split per epoch, one column of plots per stage."""
    save_figure(curves_figure(history), path)


def curves_figure(history: list[dict]):
    """The figure of save_curves: whole-number epoch ticks, and one legend below the plots, where it hides no
    curve (inside an axis it covers the points of a short run wherever it goes)."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    stages = list(dict.fromkeys(row["stage"] for row in history)) or ["(none)"]
    figure, axes = plt.subplots(2, len(stages), figsize=(4.5 * len(stages), 6.4), squeeze=False)
    legend = {}
    for column, stage in enumerate(stages):
        rows = [row for row in history if row["stage"] == stage]
        epochs = [row["epoch"] for row in rows]
        for line, metric in enumerate(("loss", "accuracy")):
            axis = axes[line][column]
            for split, style, name in (("train", "-", "train (running, augmented)"), ("val", "--", "val")):
                values = [row.get(f"{split}_{metric}") for row in rows]
                if values and all(v is not None for v in values):
                    color = f"C{0 if split == 'train' else 1}"
                    legend[name], = axis.plot(epochs, values, style, color=color, marker="o", markersize=3)
            axis.set_title(f"{stage}: {metric}", **PLAIN)
            axis.set_xlabel("epoch")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no tick at 2.5
            axis.grid(alpha=0.3)
    if legend:
        shown = figure.legend(list(legend.values()), list(legend), loc="lower center", ncol=len(legend),
                              frameon=False)
        for text in shown.get_texts():
            text.set_parse_math(False)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    return figure


def save_confusion(matrix: list[list[int]], classes: list[str], split: str, path) -> None:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(1.2 * len(classes) + 2.5, 1.2 * len(classes) + 2))
    axis.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            axis.text(j, i, str(value), ha="center", va="center")
    axis.set_xticks(range(len(classes)), classes, **PLAIN)
    axis.set_yticks(range(len(classes)), classes, **PLAIN)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(f"{split} (n={sum(map(sum, matrix))})", **PLAIN)
    figure.tight_layout()
    save_figure(figure, path)


def save_reliability(reliability: dict, temperature: float, split: str, path) -> None:
    """Reliability diagram: accuracy against mean confidence per bin, before and after temperature scaling."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(4.8, 4.8))
    axis.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for name, style, label in (("before", "o--", "model"), ("after", "s-", f"temperature {temperature:.3g}")):
        bins = reliability[name]
        points = [(c, a) for c, a in zip(bins["confidence"], bins["accuracy"]) if c is not None]
        if points:
            axis.plot(*zip(*points), style, markersize=4, label=label)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("confidence (highest probability), bin mean")
    axis.set_ylabel("accuracy in the bin")
    axis.set_title(f"{split}: reliability (n={sum(reliability['after']['count'])})", **PLAIN)
    axis.grid(alpha=0.3)
    for text in axis.legend(loc="upper left").get_texts():
        text.set_parse_math(False)
    figure.tight_layout()
    save_figure(figure, path)


def overlay_cmap():
    """plasma whose opacity rises with the value, from a faint tint at the bottom of the scale to 85%."""
    from matplotlib.colors import ListedColormap

    colours = _pyplot().get_cmap("plasma")(np.linspace(0, 1, 256))
    colours[:, 3] = 0.3 + 0.55 * np.linspace(0, 1, 256) ** 0.8
    return ListedColormap(colours, name="plasma_rising")


def overlay_figure(picture: np.ndarray, heat: np.ndarray, title: str, heat_label: str,
                   scale: tuple[float, float], note: str = ""):
    """The picture ((H, W) in [0, 1], or (H, W, 3)) with `heat` ((H, W), >= 0) over it, pixel on pixel.

    `scale` (floor, top) is fixed by the caller, never taken from `heat`, so two overlays colour the same value
    alike: below the floor nothing is coloured, from floor to top the colour rises logarithmically, above top it
    stays at the top colour. `note` is written under the picture (why nothing is coloured, say).
    """
    from matplotlib.colors import LogNorm

    floor, top = scale
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.2, 5.2))
    axis.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    shown = axis.imshow(np.ma.masked_less(heat, floor), cmap=overlay_cmap(), norm=LogNorm(floor, top, clip=True),
                        interpolation="nearest")
    colour_bar = figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.03)
    ticks = [value for value in (floor, 0.1, 0.2, 0.5, 1.0, 2.0, top) if floor <= value <= top]
    colour_bar.set_ticks(ticks, labels=[f"{value:g}" + ("+" if value == top else "") for value in ticks])
    colour_bar.minorticks_off()
    colour_bar.set_label(heat_label, fontsize=8, **PLAIN)
    colour_bar.ax.tick_params(labelsize=7)
    axis.set_title(title, fontsize=8, **PLAIN)
    if note:
        axis.text(0.5, -0.02, note, transform=axis.transAxes, ha="center", va="top", fontsize=8, wrap=True, **PLAIN)
    axis.axis("off")
    figure.tight_layout()
    return figure


# a cross-validated run reports its out-of-fold predictions where a single run reports val: before test
REPORTED_SPLITS = (*SPLITS[:-1], "out_of_fold", SPLITS[-1])


def metrics_table(metrics: dict, title: str = "metrics") -> Table:
    # short headings and three decimals: nine columns fit an 80-column terminal
    columns = {"n": "n", "loss": "loss", "accuracy": "acc.", "balanced_accuracy": "bal. acc.", "roc_auc": "AUC",
               "f1_macro": "F1 macro", "sensitivity": "sens.", "specificity": "spec."}
    table = Table(title=title)
    table.add_column("split")
    for heading in columns.values():
        table.add_column(heading, justify="right")
    for split in REPORTED_SPLITS:
        if split not in metrics:
            continue
        values = metrics[split]
        cells = []
        for column in columns:
            value = values.get(column)
            cells.append("" if value is None else str(value) if column == "n" else f"{value:.3f}")
        table.add_row(split.replace("_", " "), *cells)
    return table


def _with_interval(value, interval) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + (f"\n[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def trust_table(metrics: dict) -> Table | None:
    """One column per split, one row per result: ROC AUC, accuracy, average precision and the sensitivity at 95%
    specificity with 95% patient-bootstrap intervals, the
    decision at the run's threshold, calibration before -> after temperature scaling, and the patient-level ROC
    AUC and accuracy. Splits are columns so that it fits an 80-column terminal."""
    threshold = metrics.get("threshold") or {}
    if "bootstrap" not in metrics:
        return None
    splits = [s for s in REPORTED_SPLITS if (metrics.get(s) or {}).get("n") and "ci95" in metrics[s]]
    fitted_on = metrics.get("temperature_fitted_on") or ""
    temperature = ("each fold's own" if "cross_validation" in metrics else
                   f"{metrics['temperature']:.4g}" + (" (not fitted)" if fitted_on.startswith("default") else ""))
    title = (f"95% intervals ({metrics['bootstrap']['resamples']} patient resamples); threshold "
             + (f"{threshold['value']:.4g} (rule {threshold['rule']})" if threshold.get("value") is not None
                else f"none ({threshold.get('rule')})") + f"; temperature {temperature}")
    table = Table(title=plain(title))
    table.add_column("")
    for split in splits:
        table.add_column(split.replace("_", " "), justify="right")

    def number(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    def row(name: str, cell) -> None:
        table.add_row(name, *(cell(metrics[split]) for split in splits))

    row("ROC AUC", lambda v: _with_interval(v["roc_auc"], v["ci95"].get("roc_auc")))
    row("accuracy", lambda v: _with_interval(v["accuracy"], v["ci95"].get("accuracy")))
    if all("average_precision" in metrics[split] for split in splits):  # runs scored before these were added lack them
        row("average precision",
            lambda v: _with_interval(v["average_precision"], v["ci95"].get("average_precision")))
        row("sens. at 95% spec.", lambda v: _with_interval(v["sensitivity_at_95_specificity"],
                                                           v["ci95"].get("sensitivity_at_95_specificity")))
    if all(v.get("threshold") for v in map(metrics.get, splits)):
        row("sensitivity", lambda v: number(v["threshold"]["sensitivity"]))
        row("specificity", lambda v: number(v["threshold"]["specificity"]))
    row("ECE before -> after", lambda v: f"{v['calibration']['ece']:.3f} -> {v['calibration']['ece_after']:.3f}")
    row("Brier before -> after",
        lambda v: f"{v['calibration']['brier']:.3f} -> {v['calibration']['brier_after']:.3f}")
    for unit in ("patient", "knee"):
        if not all(metrics[split]["patient_level"].get(unit) for split in splits):
            continue
        # left/right labels: a patient with both knees has no single label, and a knee is the unit that has one
        row(f"per {unit}: n (mixed)", lambda v: f"{v['patient_level'][unit]['n']} "
            f"({v['patient_level'][unit]['mixed_label_units']})")
        row(f"per {unit}: ROC AUC", lambda v: number(v["patient_level"][unit].get("roc_auc")))
        row(f"per {unit}: accuracy", lambda v: number(v["patient_level"][unit].get("accuracy")))
    return table


def froc_table(metrics: dict) -> Table | None:
    """One column per split: the CPM and the sensitivity at each false-positive rate of the FROC, with 95%
    patient-bootstrap intervals, and how the candidates were counted; None without FROC results."""
    splits = [s for s in REPORTED_SPLITS if isinstance(metrics.get(s), dict) and "froc" in metrics[s]]
    if not splits:
        return None
    table = Table(title="FROC against the nodule reference (LUNA16's counting); 95% patient-bootstrap intervals")
    table.add_column("")
    for split in splits:
        table.add_column(split.replace("_", " "), justify="right")
    entries = [metrics[split]["froc"] for split in splits]
    table.add_row("CPM", *(_with_interval(e["cpm"], e["ci95"]["cpm"]) for e in entries))
    for k, rate in enumerate(entries[0]["fp_rates"]):
        table.add_row(f"sens. at {rate:g} FP/scan",
                      *(_with_interval(e["sensitivity"][k], e["ci95"]["sensitivity"][k]) for e in entries))
    for key, name in (("scans", "scans"), ("nodules", "nodules"), ("found", "nodules hit"),
                      ("false_positives", "false-positive marks"), ("on_excluded", "marks on excluded findings")):
        table.add_row(name, *(str(e[key]) for e in entries))
    return table
