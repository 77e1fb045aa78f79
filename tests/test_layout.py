"""The layout keeps one owner per concept (what the redesign issue asks grep to show): model names in the model
registry, input-kind names in inputs/kinds.py, scan kinds in io/scans.py, run file names in run/rundir.py, and the chain
probabilities -> temperature -> threshold in stats/decision.py (shared by the PyTorch and the ONNX predictor). Checked on
the syntax tree, so docstrings and messages may name them."""
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
    ({"grid", "point"}, {"inputs/kinds.py"}),
    # "image" is an input kind and a scan kind (what a file holds: io/scans.py); below inputs, the readers also spell
    # it for the slice ordering of a single image and for their own name
    ({"image"}, {"inputs/kinds.py", "io/"}),
    ({"volume"}, {"io/scans.py"}),
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


def test_a_side_is_read_from_a_file_name_by_inputs_labels_alone():
    """The LEFT/RIGHT pattern of AKOA/OAI names is written once: labels and patient-level knees read it alike."""
    strays = [f"{name}:{node.lineno}" for name, tree in _modules() if name != "inputs/labels.py"
              for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
              and "left|right" in node.value.lower()]
    assert not strays, strays


def test_no_module_imports_another_modules_private_names():
    """A name another module needs is public: importing `_name` hides a dependency the owner does not know of."""
    private = [f"{name}:{node.lineno} {alias.name}" for name, tree in _modules() for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("perceiver_med")
               for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not private, private


def test_the_decision_chain_is_composed_in_one_place():
    """A function that both calibrates (calibrate, apply_temperature) and thresholds (decisions) is the chain itself:
    written once, below the models, for the PyTorch and the ONNX predictor alike."""
    composers = []
    for name, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                called = {call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")
                          for call in ast.walk(node) if isinstance(call, ast.Call)}
                if "decisions" in called and called & {"calibrate", "apply_temperature"}:
                    composers.append(f"{name}:{node.name}")
    assert composers == ["stats/decision.py:decide"]


def _called(call: ast.Call) -> str:
    return call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")


def _names_a_temperature(node) -> bool:
    """An expression that mentions a temperature: `t`, `T`, `temperature`, `self.temperatures[k]`..."""
    names = [sub.id if isinstance(sub, ast.Name) else sub.attr for sub in ast.walk(node)
             if isinstance(sub, (ast.Name, ast.Attribute))]
    return any(name in ("t", "T", "temp") or "temperature" in name.lower() for name in names)


def temperature_strays(modules) -> list[str]:
    """Where a module other than the chain's (stats/decision.py: calibrate) and the predictor's (run/predictor.py:
    ensembles) applies a temperature or averages an ensemble's members: a call of apply_temperature or
    mean_of_members, or a softmax of something divided by a temperature (softmax(logits / t))."""
    strays = []
    for name, tree in modules:
        if name in ("run/predictor.py", "stats/decision.py"):
            continue
        for call in (node for node in ast.walk(tree) if isinstance(node, ast.Call)):
            called = _called(call)
            scaled = called.endswith("softmax") and any(
                isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.Div) and _names_a_temperature(sub.right)
                for argument in call.args for sub in ast.walk(argument))
            if called in ("apply_temperature", "mean_of_members") or scaled:
                strays.append(f"{name}:{call.lineno} {called}")
    return strays


def test_probabilities_are_calibrated_and_averaged_in_the_predictor_alone():
    """The temperature reaches a run's probabilities through stats/decision.py alone (calibrate), and an ensemble's
    members are averaged in run/predictor.py, each calibrated by its own chain: no model, workflow or result applies one itself.
    (An oracle that this can fail: the ensemble model this replaced, softmax(member(x).float() / t).)"""
    before = ast.parse("probs = mean_of_members([torch.softmax(member(x).float() / t, dim=1) for member, t in pairs])")
    assert len(temperature_strays([("models/ensemble.py", before)])) == 2
    assert temperature_strays(_modules()) == []


