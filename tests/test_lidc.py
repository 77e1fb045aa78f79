"""LIDC-IDRI readers' XML -> points: one row per nodule of 3 mm or more, its readers' marks gathered.

The test writes an LIDC-shaped download: a CT series (files shuffled) and, beside it, an XML reading with four
sessions. Nodule A is outlined by four readers with slightly different outlines (one an L drawn by its corners
only, one naming an image by a SOPInstanceUID the series lacks, so found by its z position), nodule B by two,
nodule C by one; reader 4 also marks a nodule under 3 mm (one point) and reader 1 a non-nodule. Oracles: the
pixel sets inside each outline written out by hand as inequalities, the series geometry as written (x = -100 +
0.8 column, y = -100 + 0.8 row, z = 2 k), the ratings' medians, and the label rule.
"""
import csv
import math
import random

import numpy as np
import pytest
from pydicom import dcmread

from perceiver_med.errors import ScanError, UserError
from perceiver_med.inputs.lidc import PlacedMark, cluster, label_of, outline_fill, points_from_lidc
from perceiver_med.inputs.splits import read_splits
from perceiver_med.io.lidc_xml import NoduleMark, read_lidc_xml
from perceiver_med.workflows.folders import mask_points, split_folder
from tests.conftest import write_series

SHAPE = (12, 40, 48)  # slices, rows, columns
PIXEL, STEP = 0.8, 2.0  # conftest's ct_slice: 0.8 mm pixels, axial, first pixel at x = y = -100 mm; z = 2 k
VOXEL_MM3 = PIXEL * PIXEL * STEP
WRONG_SOP = "1.2.826.0.1.3680043.99.99.99"


def rectangle(x0, y0, x1, y1):
    """The outline of a rectangle as LIDC draws it: every pixel of its border, clockwise."""
    top = [(x, y0) for x in range(x0, x1)]
    right = [(x1, y) for y in range(y0, y1)]
    bottom = [(x, y1) for x in range(x1, x0, -1)]
    left = [(x0, y) for y in range(y1, y0, -1)]
    return top + right + bottom + left


L_CORNERS = [(10, 8), (18, 8), (18, 11), (14, 11), (14, 14), (10, 14)]  # an L, its corners only


def inside_rectangle(x0, y0, x1, y1):
    return [(x, y) for x in range(x0 + 1, x1) for y in range(y0 + 1, y1)]


def inside_l():
    """Pixel centres strictly inside the L: its top bar 10 < x < 18, 8 < y < 11, and its leg 10 < x < 14,
    8 < y < 14 (the two overlap)."""
    return sorted({(x, y) for x in range(11, 18) for y in range(9, 11)} |
                  {(x, y) for x in range(11, 14) for y in range(9, 14)})


# session -> marks: (nodule id, malignancy or None, [(k, outline pixels, sop given?)])
SESSIONS = {
    1: [("A1", 4, [(k, rectangle(10, 8, 16, 12), True) for k in (4, 5, 6)]),
        ("B1", 2, [(k, rectangle(30, 25, 34, 29), True) for k in (8, 9)])],
    2: [("A2", 5, [(k, rectangle(11, 8, 17, 12), True) for k in (4, 5, 6)]),
        ("C2", 3, [(2, rectangle(36, 8, 40, 12), True)])],
    3: [("A3", 3, [(k, rectangle(10, 9, 16, 13), True) for k in (5, 6)] + [(6, rectangle(12, 10, 14, 12), False)]),
        ("B3", 3, [(k, rectangle(31, 25, 35, 29), True) for k in (8, 9)])],
    4: [("A4", 4, [(5, L_CORNERS, True)]),
        ("small", None, [(10, [(40, 30)], True)])],
}


def mark_voxels():
    """Each outlined mark's voxels (column, row, k), from the inequalities above, not from any outline."""
    return {
        "A1": [(x, y, k) for k in (4, 5, 6) for x, y in inside_rectangle(10, 8, 16, 12)],
        "A2": [(x, y, k) for k in (4, 5, 6) for x, y in inside_rectangle(11, 8, 17, 12)],
        # its hole on slice 6 takes the pixels inside and on the hole's outline: 12 <= x <= 14, 10 <= y <= 12
        "A3": [(x, y, k) for k in (5, 6) for x, y in inside_rectangle(10, 9, 16, 13)
               if k == 5 or not (12 <= x <= 14 and 10 <= y <= 12)],
        "A4": [(x, y, 5) for x, y in inside_l()],
        "B1": [(x, y, k) for k in (8, 9) for x, y in inside_rectangle(30, 25, 34, 29)],
        "B3": [(x, y, k) for k in (8, 9) for x, y in inside_rectangle(31, 25, 35, 29)],
        "C2": [(x, y, 2) for x, y in inside_rectangle(36, 8, 40, 12)],
    }


