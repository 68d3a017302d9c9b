"""The package's import graph, read from the source (AST; nothing is imported): no cycles, layers kept.

Every ``import`` counts, also those inside functions (a lazy import hides a cycle, it does not remove
it). ``depass_tl.backends`` imports each module of its package at run time (backend discovery); that
edge is added by hand.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "depass_tl"
RULE_NAMES = {"softmax", "ratio", "max", "taylor"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), filename=str(path)) for name, path in MODULES.items()}


def _owner(name: str) -> str:
    """The module a dotted import name refers to (``depass_tl.x.Y`` -> ``depass_tl.x``)."""
    while name not in MODULES:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(tree: ast.AST) -> list[tuple[str, str]]:
    """``(module imported, name imported from it or "")`` for every depass_tl import in a module."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(_owner(a.name), "") for a in node.names if a.name.split(".")[0] == "depass_tl"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "depass_tl":
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.append((full, "") if full in MODULES else (_owner(node.module), a.name))  # type: ignore[arg-type]
    return out


def _graph() -> dict[str, set[str]]:
    graph = {name: {m for m, _ in _imports(tree)} - {name} for name, tree in TREES.items()}
    graph["depass_tl.backends"] |= {m for m in MODULES if m.startswith("depass_tl.backends.")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_no_private_replay_names_outside_replay() -> None:
    offenders = [
        f"{name} imports {name_}{' from ' + module if name_ else module}"
        for name, tree in TREES.items()
        if not name.startswith("depass_tl.replay")
        for module, name_ in _imports(tree)
        if module.startswith("depass_tl.replay") and (name_.startswith("_") or module.rsplit(".", 1)[-1].startswith("_"))
    ]
    assert offenders == []


def test_replay_is_pure_tensor_code() -> None:
    """replay/ reads views, frozen runs and errors only: no capture, no API, no components, no model."""
    allowed = {"depass_tl.errors", "depass_tl.model_view", "depass_tl.coefficients", "depass_tl.memory",
               "depass_tl._registry"}
    offenders = {
        name: sorted(m for m, _ in _imports(tree) if not m.startswith("depass_tl.replay") and m not in allowed)
        for name, tree in TREES.items()
        if name.startswith("depass_tl.replay")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_model_view_is_plain_data() -> None:
    assert {m for m, _ in _imports(TREES["depass_tl.model_view"])} == set()


def _rule_name_tests(tree: ast.AST) -> list[int]:
    """Line numbers of comparisons against a rule name (``rule == "ratio"``, ``rule in ("softmax", ...)``)."""

    def names_in(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in RULE_NAMES
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(names_in(e) for e in node.elts)
        return False

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(names_in(o) for o in [node.left, *node.comparators]):
            lines.append(node.lineno)
        elif isinstance(node, ast.match_case) and names_in(getattr(node.pattern, "value", None) or ast.Constant(None)):
            lines.append(node.pattern.lineno)
    return lines


def test_the_rule_name_scan_finds_comparisons() -> None:
    tree = ast.parse('if rule == "ratio" or r in ("max", "x") or other != "softmax":\n    pass\nok = rule.linear')
    assert _rule_name_tests(tree) == [1, 1, 1]


def test_no_rule_name_tests_outside_the_rules_package() -> None:
    offenders = {
        name: lines
        for name, tree in TREES.items()
        if not name.startswith("depass_tl.replay.rules")
        for lines in [_rule_name_tests(tree)]
        if lines
    }
    assert offenders == {}


def test_compare_is_a_package() -> None:
    assert MODULES["depass_tl.compare"].name == "__init__.py"
    assert not [m for m in MODULES if m.startswith("depass_tl.compare_")]