# The packages in the order data moves; a module imports only from its own layer or those before it.
LAYERS = (("__init__.py", "errors.py", "files.py", "csvfiles.py", "configs.py"), ("io",), ("inputs", "synth"), ("models",),
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


# -------------------------------------------------------------- a thin command line; no settings in the environment
NOT_LIBRARY_WORK = {"perceiver_med", "perceiver_med.errors", "perceiver_med.results.display"}  # version, errors, tables


def _imports(nodes) -> dict[str, tuple[str, str | None]]:
    """Local name -> (module, name in it; None for a module itself), for perceiver_med's imports in `nodes`."""
    found = {}
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("perceiver_med"):
            for alias in node.names:
                found[alias.asname or alias.name] = (node.module, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("perceiver_med"):
                    found[alias.asname or alias.name] = (alias.name, None)
    return found


def _is_library_work(module: str, name: str | None, attribute: str | None = None) -> bool:
    """A call into the library that does work: not a request or result type being built, not a parse_* helper
    (turning option text into values is the command's own job), not a printing helper."""
    import importlib
    import inspect as python_inspect

    if module in NOT_LIBRARY_WORK:
        return False
    target = importlib.import_module(module)
    if name is not None:
        target = getattr(target, name)
        if python_inspect.ismodule(target) and attribute is not None:
            return _is_library_work(target.__name__, attribute)
    elif attribute is not None:
        target = getattr(target, attribute)
    called = attribute or name
    return not python_inspect.isclass(target) and not called.startswith("parse_")


def library_calls_of_commands(cli_path: Path) -> dict[str, list[str]]:
    """For each command of a cli.py: the library calls its body makes, and those of the cli.py helpers it calls."""
    tree = ast.parse(cli_path.read_text())
    module_imports = _imports(tree.body)
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}

    def calls(function: ast.FunctionDef, seen: set[str]) -> list[str]:
        body = [node for statement in function.body for node in ast.walk(statement)]  # not the options' help
        imported = {**module_imports, **_imports(body)}
        found = []
        for call in (node for node in body if isinstance(node, ast.Call)):
            if isinstance(call.func, ast.Name):
                name = call.func.id
                if name in imported and _is_library_work(*imported[name]):
                    found.append(name)
                elif name in functions and name not in seen:  # a helper of cli.py: its calls count too
                    found += calls(functions[name], seen | {name})
            elif isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name):
                owner = call.func.value.id
                if owner in imported and _is_library_work(*imported[owner], call.func.attr):
                    found.append(f"{owner}.{call.func.attr}")
            elif isinstance(call.func, ast.Attribute):  # a method of a library object built on the spot
                root = call.func.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                if (isinstance(root, ast.Call) and isinstance(root.func, ast.Name) and root.func.id in imported
                        and imported[root.func.id][0] not in NOT_LIBRARY_WORK):
                    found.append(ast.unparse(call.func))
        return found

    def is_command(function: ast.FunctionDef) -> bool:
        return any(isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command"
                   for d in function.decorator_list)

    return {name: calls(function, {name}) for name, function in functions.items() if is_command(function)}


def test_each_command_calls_one_library_function():
    """A command parses its options, calls one library function with them (a request object where there are
    many), and prints what it returns; work between two library calls belongs in the library."""
    commands = library_calls_of_commands(PACKAGE / "cli.py")
    assert len(commands) >= 12, sorted(commands)
    assert {name: found for name, found in commands.items() if len(found) != 1} == {}


# where each environment variable the package reads is read: the user's cache folder, --max-voxels' default
# (read by the command line alone), and the variables torchrun sets for each process
ENVIRONMENT_READS = {("inputs/cache.py", "'PERCEIVER_MED_CACHE'"), ("cli.py", "MAX_VOXELS_VARIABLE"),
                     ("cli.py", "'RANK'"), ("training/engine.py", "'RANK'"), ("training/engine.py", "'WORLD_SIZE'"),
                     ("training/engine.py", "'LOCAL_RANK'")}


def test_no_setting_travels_through_the_environment():
    """The package never writes an environment variable (a setting for another process travels as an argument),
    and reads only the variables listed above, where they are listed."""
    reads, writes = set(), []
    for name, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "putenv", "unsetenv"):
                writes.append(f"{name}:{node.lineno}")
            if not (isinstance(node, ast.Attribute) and node.attr == "environ"):
                continue
            parent = next(p for p in ast.walk(tree) if node in ast.iter_child_nodes(p))
            grand = next((p for p in ast.walk(tree) if parent in ast.iter_child_nodes(p)), None)
            if isinstance(parent, ast.Attribute) and parent.attr == "get" and isinstance(grand, ast.Call):
                reads.add((name, ast.unparse(grand.args[0])))
            elif isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Load):
                reads.add((name, ast.unparse(parent.slice)))
            else:
                writes.append(f"{name}:{node.lineno}")
    assert not writes, writes
    assert reads <= ENVIRONMENT_READS, reads - ENVIRONMENT_READS


def test_no_module_is_named_like_another():
    """One name, one module: `from perceiver_med.x import registry` never leaves a reader guessing which."""
    from collections import Counter

    package = Path(__file__).resolve().parents[1] / "perceiver_med"
    names = Counter(path.name for path in package.rglob("*.py") if path.name not in ("__init__.py", "__main__.py"))
    assert [name for name, count in names.items() if count > 1] == []