def lps(index):
    column, row, k = index
    return np.array([-100.0 + PIXEL * column, -100.0 + PIXEL * row, STEP * k])


def expected(names):
    """(centroid LPS mm, diameter mm) of a nodule: the mean of its marks' centroids and equal-volume diameters."""
    voxels = mark_voxels()
    centres = [lps(np.mean(voxels[name], axis=0)) for name in names]
    diameters = [(6 * len(voxels[name]) * VOXEL_MM3 / math.pi) ** (1 / 3) for name in names]
    return np.mean(centres, axis=0), float(np.mean(diameters))


def reading_xml(series_uid, sop_of_slice, sessions=SESSIONS, namespace=' xmlns="http://www.nih.gov"'):
    parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<LidcReadMessage uid="1.2.3"{namespace}>',
             "<ResponseHeader><Version>1.8.1</Version><TaskDescription>Second unblinded read</TaskDescription>"
             f"<SeriesInstanceUid>{series_uid}</SeriesInstanceUid><StudyInstanceUID>1.2.3.4</StudyInstanceUID>"
             "</ResponseHeader>"]
    for session, marks in sessions.items():
        parts.append(f"<readingSession><annotationVersion>3.12</annotationVersion>"
                     f"<servicingRadiologistID>reader-{session}</servicingRadiologistID>")
        for nodule_id, malignancy, rois in marks:
            parts.append(f"<unblindedReadNodule><noduleID>{nodule_id}</noduleID>")
            if malignancy is not None:
                parts.append(f"<characteristics><subtlety>4</subtlety><malignancy>{malignancy}</malignancy>"
                             "</characteristics>")
            for k, pixels, inclusion in rois:
                # reader 3 names the image of its slice 5 by a UID the series lacks: found by its z position
                sop = WRONG_SOP if (nodule_id, k) == ("A3", 5) else sop_of_slice[k]
                parts.append(f"<roi><imageZposition>{STEP * k:.6f} </imageZposition><imageSOP_UID>{sop}"
                             f"</imageSOP_UID><inclusion>{'TRUE' if inclusion else 'FALSE'}</inclusion>")
                parts += [f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in pixels]
                parts.append("</roi>")
            parts.append("</unblindedReadNodule>")
        if session == 1:
            parts.append(f"<nonNodule><nonNoduleID>N1</nonNoduleID><imageZposition>{STEP:.6f}</imageZposition>"
                         f"<imageSOP_UID>{sop_of_slice[1]}</imageSOP_UID><locus><xCoord>5</xCoord>"
                         "<yCoord>35</yCoord></locus></nonNodule>")
        parts.append("</readingSession>")
    parts.append("</LidcReadMessage>\n")
    return "\n".join(parts)


def write_case(root, patient="LIDC-IDRI-0001", seed=0):
    """A TCIA-shaped case: LIDC-IDRI/<patient>/<study>/<series>/ holding the slices and 069.xml."""
    folder = root / "LIDC-IDRI" / patient / "01-01-2000-NA-30178" / "3000566.000000-NA-03192"
    order = list(range(SHAPE[0]))
    random.Random(seed).shuffle(order)
    uid = write_series(folder, np.full(SHAPE, -800.0, np.float32), order=order, spacing=STEP, patient_id=patient)
    sop_of_slice = {}
    for path in folder.iterdir():
        ds = dcmread(path, stop_before_pixels=True)
        sop_of_slice[round(float(ds.ImagePositionPatient[2]) / STEP)] = ds.SOPInstanceUID
    (folder / "069.xml").write_text(reading_xml(uid, sop_of_slice))
    return folder, uid


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def point_of(row):
    return np.array([float(row[c]) for c in ("coordX", "coordY", "coordZ")])


@pytest.fixture
def case(tmp_path):
    folder, uid = write_case(tmp_path)
    return tmp_path, folder, uid


