"""The package's import structure, read with ``ast`` from the sources (nothing is imported).

* no module imports another module's private (``_name``) names: what another module needs is public;
* the module-level import graph of ``smartedit`` has no cycles (imports inside functions, the usual way to defer a
  heavy or optional dependency, are not edges; importing ``a.b.c`` also imports the packages ``a.b`` and ``a``);
* the trainer does not depend on evaluation: nothing in ``smartedit.train`` imports ``smartedit.eval``, not even
  inside a function;
* the library core does not depend on the ShapesWorld experiment: nothing in ``smartedit.train``,
  ``smartedit.data`` or ``smartedit.eval`` imports ``smartedit.shapes``, not even inside a function.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "smartedit"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name → (file, is a package ``__init__``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


MODULES = _modules()


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from … import`` names."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, top_level_only: bool) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) of ``module``; with ``top_level_only`` the imports that run when
    the module is imported (not those inside functions, nor under ``if TYPE_CHECKING:``)."""
    path, is_package = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[str, list[str], int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if top_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if top_level_only and isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, [], child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module != "__future__":
                found.append((_resolve(module, is_package, child), [a.name for a in child.names], child.lineno))
            visit(child)

    visit(tree)
    return found


def _targets(module: str, imported: str, names: list[str]) -> set[str]:
    """The smartedit modules an import executes: the module, its packages (except the importer's own), and
    submodules named in ``from package import submodule``."""
    targets = set()
    for name in [imported] + [f"{imported}.{n}" for n in names]:
        if name in MODULES:
            targets.add(name)
            parts = name.split(".")
            targets.update(".".join(parts[:i]) for i in range(1, len(parts)))
    own = module.split(".")
    own_packages = {".".join(own[:i]) for i in range(1, len(own) + 1)}
    return {t for t in targets if t in MODULES and t not in own_packages}


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for module in MODULES:
        for imported, names, line in _imports(module, top_level_only=False):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            private += [p for p in imported.split(".") if p.startswith("_") and not p.startswith("__")]
            if private:
                offenders.append(f"{MODULES[module][0].relative_to(ROOT)}:{line}: {imported} {private}")
    assert not offenders, "private names imported across modules (make them public):\n" + "\n".join(offenders)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_module_level_import_graph_has_no_cycles():
    graph = {m: set() for m in MODULES}
    for module in MODULES:
        for imported, names, _ in _imports(module, top_level_only=True):
            graph[module] |= _targets(module, imported, names)
    cycles = _cycles(graph)
    assert not cycles, "import cycles (module level):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_train_does_not_import_eval():
    offenders = []
    for module in MODULES:
        if module != "smartedit.train" and not module.startswith("smartedit.train."):
            continue
        for imported, names, line in _imports(module, top_level_only=False):
            hit = [t for t in _targets(module, imported, names) | {imported}
                   if t == "smartedit.eval" or t.startswith("smartedit.eval.")]
            if hit:
                offenders.append(f"{MODULES[module][0].relative_to(ROOT)}:{line}: imports {sorted(hit)[0]}")
    assert not offenders, "smartedit.train must not depend on smartedit.eval:\n" + "\n".join(offenders)


def _importers(packages: tuple[str, ...], forbidden: str) -> list[str]:
    """Every import of ``forbidden`` (or a module under it) by a module of ``packages``, as ``file:line: module``."""
    offenders = []
    for module in MODULES:
        if not any(module == p or module.startswith(p + ".") for p in packages):
            continue
        for imported, names, line in _imports(module, top_level_only=False):
            hit = [t for t in _targets(module, imported, names) | {imported}
                   if t == forbidden or t.startswith(forbidden + ".")]
            if hit:
                offenders.append(f"{MODULES[module][0].relative_to(ROOT)}:{line}: imports {sorted(hit)[0]}")
    return offenders


def test_the_core_does_not_import_the_shapes_experiment():
    offenders = _importers(("smartedit.train", "smartedit.data", "smartedit.eval"), "smartedit.shapes")
    assert not offenders, "the library core must not depend on smartedit.shapes:\n" + "\n".join(offenders)
    assert _importers(("smartedit.shapes",), "smartedit.train")  # (the check sees the experiment's own imports)


def test_the_checks_read_the_whole_package():
    assert "smartedit.weights.files" in MODULES and "smartedit.train.trainer" in MODULES
    assert MODULES["smartedit.weights"][1] and not MODULES["smartedit.model"][1]
    assert os.path.basename(MODULES["smartedit"][0]) == "__init__.py"
