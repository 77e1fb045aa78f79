"""The README's Library example runs as printed: a user copies it, so it is code, and it is tested as code."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _library_example() -> str:
    section = README.read_text(encoding="utf-8").split("\n## Library\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_library_example_runs_as_printed(tmp_path, run_installed):
    # What the example expects in its working folder: a splits file, and new scans to predict.
    assert run_installed("synth", "knee", tmp_path / "knee", "--patients", 12)[0] == 0
    assert run_installed("split", tmp_path / "knee", "--out", tmp_path / "splits.csv")[0] == 0
    assert run_installed("synth", "knee", tmp_path / "new_scans", "--patients", 3, "--seed", 7)[0] == 0
    (tmp_path / "example.py").write_text(_library_example(), encoding="utf-8")
    env = {**os.environ, "PERCEIVER_MED_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    # The scored accuracy is a fraction of the unseen samples, or None where all were the run's own.
    assert any(re.fullmatch(r"\(((0|1)(\.\d+)?|None), \d+, \{.*\}\)", line) for line in lines), lines
    assert (tmp_path / "predictions.csv").is_file() and (tmp_path / "runs" / "p1" / "config.json").is_file()