def test_an_lidc_case_gives_one_row_per_labelled_nodule_at_its_readers_mean_centroid(case):
    root, folder, uid = case
    data = root / "LIDC-IDRI"
    result = points_from_lidc(data, data, root / "points.csv")  # the XML beside its series: MASKS = the scans
    (item,) = result.series
    # three nodules: A (four readers), B (two), C (one); the small nodule's point and the non-nodule are not nodules
    assert [nodule.readers for nodule in item.nodules] == [1, 4, 2]  # ordered along z: C (k=2), A (4-6), B (8-9)
    assert [nodule.ratings for nodule in item.nodules] == [[3], [3, 4, 4, 5], [2, 3]]
    assert [nodule.malignancy for nodule in item.nodules] == [3.0, 4.0, 2.5]
    assert (item.small_marks, item.non_nodules, item.unplaced) == (1, 1, 0)
    rows = read_rows(root / "points.csv")
    # C's median of 3 is indeterminate: left out; A's 4 is malignant, B's 2.5 benign
    assert [(r["label"], r["readers"], r["malignancy"], r["ratings"]) for r in rows] == [
        ("malignant", "4", "4", "3 4 4 5"), ("benign", "2", "2.5", "2 3")]
    assert {r["seriesuid"] for r in rows} == {uid} and {r["patient_id"] for r in rows} == {"LIDC-IDRI-0001"}
    for row, names in zip(rows, (["A1", "A2", "A3", "A4"], ["B1", "B3"])):
        centre, diameter = expected(names)
        np.testing.assert_allclose(point_of(row), centre, atol=1e-6)
        assert float(row["diameter_mm"]) == pytest.approx(diameter, abs=1e-3)
    # A by hand: 45, 45, 21 and 23 voxels; pixel centroids (13, 10, 5), (14, 10, 5), A3's (13, 11, 5 + 6/21) (its
    # slice 6 keeps the 6 pixels around its hole, which is centred on the slice's centre) and the L's (304/23,
    # 241/23, 5): mean column 13.3043, row 10.4511, k 5.0714
    centre_a = lps(((13 + 14 + 13 + 304 / 23) / 4, (10 + 10 + 11 + 241 / 23) / 4, (5 + 5 + 5 + 6 / 21 + 5) / 4))
    np.testing.assert_allclose(point_of(rows[0]), centre_a, atol=1e-6)
    diameters = [(6 * n * VOXEL_MM3 / math.pi) ** (1 / 3) for n in (45, 45, 21, 23)]
    assert float(rows[0]["diameter_mm"]) == pytest.approx(np.mean(diameters), abs=1e-3)
    assert any("1 of 3 nodule(s)" in note for note in result.notes)
    assert any("1 mark(s) of nodules under 3 mm" in note and "1 non-nodule" in note for note in result.notes)
    assert result.label_source.startswith("median malignancy rating: above 3 malignant, below 3 benign")


def test_split_takes_the_lidc_points(case, run_cli):
    root, folder, uid = case
    data = root / "LIDC-IDRI"
    code, stdout, stderr = run_cli("points", data, "--scans", data, "--out", root / "p.csv")
    assert code == 0, stderr
    flat = " ".join(stdout.split())
    assert "2 nodule point(s)" in flat and "labels from median malignancy rating" in flat
    result = split_folder(data, root / "s.csv", ratios=(1.0, 0.0, 0.0), points_csv=root / "p.csv")
    rows = read_splits(root / "s.csv")
    assert len(result.rows) == 2 and sorted(row.label for row in rows) == ["benign", "malignant"]
    assert [row.point for row in rows] == [tuple(point_of(r)) for r in read_rows(root / "p.csv")]
    assert {row.patient_id for row in rows} == {"LIDC-IDRI-0001"}
    assert [skip.reason for skip in result.skipped] == [  # the XML beside the slices, said to be what it is
        "an LIDC-IDRI reading (XML), not an image: `perceiver-med points` turns it into points"]
    assert not [p for p in data.rglob("*") if p.suffix in (".csv", ".json")]  # nothing written beside the scans


