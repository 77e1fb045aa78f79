"""A run's config.json is checked whole before anything is built from it: a bad value is one line naming the file
and the field, exit 2, never a wrong probability, a traceback or a large allocation."""
from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from perceiver_med.errors import UserError
from perceiver_med.inputs.preprocess import PreprocessConfig
from perceiver_med.run.rundir import load_run_config
from perceiver_med.configs import from_dict, to_dict
from perceiver_med.training.config import Decision, RunConfig, TrainConfig
from tests.conftest import installed_command

FIXTURE_RUNS = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_runs" / "runs"


def _edited(run: Path, where: Path, edit) -> Path:
    """A copy of `run` in `where` whose config.json went through edit(data) (which may return new text)."""
    copy = where / "run"
    shutil.copytree(run, copy)
    data = json.loads((copy / "config.json").read_text())
    text = edit(data)
    (copy / "config.json").write_text(text if isinstance(text, str) else json.dumps(data, indent=2))
    return copy


def _set(*keys, value):
    def edit(data):
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value
    return edit


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------- the generic pair
# Settings added after the fixture runs were written, with the default that keeps their behaviour; and those the
# fixtures hold that are now the machine's (Runtime), read and dropped.
ADDED_SINCE_THE_FIXTURES = {"train": {"stop_loss": 0.0, "sampler": "shuffle"}}
RETIRED_SINCE_THE_FIXTURES = {"train": ("device", "num_workers")}


def test_every_stored_run_reads_back_to_the_same_file_and_the_same_object():
    configs = sorted(FIXTURE_RUNS.glob("**/config.json"))
    assert len(configs) == 8
    for path in configs:
        data = json.loads(path.read_text())
        config = RunConfig.from_json(path.read_text())
        written = json.loads(config.to_json())
        for section, added in ADDED_SINCE_THE_FIXTURES.items():
            for key, default in added.items():
                assert key not in data[section] and written[section].pop(key) == default, (path, key)
        for section, retired in RETIRED_SINCE_THE_FIXTURES.items():
            for key in retired:
                assert key not in written[section] and data[section].pop(key) is not None, (path, key)
        assert written == data, path
        assert RunConfig.from_json(config.to_json()) == config
        assert isinstance(config.decision, Decision) and isinstance(config.preprocess, PreprocessConfig)


def test_from_dict_checks_types_field_by_field_and_names_the_path():
    assert from_dict(TrainConfig, {"lr": 1}) == TrainConfig(lr=1.0)  # a whole number is a float
    assert to_dict(TrainConfig(epochs=3))["epochs"] == 3
    for data, message in [({"epochs": 1.5}, "epochs must be a whole number"),
                          ({"epochs": True}, "epochs must be a whole number"),
                          ({"lr": "fast"}, "lr must be a finite number"),
                          ({"lr": float("inf")}, "lr must be a finite number"),
                          ({"lr": 0}, "lr must be more than 0"),
                          ({"precision": "fp16"}, "precision must be bf16 or fp32 or auto"),
                          ({"learning_rate": 1}, "learning_rate is not a setting"),
                          ([], "must be a JSON object")]:
        with pytest.raises(ValueError, match=message):
            from_dict(TrainConfig, data)
    with pytest.raises(ValueError, match=r"^decision\.threshold must be null or a probability"):
        from_dict(Decision, {"threshold": 1.5}, "decision")
    # where and with how many processes an earlier run trained is not what it is: read, whatever it says, and dropped
    assert from_dict(TrainConfig, {"device": "tpu", "num_workers": -1, "precision": "bf16"}) == TrainConfig(
        precision="bf16")


@pytest.mark.parametrize("part,key", [((), "num_latent"), ((), "stem_norm"), (("vit",), "pool"),
                                      (("cnn",), "pool_grid")], ids=lambda v: str(v))
def test_a_model_key_its_config_does_not_declare_is_one_line_naming_it(part, key, tmp_path):
    """config.json reaches a model's constructor only through its config dataclass: a key it does not declare (a
    misspelling, or a constructor argument runs do not store) is refused, named by its path."""
    run = FIXTURE_RUNS / ("knee-hybrid" if part else "knee-perceiver")
    copy = _edited(run, tmp_path, _set("model", *part, key, value="mean" if key == "pool" else 1))
    with pytest.raises(UserError) as caught:
        load_run_config(copy)
    line = str(caught.value)
    assert "\n" not in line and "config.json" in line
    assert f"model.{'.'.join((*part, key))} is not a setting this version knows" in line, line


# ---------------------------------------------------------------- the named cases, through the installed command
BAD_VALUES = [
    (("decision", "temperature"), float("nan"), "decision.temperature"),
    (("decision", "temperature"), 0, "decision.temperature"),
    (("decision", "temperature"), -1, "decision.temperature"),
    (("decision", "threshold"), 2, "decision.threshold"),
    (("decision", "threshold"), float("nan"), "decision.threshold"),
    (("positive_class",), "middle", "positive_class 'middle' is not one of the classes"),
]


