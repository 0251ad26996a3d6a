"""The package's shape: no import cycle between its modules, counting imports inside functions too.

Importing `training.a.b` runs `training/a/__init__.py` first, so from outside `training.a` it counts as
importing that package too (from inside it, the package is being or has been imported already). The root
package `training` is left out of that rule: its own imports are all inside functions (its lazy names),
which would otherwise put every module on a loop through it.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "training"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports anywhere in its code (module level, functions, classes)."""
    name = module_name(path)
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
    return {target for target in found if target in modules and target != name}


def package_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


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
    assert "training.run.artifacts" in graph["training.run.lifecycle"]
    assert "training.utils" in graph["training.run.artifacts"]  # through training.utils.io


def test_no_import_cycle_between_the_package_modules():
    cycle = find_cycle(package_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_commands_are_imported_by_no_other_module():
    commands = {
        "training.train",
        "training.evaluate",
        "training.caption",
        "training.report",
        "training.serve",
        "training.export",
        "training.data.demo",
    }
    graph = package_graph()
    importers = {
        (module, target) for module, targets in graph.items() for target in targets & commands if module != "training"
    }  # the package's lazy names (TrainingPipeline) are its public face
    assert not importers, f"commands imported by other modules: {sorted(importers)}"


def test_the_report_reads_the_feature_index_the_store_writes():
    from training.features.store import INDEX_FILE
    from training.run.artifacts import FEATURES_INDEX

    assert FEATURES_INDEX == INDEX_FILE
