"""The package's imports run one way: the engine layer never imports the training loop, and no modules import each
other in a circle. Read from the source with ast (nothing is imported), counting imports inside functions too, since
a deferred import is still a dependency; only `if TYPE_CHECKING:` blocks, which never run, are left out."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "mpo_dist"
PACKAGE = PACKAGE_ROOT.name


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE_ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(node: ast.AST):
    """Import statements that can run: every one in the tree except the bodies of `if TYPE_CHECKING:`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for statement in child.orelse:
                yield from _runtime_imports(statement)
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        yield from _runtime_imports(child)


def imported_modules(path: Path) -> list[tuple[str, int]]:
    """(package module imported, line) for each import in `path`; `from a import b` counts as a.b when b is a module."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = []
    for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from . import x / from ..a import b
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base for alias in node.names]
        found += [(target, node.lineno) for target in targets if target.split(".")[0] == PACKAGE]
    return found


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}, for every module of the package."""
    graph: dict[str, dict[str, int]] = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        edges = graph.setdefault(module_name(path), {})
        for target, line in imported_modules(path):
            if target != module_name(path):
                edges.setdefault(target, line)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_reader_sees_plain_deferred_and_type_only_imports(tmp_path, monkeypatch):
    """The walker itself, on a hand-written package: a module-level import, a deferred one inside a function, a
    relative one, and one under TYPE_CHECKING that must not count."""
    root = tmp_path / PACKAGE
    (root / "engine").mkdir(parents=True)
    (root / "train").mkdir()
    for init in (root / "__init__.py", root / "engine" / "__init__.py", root / "train" / "__init__.py"):
        init.write_text("")
    (root / "train" / "step.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                            f"    from {PACKAGE}.engine import cache\n")
    (root / "engine" / "cache.py").write_text("def load():\n    from ..train import step\n    return step\n")
    (root / "engine" / "other.py").write_text(f"import {PACKAGE}.engine.cache\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE_ROOT", root)
    graph = import_graph()
    assert graph[f"{PACKAGE}.engine.cache"] == {f"{PACKAGE}.train.step": 2}
    assert graph[f"{PACKAGE}.engine.other"] == {f"{PACKAGE}.engine.cache": 1}
    assert graph[f"{PACKAGE}.train.step"] == {}
    graph[f"{PACKAGE}.train.step"][f"{PACKAGE}.engine.cache"] = 3  # close a loop by hand
    assert cycles(graph) == [[f"{PACKAGE}.engine.cache", f"{PACKAGE}.train.step"]]


def test_engine_never_imports_the_training_loop():
    engine, train = f"{PACKAGE}.engine", f"{PACKAGE}.train"
    edges = [f"{source} -> {target} (line {line})" for source, targets in import_graph().items()
             if source == engine or source.startswith(engine + ".")
             for target, line in targets.items() if target == train or target.startswith(train + ".")]
    assert not edges, "the engine layer imports the training loop:\n" + "\n".join(edges)


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    described = ["; ".join(f"{source} -> {target} (line {graph[source][target]})" for source in component
                           for target in component if target in graph[source]) for component in found]
    assert not found, "modules that import each other in a circle:\n" + "\n".join(described)


# The package order, lowest first (README.md, "Layout"): a module may import its own package and the layers below it,
# never a layer above. Top-level modules are placed one by one: the shared base at the bottom, config_keys beside the
# config it describes; mpo_dist.cli, every sub-command, is the top.
LAYERS: list[set[str]] = [
    {"artefact", "atomic_write", "config_files", "errors", "file_access", "file_digest", "fingerprint", "option",
     "runtime", "run_files", "versions"},
    {"kernels"}, {"data"}, {"models"}, {"losses"}, {"config", "config_keys"}, {"engine"}, {"eval"}, {"plan"}, {"check"},
    {"train"}, {"cli"},
]


def layer_of(module: str) -> int:
    """The index in LAYERS of `module`'s package (mpo_dist.X or mpo_dist.X.Y -> X); the package root itself is 0."""
    parts = module.split(".")
    if len(parts) == 1:
        return 0
    for index, members in enumerate(LAYERS):
        if parts[1] in members:
            return index
    raise AssertionError(f"{module}: mpo_dist.{parts[1]} has no place in LAYERS (tests/test_import_layering.py)")


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    return [f"{source} -> {target} (line {line}): layer {layer_of(source)} imports layer {layer_of(target)}"
            for source, targets in sorted(graph.items()) for target, line in targets.items()
            if layer_of(target) > layer_of(source)]


def test_no_package_imports_a_layer_above_it():
    found = upward_imports(import_graph())
    assert not found, "imports against the package order (README.md, 'Layout'):\n" + "\n".join(found)


def test_an_upward_import_is_caught(tmp_path, monkeypatch):
    """The order check itself, on a hand-written package whose data layer imports the training loop (deferred, as
    such slips usually are) and whose training loop imports data (allowed)."""
    root = tmp_path / PACKAGE
    for package in ("data", "train"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "data" / "loading.py").write_text(f"def rows():\n    from {PACKAGE}.train import trainer\n    return trainer\n")
    (root / "train" / "trainer.py").write_text(f"from {PACKAGE}.data import loading\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE_ROOT", root)
    assert upward_imports(import_graph()) == [
        f"{PACKAGE}.data.loading -> {PACKAGE}.train.trainer (line 2): layer 2 imports layer 10"]
