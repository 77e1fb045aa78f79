"""The layout keeps one owner per concept (what the redesign issue asks grep to show): model names in the model
registry, input-kind names in inputs/kinds.py, run file names in run/rundir.py, and the chain probabilities ->
temperature -> threshold in run/predictor.py. Checked on the syntax tree, so docstrings and messages may name them."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "perceiver_med"


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(), str(path))


def _docstrings(tree) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _constants(tree, values: set[str]):
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            skip.update(id(part) for part in node.values)  # text inside f-strings: messages
        if isinstance(node, ast.Constant) and node.value in values and id(node) not in skip:
            yield node


@pytest.mark.parametrize("values,owners", [
    ({"perceiver", "vit-rollout-cnn", "cnn", "vit"}, {"models/registry.py"}),
    ({"grid", "point"}, {"inputs/kinds.py"}),  # "image" is also a scan kind (beside "volume"), so not checked
    ({"config.json", "model.safetensors", "checkpoint.pt", "splits.csv", "cv.json", "metrics.json", "history.csv",
      "curves.png"},
     {"run/rundir.py", "workflows/demo.py"}),  # the demo's own splits.csv is not a run's
])
def test_each_name_is_spelt_by_its_owner_alone(values, owners):
    strays = [f"{name}:{node.lineno} {node.value!r}" for name, tree in _modules()
              for node in _constants(tree, values) if not any(name.startswith(owner) for owner in owners)]
    assert not strays, strays


def test_the_split_names_are_listed_by_their_owner_alone():
    """A tuple, list or set naming train, val and test together is a copy of inputs.splits.SPLITS."""
    split_names = {"train", "val", "test"}
    strays = [f"{name}:{node.lineno}" for name, tree in _modules() if name != "inputs/splits.py"
              for node in ast.walk(tree) if isinstance(node, (ast.Tuple, ast.List, ast.Set))
              and split_names <= {elt.value for elt in node.elts if isinstance(elt, ast.Constant)}]
    assert not strays, strays


def test_a_side_is_read_from_a_file_name_by_io_labels_alone():
    """The LEFT/RIGHT pattern of AKOA/OAI names is written once: labels and patient-level knees read it alike."""
    strays = [f"{name}:{node.lineno}" for name, tree in _modules() if name != "io/labels.py"
              for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
              and "left|right" in node.value.lower()]
    assert not strays, strays


def test_no_module_imports_another_modules_private_names():
    """A name another module needs is public: importing `_name` hides a dependency the owner does not know of."""
    private = [f"{name}:{node.lineno} {alias.name}" for name, tree in _modules() for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("perceiver_med")
               for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not private, private


def test_the_decision_chain_is_composed_in_the_predictor_alone():
    """A function that both calibrates (apply_temperature) and thresholds (decisions) is the chain itself."""
    composers = []
    for name, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                called = {call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")
                          for call in ast.walk(node) if isinstance(call, ast.Call)}
                if {"apply_temperature", "decisions"} <= called:
                    composers.append(f"{name}:{node.name}")
    assert composers == ["run/predictor.py:decide"]


# The packages in the order data moves; a module imports only from its own layer or those before it.
LAYERS = (("__init__.py", "errors.py", "files.py", "csvfiles.py"), ("io",), ("inputs", "synth"), ("models",),
          ("stats",), ("training",), ("run",), ("results",), ("workflows",), ("cli.py", "__main__.py"))


def _layer(module: str) -> int:
    """`module` as a path inside the package ("run/rundir.py") or a dotted name ("perceiver_med.run.rundir")."""
    first = module.split("/")[0] if "/" in module or module.endswith(".py") else (
        module.split(".")[1] if "." in module else "__init__")
    names = {first, f"{first}.py"}
    return next(level for level, members in enumerate(LAYERS) if names & set(members))


def test_imports_follow_the_data_downward():
    """Lazy imports inside functions count too: an upward import is a cycle waiting to happen."""
    upward = []
    for name, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("perceiver_med"):
                targets = [node.module] if node.module != "perceiver_med" else [
                    f"perceiver_med.{alias.name}" for alias in node.names if alias.name != "__version__"]
                upward += [f"{name}:{node.lineno} -> {target}" for target in targets
                           if _layer(target) > _layer(name)]
    assert not upward, upward
