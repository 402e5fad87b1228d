"""The package's import graph has no cycle, and the project has one round loop (``fedmrg.training.run_round``).

Both read the source with ``ast`` (nothing is imported): every ``import`` that runs counts, at module level and
inside functions alike; only ``if TYPE_CHECKING:`` blocks (read by type checkers, never executed) are left out.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "app" / "custom" / "fedmrg"

#: Modules with a training loop (a loop that calls ``.backward()``) that is not a federated round of a system, and
#: why. Every other loop with a backward pass outside ``fedmrg.training`` fails the test.
OTHER_TRAINING_LOOPS = {
    "fedmrg.report.builtin_lm": "centralised warm-up of the built-in decoder on a text corpus, before any federation",
    "fedmrg.fl.toy_learner": "the toy linear learner of the FL plumbing tests, not a system of the project",
    "fedmrg.data.synthetic.signal_check": "a probe classifier that checks the synthetic images carry their labels",
}


def module_name(path: Path) -> str:
    parts = ("fedmrg", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def parse_package() -> dict[str, tuple[Path, ast.Module]]:
    return {module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, tree: ast.Module, modules: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source (``from a import b``: ``a.b`` when it is a
    module, else ``a``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    type_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
            visit(v)
    return out


def import_graph() -> dict[str, set[str]]:
    parsed = parse_package()
    modules = set(parsed)
    return {name: imports_of(name, path, tree, modules) for name, (path, tree) in parsed.items()}


def test_cycle_finder_finds_a_cycle_and_a_self_contained_graph_has_none():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_imports_are_resolved_at_every_level_and_type_only_ones_left_out(tmp_path):
    src = (
        "from typing import TYPE_CHECKING\nfrom fedmrg.x import y\nimport fedmrg.z\ndef f():\n    from .x import w\n"
        "if TYPE_CHECKING:\n    from fedmrg.q import T\n"
    )
    tree = ast.parse(src)
    modules = {"fedmrg.p.m", "fedmrg.x", "fedmrg.x.y", "fedmrg.z", "fedmrg.p.x", "fedmrg.q"}
    assert imports_of("fedmrg.p.m", tmp_path / "m.py", tree, modules) == {"fedmrg.x.y", "fedmrg.z", "fedmrg.p.x"}


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "fedmrg.report.trainer" in graph and "fedmrg.privacy.dp_sgd" in graph
    found = cycles(graph)
    assert not found, "import cycles (module and function level):\n" + "\n".join(
        " <-> ".join(c) + "\n    " + "\n    ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in found
    )


def _called_names(node: ast.AST) -> set[str]:
    """Names of the functions and methods called inside ``node`` (``f(...)``, ``x.f(...)``: ``f``)."""
    return {
        n.func.attr if isinstance(n.func, ast.Attribute) else n.func.id
        for n in ast.walk(node)
        if isinstance(n, ast.Call) and isinstance(n.func, (ast.Attribute, ast.Name))
    }


def _loops_with_backward(tree: ast.Module) -> list[int]:
    """Line numbers of ``for`` / ``while`` loops that call ``.backward(...)``, directly or through functions of the
    same module that do (``self._step()`` where ``_step`` calls ``loss.backward()``)."""
    functions = [f for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
    backward = {"backward"}
    while True:
        more = {f.name for f in functions if _called_names(f) & backward} - backward
        if not more:
            break
        backward |= more
    return sorted(
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, (ast.For, ast.While, ast.AsyncFor)) and _called_names(node) & backward
    )


def test_the_loop_finder_follows_helpers_of_the_same_module():
    src = (
        "class T:\n"
        "    def _step(self, loss):\n        loss.backward()\n"
        "    def _phase(self, b):\n        self._step(b)\n"
        "    def run(self, data):\n        for b in data:\n            self._phase(b)\n"
        "def direct(data, opt):\n    while True:\n        opt.zero_grad(); data.loss().backward()\n"
        "def evaluate(data):\n    for b in data:\n        b.step()\n"
    )
    assert _loops_with_backward(ast.parse(src)) == [7, 10]


def test_one_round_loop():
    parsed = parse_package()
    defines = [n for n, (_, tree) in parsed.items() for d in ast.walk(tree)
               if isinstance(d, ast.FunctionDef) and d.name == "run_round"]  # fmt: skip
    assert defines == ["fedmrg.training.loop"]
    loops = {n: lines for n, (_, tree) in parsed.items() if (lines := _loops_with_backward(tree))}
    assert "fedmrg.training.loop" in loops  # the finder sees the one loop
    others = {n: lines for n, lines in loops.items() if not n.startswith("fedmrg.training")}
    unexplained = {n: lines for n, lines in others.items() if n not in OTHER_TRAINING_LOOPS}
    assert not unexplained, f"training loops outside fedmrg.training (use fedmrg.training.run_round): {unexplained}"
    stale = (set(OTHER_TRAINING_LOOPS) & set(parsed)) - set(others)
    assert not stale, f"OTHER_TRAINING_LOOPS lists modules without a training loop: {sorted(stale)}"
    for system in {"fedmrg.report.trainer", "fedmrg.vision.learner"} & set(parsed):
        calls = {
            n.func.id for n in ast.walk(parsed[system][1]) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        }
        assert "run_round" in calls, f"{system} does not train in fedmrg.training.run_round"


@pytest.mark.parametrize("module", ["fedmrg.training", "fedmrg.training.loop", "fedmrg.training.steps"])
def test_the_training_package_does_not_depend_on_a_system(module):
    graph = import_graph()
    reached, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in reached:
            reached.add(m)
            todo += graph[m]
    assert not {m for m in reached if m.startswith(("fedmrg.report", "fedmrg.vision", "fedmrg.fl"))}, reached
