"""Per-split characteristics from DICOM headers: acquisition per scan, sex and age band per patient.

The headers are read by io.descriptions, which reads only the tags it names (pydicom's specific_tags), so a
name, a birth date or an ID never enters memory, let alone the report. Ages are reported in ten-year bands,
and 90 or over as one band (HIPAA's rule).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from perceiver_med.inputs.samples import Sample
from perceiver_med.inputs.splits import SPLITS
from perceiver_med.io.descriptions import ScanDescription, describe_scan

SCAN_FIELDS = ("modality", "manufacturer", "body part", "view", "laterality", "pixel spacing (mm)",
               "slice thickness (mm)")
PATIENT_FIELDS = ("sex", "age band (years)")
NOT_RECORDED = "not recorded"
_SEXES = {"M": "male", "F": "female", "O": "other"}


@dataclass
class Characteristics:
    """{field: {value: {split: count}}}; scans counted once per scan, patients once per patient."""

    scans: dict = field(default_factory=dict)
    patients: dict = field(default_factory=dict)
    totals: dict = field(default_factory=dict)  # {"scans"|"patients": {split: n}}


def age_band(age: str) -> str:
    """A DICOM age string (nnnD/W/M/Y) as a ten-year band, '90+' at 90 or over; '' when unreadable."""
    age = age.strip().upper()
    if len(age) != 4 or not age[:3].isdigit() or age[3] not in "DWMY":
        return ""
    years = int(age[:3]) if age[3] == "Y" else 0 if age[3] in "DW" else int(age[:3]) // 12
    if years >= 90:
        return "90+"
    low = years // 10 * 10
    return f"{low}\u2013{low + 9}"


def _number(value) -> str:
    return f"{float(value):g}"


def _read(path: Path, series_uid: str) -> dict | None:
    """The characteristics of a scan from its DICOM header (io.descriptions); None if it has none."""
    description = describe_scan(path, series_uid)
    return _fields(description) if description is not None else None


def _fields(description: ScanDescription) -> dict:
    spacing, thickness = description.pixel_spacing, description.slice_thickness
    return {"modality": description.modality, "manufacturer": description.manufacturer,
            "body part": description.body_part, "view": description.view, "laterality": description.laterality,
            "pixel spacing (mm)": " \u00d7 ".join(_number(v) for v in spacing) if spacing else "",
            "slice thickness (mm)": _number(thickness) if thickness is not None else "",
            "sex": _SEXES.get(description.sex.strip().upper(), ""),
            "age band (years)": age_band(description.age)}


def characteristics(rows: list[Sample]) -> Characteristics:
    """Count each characteristic per split; a scan that is not DICOM (NIfTI, PNG) or a missing tag counts as
    NOT_RECORDED. A patient's sex and age band are those of their first scan that records them."""
    result = Characteristics({name: defaultdict(Counter) for name in SCAN_FIELDS},
                             {name: defaultdict(Counter) for name in PATIENT_FIELDS})
    scans: dict[tuple, tuple[str, dict | None]] = {}
    for row in rows:  # points and slices of one scan are one scan
        key = (row.path, row.series_uid)
        if key not in scans:
            scans[key] = (row.split, _read(row.path, row.series_uid) if row.path.exists() else None)
    patient_values: dict[tuple, dict] = {}
    for row in rows:
        split, values = scans[(row.path, row.series_uid)]
        known = patient_values.setdefault((row.patient_id, row.split), {})
        for name in PATIENT_FIELDS:
            if values and values[name] and not known.get(name):
                known[name] = values[name]
    for split, values in scans.values():
        for name in SCAN_FIELDS:
            result.scans[name][(values or {}).get(name) or NOT_RECORDED][split] += 1
    for (_, split), values in patient_values.items():
        for name in PATIENT_FIELDS:
            result.patients[name][values.get(name) or NOT_RECORDED][split] += 1
    result.totals = {"scans": Counter(split for split, _ in scans.values()),
                     "patients": Counter(split for _, split in patient_values)}
    for table in (result.scans, result.patients):
        for name in table:
            table[name] = {value: {s: counts[s] for s in SPLITS} for value, counts in sorted(
                table[name].items(), key=lambda item: (item[0] == NOT_RECORDED, item[0]))}
    return result
