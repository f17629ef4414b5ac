"""The code's structure, checked as the issue "One room per concern" asks: modules import only
downwards (no cycle in the import graph of tasks/ and flows/, imports inside functions counted),
no private name is imported from another module, and no function imports one of our own modules
(a lazy import is kept for heavy third-party packages, never to dodge a cycle).

The same check from the command line: `python tests/test_import_graph.py` prints the graph's layers."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tasks", "flows")
# where private names must not be imported from another module: our packages and their users
USERS = ("tasks", "flows", "bench", "scripts", "tests")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(tree: ast.AST, modules: dict[str, Path], here: str) -> list[tuple[str, list[str], bool]]:
    """(module imported, names taken from it, inside a function) for each import of one of ours."""
    out: list[tuple[str, list[str], bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.split(".")[0] in PACKAGES:
                        out.append((a.name, [], in_function))
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0 \
                    and child.module.split(".")[0] in PACKAGES:
                plain = [a.name for a in child.names if f"{child.module}.{a.name}" not in modules]
                out.append((child.module, plain, in_function))
                out.extend((f"{child.module}.{a.name}", [], in_function) for a in child.names
                           if f"{child.module}.{a.name}" in modules)
            visit(child, inner)

    visit(tree, False)
    return [o for o in out if o[0] != here]


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {m: {dst for dst, _, _ in _imports(ast.parse(p.read_text()), modules, m) if dst in modules}
            for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def _sibling_imports(tree: ast.AST, path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for each `from X import ...` of a module beside `path` (tests/ and bench/ import
    their helpers by bare name: `from tiny import ...`, `from shared_data import ...`)."""
    return [(f"{path.parent.name}/{n.module}", [a.name for a in n.names]) for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module
            and (path.parent / f"{n.module}.py").is_file() and n.module != path.stem]


def private_imports() -> list[str]:
    """'file: from module import _name' for each private name one module takes from another."""
    modules = project_modules()
    found = []
    for top in USERS:
        for p in sorted((ROOT / top).rglob("*.py")):
            tree = ast.parse(p.read_text())
            for dst, names in [(d, n) for d, n, _ in _imports(tree, modules, _module_name(p))] + _sibling_imports(tree, p):
                found += [f"{p.relative_to(ROOT)}: from {dst} import {n}" for n in names
                          if n.startswith("_") and not n.startswith("__")]
    return found


def lazy_project_imports() -> list[str]:
    """'file: module' for each of our modules imported inside a function of tasks/ or flows/."""
    modules = project_modules()
    return [f"{modules[m].relative_to(ROOT)}: {dst}" for m in modules
            for dst, _, lazy in _imports(ast.parse(modules[m].read_text()), modules, m) if lazy]


def layers(graph: dict[str, set[str]]) -> list[list[str]]:
    """Modules by floor: a module sits one floor above the highest module it imports."""
    floor: dict[str, int] = {}

    def f(m: str) -> int:
        if m not in floor:
            floor[m] = 0
            floor[m] = 1 + max((f(d) for d in graph[m]), default=-1)
        return floor[m]

    for m in graph:
        f(m)
    return [sorted(m for m in graph if floor[m] == i) for i in range(max(floor.values()) + 1)]


# --- the tests ---------------------------------------------------------------------------------------


def name_clashes(folders: tuple[str, ...] = ("tasks/quantization", "tasks/targets"),
                 root: Path = ROOT) -> list[tuple[str, str]]:
    """Modules in these folders whose names read the same (underscores aside): a reader of
    `openvino.py` beside `openvino.py` cannot tell where a line of the openvino target belongs."""
    seen: dict[str, str] = {}
    out = []
    for folder in folders:
        for p in sorted((root / folder).glob("*.py")):
            if p.name == "__init__.py":
                continue
            key = p.stem.replace("_", "")
            rel = str(p.relative_to(root))
            if key in seen:
                out.append((seen[key], rel))
            seen.setdefault(key, rel)
    return out

def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def test_no_private_name_is_imported_from_another_module():
    assert private_imports() == []


def test_no_function_imports_one_of_our_modules():
    assert lazy_project_imports() == []


def test_the_checks_find_what_they_look_for(tmp_path):
    """The checks are not vacuous: a cycle, a private import and a lazy import on a made-up graph."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from tasks.config import _x, RunConfig\n")
    (dst, names, lazy), = _imports(tree, project_modules(), "tasks.somewhere")
    assert (dst, names, lazy) == ("tasks.config", ["_x", "RunConfig"], True)
    # a helper module beside the file, imported by bare name (tests/, bench/), counts as one of ours
    (tmp_path / "helpers.py").write_text("def _build(): pass\n")
    user = tmp_path / "test_user.py"
    user.write_text("from helpers import _build, public\nfrom numpy import _private_of_theirs\n")
    assert _sibling_imports(ast.parse(user.read_text()), user) == [(f"{tmp_path.name}/helpers", ["_build", "public"])]
    # the graph is read: the pipeline sits above the steps, which sit above the run context
    g = import_graph()
    assert "tasks.steps.calibrate" in g["tasks.pipeline"] and "tasks.context" in g["tasks.steps.calibrate"]
    floors = {m: i for i, ms in enumerate(layers(g)) for m in ms}
    assert floors["tasks.pipeline"] > floors["tasks.targets.table"] > floors["tasks.targets.tensorrt"] \
        > floors["tasks.targets.base"] > floors["tasks.context"]


if __name__ == "__main__":
    g = import_graph()
    for i, ms in enumerate(layers(g)):
        print(f"floor {i:2d}: {' '.join(ms)}")
    problems = ([f"cycle: {' -> '.join(c)}" for c in cycles(g)] + [f"private: {p}" for p in private_imports()]
                + [f"lazy: {p}" for p in lazy_project_imports()])
    print("\n".join(problems) or "no cycle, no private import across modules, no lazy import of our own modules")
    sys.exit(1 if problems else 0)


def test_one_name_per_room_across_quantization_and_targets(tmp_path):
    assert name_clashes() == []
    for rel in ("a/ortcpu.py", "b/ort_cpu.py", "b/openvino.py"):  # the check finds a clash where there is one
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text("")
    assert name_clashes(("a", "b"), tmp_path) == [("a/ortcpu.py", "b/ort_cpu.py")]