@pytest.mark.parametrize("keys,value,named", BAD_VALUES, ids=lambda v: str(v))
def test_a_bad_value_is_one_line_naming_config_json_and_the_field(keys, value, named, tiny_run, knee, tmp_path,
                                                                  run_installed):
    run = _edited(tiny_run.run, tmp_path, _set(*keys, value=value))
    code, out, err = run_installed("predict", run, knee / "data", "--out", tmp_path / "p.csv", "--device", "cpu")
    line = _one_line(err)
    assert code == 2 and "config.json" in line and named in line, err
    assert not (tmp_path / "p.csv").exists()
    if keys[0] == "decision":  # evaluate reads the same file the same way (it ended in scikit-learn's traceback)
        code, out, err = run_installed("evaluate", run, "--device", "cpu")
        assert code == 2 and named in _one_line(err)


def test_a_deeply_nested_file_is_refused_in_one_line(tiny_run, knee, tmp_path, run_installed):
    nested = _edited(tiny_run.run, tmp_path / "a", _set("model", "num_latents", value=json.loads("[" * 200 + "]" * 200)))
    code, _, err = run_installed("predict", nested, knee / "data", "--out", tmp_path / "p.csv", "--device", "cpu")
    assert code == 2 and "model.num_latents must be a whole number" in _one_line(err)
    deep = _edited(tiny_run.run, tmp_path / "b", lambda data: '{"classes": ' + "[" * 100_000 + "]" * 100_000 + "}")
    code, _, err = run_installed("predict", deep, knee / "data", "--out", tmp_path / "p.csv", "--device", "cpu")
    assert code == 2 and "nested too deeply" in _one_line(err)


MEASURE = """
import json, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"code": done.returncode, "err": done.stderr,
                  "peak_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def test_a_model_far_larger_than_its_weights_is_refused_before_it_is_built(tiny_run, knee, tmp_path):
    # 5,000,000 latents of width 32 are 640 MB of float32 (and more for their optimiser-free buffers): the weights
    # file's header says 8 latents, so nothing of that size may be allocated
    run = _edited(tiny_run.run, tmp_path, _set("model", "num_latents", value=5_000_000))
    done = subprocess.run([sys.executable, "-c", MEASURE, installed_command(), "predict", str(run), str(knee / "data"),
                           "--out", str(tmp_path / "p.csv"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    result = json.loads(done.stdout)
    line = _one_line(result["err"])
    # refused by the option's range (tests/test_number_ranges.py), or where it is in range, by the weights' shapes
    assert result["code"] == 2 and ("describes a model other than model.safetensors holds" in line
                                    or "num_latents must be from 1 to 4096" in line), line
    assert "latents" in line and "5000000" in line
    assert result["peak_kb"] < 1_000_000, result["peak_kb"]  # a 5,000,000-latent model alone is about 2.8 GB


def test_an_unknown_positive_class_is_not_called_a_class_count_mismatch(tiny_run, tmp_path):
    run = _edited(tiny_run.run, tmp_path, _set("positive_class", value="middle"))
    with pytest.raises(UserError) as caught:
        load_run_config(run)
    assert "positive_class" in str(caught.value) and "outputs" not in str(caught.value)


# ---------------------------------------------------------------- any value anywhere
def _leaves(data, path=()):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(data, list) and data:
        for k, value in enumerate(data):
            yield from _leaves(value, (*path, k))
    else:
        yield path


def _digests(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


REPLACEMENTS = [float("nan"), float("inf"), -1, 0, 1e9, "x", None, [1]]


def test_any_value_of_config_json_replaced_is_a_finite_prediction_or_one_line(tiny_run, knee, run_cli):
    from hypothesis import HealthCheck, example, given, settings, strategies as st

    leaves = list(_leaves(json.loads((tiny_run.run / "config.json").read_text())))
    ran = []

    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(leaf=st.sampled_from(leaves), value=st.sampled_from(REPLACEMENTS))
    # found by trying every leaf with every replacement (a traceback, or a warning beside the one line, each)
    @example(leaf=("model", "name"), value=float("nan"))
    @example(leaf=("model", "name"), value=[1])
    @example(leaf=("model", "in_channels"), value=0)
    @example(leaf=("model", "patch_size"), value=0)
    def case(leaf, value):
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder)
            run = _edited(tiny_run.run, folder, _set(*leaf, value=value))
            before = _digests(run, knee / "data")
            code, _, err = run_cli("predict", run, knee / "data", "--out", folder / "p.csv", "--device", "cpu")
            assert code in (0, 2), (leaf, value, code, err)
            if code == 2:
                line = _one_line(err)
                assert line, (leaf, value)
            else:
                with open(folder / "p.csv", newline="") as handle:
                    rows = list(csv.DictReader(handle))
                probs = [float(row[c]) for row in rows for c in row if c.startswith("prob_")]
                assert rows and all(math.isfinite(p) and 0 <= p <= 1 for p in probs), (leaf, value)
            assert _digests(run, knee / "data") == before, (leaf, value)
            ran.append((leaf, value, code))

    case()
    print(f"{len(ran)} cases: {sum(code == 2 for *_, code in ran)} refused, {sum(code == 0 for *_, code in ran)} "
          "predicted")
    assert len(ran) >= 20
