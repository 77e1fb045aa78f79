"""Rich tables for the terminal. Patient names are never read, so they can never be shown."""
from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.table import Table

from perceiver_med.io.discover import Discovery, Skip

console = Console()
err_console = Console(stderr=True)


def scans_table(discovery: Discovery, limit: int = 40) -> Table:
    table = Table(title=f"{len(discovery.scans)} scan(s) in {discovery.root}")
    for column in ("scan", "kind", "format", "modality", "shape", "spacing", "patient", "label"):
        table.add_column(column)
    labels = getattr(discovery, "labels", {})
    for scan in discovery.scans[:limit]:
        spacing = "x".join(f"{s:g}" for s in scan.spacing) if scan.spacing else ""
        table.add_row(scan.id, scan.kind, scan.format, scan.modality, "x".join(map(str, scan.shape)),
                      spacing, scan.patient_id, labels.get(scan.id, ""))
    if len(discovery.scans) > limit:
        table.caption = f"... and {len(discovery.scans) - limit} more (the CSV from --out lists them all)"
    return table


def skipped_table(skipped: list[Skip], title: str = "skipped") -> Table | None:
    if not skipped:
        return None
    reasons = Counter(skip.reason for skip in skipped)
    table = Table(title=f"{len(skipped)} file(s) {title}")
    table.add_column("reason")
    table.add_column("files", justify="right")
    table.add_column("example")
    for reason, count in reasons.most_common():
        example = next(skip.file.name for skip in skipped if skip.reason == reason)
        table.add_row(reason, str(count), example)
    return table


def summary_line(read: int, skipped: int, what: str = "scan(s) read") -> str:
    return f"[bold]{read}[/] {what}, [bold]{skipped}[/] file(s) skipped"


def counts_table(counts: dict[str, dict[str, tuple[int, int]]]) -> Table:
    labels = sorted({label for per_split in counts.values() for label in per_split})
    table = Table(title="scans (patients) per split and class")
    table.add_column("split")
    for label in labels:
        table.add_column(label, justify="right")
    table.add_column("total", justify="right")
    for split, per_label in counts.items():
        scans = sum(v[0] for v in per_label.values())
        table.add_row(split, *[f"{per_label[label][0]} ({per_label[label][1]})" for label in labels], str(scans))
    return table
