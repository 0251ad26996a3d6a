"""The package's shape: its packages in layers, each importing only from its own layer and those below,
no import cycle between packages nor between modules, counting imports inside functions too.

Importing `training.a.b` runs `training/a/__init__.py` first, so from outside `training.a` it counts as
importing that package too (from inside it, the package is being or has been imported already). The root
package `training` is not counted that way, as it is always imported already; a module that imports a
name from it (`from training import load_model`) imports the package's public face, the top layer.
"""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "training"
COMMANDS = (
    "training.train",
    "training.evaluate",
    "training.caption",
    "training.report",
    "training.serve",
    "training.export",
    "training.data.demo",
)
# Lowest first. A package imports from its own layer and those below, never above. A command sits on top
# wherever its file is (data.demo), as do the helpers only commands use and the package's public face.
LAYERS = (
    ("training.errors",),
    ("training.configs", "training.utils"),  # utils: io, logging, precision, seeds, private Keras
    ("training.run",),  # the run folder: file names, identity and resume, lock, tracker, MLflow, registry
    ("training.data",),  # captions, vocabulary, tf.data (and pool_regions, the one pooling op)
    ("training.features",),  # extractors and the feature store
    ("training.models",),
    ("training.evaluation",),  # decoding, scoring, the evaluator, a split's results
    ("training.captioner",),
    ("training.callbacks",),
    ("training.trainers",),
    (*COMMANDS, "training.cli", "training.kaggle_utils", "training"),
)
# The only imports that go up a layer, each with its reason. An entry allows the one module to import
# the one module named (and the packages Python runs on the way), nothing more.
ALLOWED_UPWARD = {
    ("training.utils", "training.run.experiment_tracking"): "`from training.utils import ExperimentTracker`, a path the"
    " project's first README gives users: a PEP 562 __getattr__ imports it on first use only",
    ("training.utils.model_versioning", "training.run.model_versioning"): "`from training.utils.model_versioning import"
    " ModelVersionManager`, the README's path: a two-line alias module",
    ("training.run.model_versioning", "training"): "ModelVersionManager.load_model loads through training.load_model,"
    " which registers every Keras class a registered model may hold, so a fresh process can load it",
}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str], package_dir: Path = PACKAGE) -> set[str]:
    """The package modules `path` imports anywhere in its code (module level, functions, classes)."""
    name = module_name(path, package_dir)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    ancestors = {".".join(package.split(".")[:n]) for n in range(1, len(package.split(".")) + 1)}
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..y import z
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from a import b` imports module a.b when b is a module, else a.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:  # importing a.b.c runs the __init__ of a.b first, unless it is running already
            parts = target.split(".")
            found |= {".".join(parts[:n]) for n in range(2, len(parts) + 1)} - ancestors
            if target == PACKAGE.name:  # a name of the root package itself
                found.add(target)
    return {target for target in found if target in modules and target != name}


def package_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Every module of `package` -> the modules of it that it imports."""
    paths = sorted(package.rglob("*.py"))
    modules = {module_name(p, package) for p in paths}
    return {module_name(p, package): imports_of(p, modules, package) for p in paths}


def unit(module: str) -> str:
    """What a module counts as in the layers: a command itself, else its top package (training.data) or module."""
    return module if module in COMMANDS else ".".join(module.split(".")[:2])


def without_allowed(graph: dict[str, set[str]], allowed=ALLOWED_UPWARD) -> dict[str, set[str]]:
    """The module graph without the allowed upward imports (and the packages Python runs on their way)."""

    def is_allowed(module, target):
        return any(module == a and (target == b or b.startswith(target + ".")) for a, b in allowed)

    return {module: {t for t in targets if not is_allowed(module, t)} for module, targets in graph.items()}


def units_graph(graph: dict[str, set[str]], allowed=ALLOWED_UPWARD) -> dict[str, set[str]]:
    """The import graph between units, without the allowed upward imports."""
    units: dict[str, set[str]] = {}
    for module, targets in without_allowed(graph, allowed).items():
        units.setdefault(unit(module), set()).update({unit(t) for t in targets} - {unit(module)})
    return units


def layer_of(name: str, layers=LAYERS) -> int:
    return next(rank for rank, members in enumerate(layers) if name in members)


def upward_imports(units: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """Every import of a unit from a higher layer than its own, as 'a -> b'."""
    return sorted(
        f"{source} -> {target}"
        for source, targets in units.items()
        for target in targets
        if layer_of(target, layers) > layer_of(source, layers)
    )


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, colouring the modules)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_checker_finds_a_cycle_and_reads_imports_inside_functions(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    graph = package_graph()
    # training.captioner imports training.evaluation.loading only inside Captioner.from_artifacts.
    assert "training.evaluation.loading" in graph["training.captioner"]
    assert "training" in graph["training.run.model_versioning"]  # from training import load_model, in a method
    assert "training.run.artifacts" in graph["training.run.lifecycle"]
    assert "training.utils" in graph["training.run.artifacts"]  # through training.utils.io


def test_no_import_cycle_between_the_package_modules():
    cycle = find_cycle(without_allowed(package_graph()))  # the aliases import on first use only
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_package_has_a_layer():
    missing = sorted({unit(module) for module in package_graph()} - {name for layer in LAYERS for name in layer})
    assert not missing, f"give these a place in LAYERS: {missing}"


def test_packages_import_only_from_their_layer_and_below():
    upward = upward_imports(units_graph(package_graph()))
    assert not upward, "imports that go up a layer: " + ", ".join(upward)


def test_no_import_cycle_between_packages():
    cycle = find_cycle(units_graph(package_graph()))
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle)


def test_the_upward_imports_allowed_are_all_still_made():
    graph = package_graph()
    stale = [edge for edge in ALLOWED_UPWARD if edge[1] not in graph[edge[0]]]
    assert not stale, f"no longer imported, drop them from ALLOWED_UPWARD: {stale}"
    assert upward_imports(units_graph(graph, allowed={}))  # without the exceptions the check does fail


def test_an_upward_import_planted_in_a_copy_of_the_package_fails_the_check(tmp_path):
    copy = tmp_path / PACKAGE.name
    copy.mkdir()
    for path in PACKAGE.rglob("*.py"):
        target = copy / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    assert not upward_imports(units_graph(package_graph(copy)))  # the copy passes as the package does
    # Inside a function, as a lazy import would hide it.
    (copy / "data" / "planted.py").write_text("def decode():\n    from training.captioner import Captioner\n")
    units = units_graph(package_graph(copy))
    assert upward_imports(units) == ["training.data -> training.captioner"]
    # The same through the package's public face, from a module the exceptions do not name.
    (copy / "data" / "planted.py").write_text("def decode():\n    from training import Captioner\n")
    assert upward_imports(units_graph(package_graph(copy))) == ["training.data -> training"]


def test_the_checker_finds_an_upward_import_and_a_cycle_between_packages():
    graph = {  # module level: features.store -> data.tokenizer is fine, data.dataset -> features.base goes up
        "training.data.dataset": {"training.features", "training.features.base"},
        "training.data.tokenizer": set(),
        "training.features.base": set(),
        "training.features.store": {"training.data", "training.data.tokenizer"},
    }
    units = units_graph(graph)
    assert units == {"training.data": {"training.features"}, "training.features": {"training.data"}}
    assert upward_imports(units) == ["training.data -> training.features"]
    assert find_cycle(units) == ["training.data", "training.features", "training.data"]


# The import paths the project's first README gives users: they must keep working.
CONTRACT_IMPORTS = """
from training.utils import ExperimentTracker, set_global_seed
from training.utils.model_versioning import ModelVersionManager
from training.configs import load_config
from training.features import get_feature_extractor
from training.features.base import BaseFeatureExtractor
from training.trainers.trainer import CallbackFactory
from training.features.registry import FeatureExtractorRegistry
from training.callbacks.metrics import MetricsCallback
from training.kaggle_utils import create_kaggle_config, setup_kaggle_training
from training.train import TrainingPipeline
from training.run.experiment_tracking import ExperimentTracker as Home
from training.run.model_versioning import ModelVersionManager as RegistryHome
assert ExperimentTracker is Home and ModelVersionManager is RegistryHome
print("ok")
"""


def test_the_readme_import_paths_work_in_a_fresh_interpreter():
    done = subprocess.run([sys.executable, "-c", CONTRACT_IMPORTS], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_commands_are_imported_by_no_other_module():
    commands = set(COMMANDS)
    graph = package_graph()
    importers = {
        (module, target) for module, targets in graph.items() for target in targets & commands if module != "training"
    }  # the package's lazy names (TrainingPipeline) are its public face
    assert not importers, f"commands imported by other modules: {sorted(importers)}"


def test_the_report_reads_the_feature_index_the_store_writes():
    from training.features.store import INDEX_FILE
    from training.run.artifacts import FEATURES_INDEX

    assert FEATURES_INDEX == INDEX_FILE
