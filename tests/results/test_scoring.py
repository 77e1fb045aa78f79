"""Scoring's units read the data as io/ reads it: a knee's side is the laterality a label would have had."""
from __future__ import annotations

import numpy as np
from PIL import Image

from perceiver_med.inputs.splits import read_splits
from perceiver_med.io import discover
from perceiver_med.inputs.labels import laterality_of
from perceiver_med.results.scoring import unit_keys

NAMES = ["OAI9062645_BaseLine_3_de3d1_SAG_3D_DESS_WE_LEFT.nii.gz_0.png", "OAI9011111_WE_Right.nii.gz_4.png",
         "knee_left2.png", "bright_x.png", "leftover_knee.png", "left_and_right.png", "knee.png"]


def test_a_knees_side_in_the_patient_level_scores_is_the_laterality_labels_read(tmp_path):
    """Oracle: inputs.labels.laterality_of on the real files; scoring groups knees by the same side or by none."""
    for name in NAMES:
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / name)
    (tmp_path / "splits.csv").write_text("path,label,patient_id,split\n" + "".join(
        f"{name},benign,P{k},test\n" for k, name in enumerate(NAMES)))  # not a left/right run: names decide
    rows = read_splits(tmp_path / "splits.csv")
    expected = [laterality_of(discover(tmp_path / name).scans[0]) for name in NAMES]
    assert expected == ["left", "right", "left", None, None, None, None]
    for row, side in zip(rows, expected):
        keys = unit_keys([row], ["benign", "malignant"])["knee"]
        assert keys == (None if side is None else [(row.patient_id, side[0])]), row.path.name