def test_the_outline_is_not_the_nodule_and_a_hole_is_cut_out():
    inside, on = outline_fill(rectangle(10, 8, 16, 12))
    assert sorted(map(tuple, inside.tolist())) == inside_rectangle(10, 8, 16, 12)
    assert sorted(map(tuple, on.tolist())) == sorted(rectangle(10, 8, 16, 12))
    inside, on = outline_fill(L_CORNERS)  # corners only: the pixels on its edges are the outline too
    assert sorted(map(tuple, inside.tolist())) == inside_l() and len(inside_l()) == 23
    assert (14, 12) in map(tuple, on.tolist()) and (12, 14) in map(tuple, on.tolist())


def test_marks_closer_than_the_tolerance_are_split_until_no_nodule_has_more_marks_than_readers():
    def mark(x):
        return PlacedMark(NoduleMark(1, "n", 4, ()), np.zeros(3), 1.0, np.array([[x, 0.0, 0.0]]))

    # a chain 1.5 mm apart between two groups of 2: within 2 mm it is one nodule of 4 marks, too many for 3 readers
    marks = [mark(0.0), mark(0.1), mark(1.6), mark(1.7)]
    assert cluster(marks, 2.0, 4) == [[0, 1, 2, 3]]
    assert cluster(marks, 2.0, 3) == [[0, 1], [2, 3]]  # 2 * 0.9^k < 1.5 first at k = 2: 1.62, then 1.458
    assert cluster([], 2.0, 4) == []  # a reading of small nodules only
    with pytest.raises(ScanError, match="cannot be told apart"):
        cluster([mark(0.0), mark(0.0), mark(0.05)], 2.0, 2)


def test_the_label_rule():
    assert [label_of(m) for m in (1, 2, 2.5, 3, 3.5, 4, 5, None)] == [
        "benign", "benign", "benign", "", "malignant", "malignant", "malignant", ""]


def test_bad_readings_are_skipped_with_their_reason(case, tmp_path):
    root, folder, uid = case
    readings = tmp_path / "xml"
    readings.mkdir()
    (readings / "069.xml").write_text((folder / "069.xml").read_text())
    (readings / "broken.xml").write_text("<LidcReadMessage><ResponseHeader></LidcReadMessage>")
    (readings / "bomb.xml").write_text('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]>'
                                       "<LidcReadMessage>&a;</LidcReadMessage>")
    (readings / "cxr.xml").write_text('<IdriReadMessage xmlns="http://www.nih.gov"></IdriReadMessage>')
    other = reading_xml("1.2.3.4.5.6", {k: f"9.9.{k}" for k in range(SHAPE[0])}, namespace="")
    (readings / "other.xml").write_text(other)
    result = points_from_lidc(readings, root / "LIDC-IDRI", tmp_path / "p.csv")
    reasons = {skip.file.name: skip.reason for skip in result.skipped}
    assert [item.reading.name for item in result.series] == ["069.xml"] and len(read_rows(tmp_path / "p.csv")) == 2
    assert "not well-formed XML" in reasons["broken.xml"] and "DTD" in reasons["bomb.xml"]
    assert "chest radiograph" in reasons["cxr.xml"]
    assert "series 1.2.3.4.5.6 it reads is not among the scans" in reasons["other.xml"]
    # read without a namespace as with one
    assert len(read_lidc_xml(readings / "other.xml").marks) == len(read_lidc_xml(readings / "069.xml").marks) == 8


def test_mask_labels_are_refused_for_lidc_readings_and_nothing_is_written(case):
    root, folder, uid = case
    data = root / "LIDC-IDRI"
    with pytest.raises(UserError, match="median malignancy"):
        mask_points(data, data, root / "p.csv", "1=benign")
    with pytest.raises(UserError, match="inside the input folder"):
        mask_points(data, data, folder / "p.csv")
    assert not (root / "p.csv").exists() and not (folder / "p.csv").exists()


def test_no_usable_reading_is_one_line_exit_2_through_the_installed_command(case, run_installed, tmp_path):
    root, folder, uid = case
    readings = tmp_path / "xml"
    readings.mkdir()
    (readings / "other.xml").write_text(reading_xml("1.2.3.4.5.6", {k: f"9.9.{k}" for k in range(SHAPE[0])}))
    code, stdout, stderr = run_installed("points", readings, "--scans", root / "LIDC-IDRI", "--out", tmp_path / "p.csv")
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "Traceback" not in stdout + stderr, stderr
    assert "no LIDC reading" in stderr and "is not among the scans" in stderr
    assert not (tmp_path / "p.csv").exists() and not list(tmp_path.glob(".p.csv*"))
