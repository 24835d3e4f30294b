"""The floor plan holds: wings import only the wings below them, nothing imports in a circle,
no wing imports an entry point, and no module grows past 500 lines (docs/architecture.md)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mypt_jax"
MAX_LINES = 500
# wing -> the wings it may import (docs/architecture.md's order, bottom up)
BELOW = {
    "parallel": set(),
    "data": {"parallel"},
    "model": {"parallel"},
    "decoding": {"parallel", "data", "model"},
    "interop": {"parallel", "data", "model"},
    "training": {"parallel", "data", "model", "decoding", "interop"},
    "preflight": {"parallel", "data", "model", "decoding", "interop", "training"},
    "curriculum": {"parallel", "data", "model", "decoding", "interop", "training", "preflight"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("mypt_jax", *path.relative_to(PACKAGE).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every mypt_jax module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `from pkg import name` names a module or not
                name = name.rpartition(".")[0]
            if name.startswith("mypt_jax"):
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p, modules) - {m} for m, p in modules.items()}


def _wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in BELOW else None


def test_every_module_sits_in_a_known_wing_or_at_the_top():
    strays = [m for m, p in _modules().items()
              if p.parent != PACKAGE and _wing(m) is None]
    assert not strays, f"modules outside the wings docs/architecture.md names: {strays}"


def test_wings_import_only_the_wings_below_them_and_no_entry_point():
    wrong = []
    for module, imported in _graph().items():
        wing = _wing(module)
        if wing is None:
            continue  # the top: entry points and the API may use any wing
        for target in imported:
            other = _wing(target)
            if other is None:
                wrong.append(f"{module} -> {target} (an entry point or the API)")
            elif other != wing and other not in BELOW[wing]:
                wrong.append(f"{module} -> {target} ({wing} may import {sorted(BELOW[wing])})")
    assert not wrong, "imports against the floor plan:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_no_module_over_500_lines():
    long = {m: n for m, p in _modules().items()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines (move a concern out): {long}"


def test_the_checks_see_an_upward_import_and_a_circle(tmp_path, monkeypatch):
    """The checks above can fail: a data module importing training, and two modules that
    import each other, are both reported."""
    pkg = tmp_path / "mypt_jax"
    for wing in ("data", "training"):
        (pkg / wing).mkdir(parents=True)
        (pkg / wing / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text("from mypt_jax.training import b\n")
    (pkg / "training" / "b.py").write_text("def f():\n    from mypt_jax.data import a\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    graph = _graph()
    assert graph["mypt_jax.data.a"] == {"mypt_jax.training.b"}
    assert graph["mypt_jax.training.b"] == {"mypt_jax.data.a"}
    with pytest.raises(AssertionError, match="mypt_jax.data.a -> mypt_jax.training.b "):
        test_wings_import_only_the_wings_below_them_and_no_entry_point()
    with pytest.raises(AssertionError,
                       match="mypt_jax.data.a -> mypt_jax.training.b -> mypt_jax.data.a"):
        test_no_import_circles()


# ----------------------------------------------------------------------------- training's parts

# training/ is its parts, bottom up, plus the loop at its top (docs/architecture.md)
TRAINING_ORDER = ("step", "checkpoint", "setup", "compilation", "observe", "evals")
TRAINING_PARTS = set(TRAINING_ORDER)
TRAINING_TOP = {"trainer", "hooks", "startup", "saver", "exports", "exit_codes", "gold_run",
                "handoff", "next_phase"}
MAX_FUNCTION_LINES = 80


def test_training_modules_sit_in_its_parts_or_are_the_loop():
    strays = []
    for module in _modules():
        parts = module.split(".")
        if parts[:2] != ["mypt_jax", "training"] or len(parts) == 2:
            continue
        if parts[2] not in TRAINING_PARTS and parts[2] not in TRAINING_TOP:
            strays.append(module)
        if parts[2] in TRAINING_TOP and len(parts) > 3:
            strays.append(module)
    assert not strays, f"training modules outside {sorted(TRAINING_PARTS)}: {strays}"
    for part in TRAINING_PARTS:
        assert (PACKAGE / "training" / part / "__init__.py").is_file(), part


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if parts[:2] == ["mypt_jax", "training"] and len(parts) > 3 else None


def test_training_parts_import_only_the_parts_below_them():
    wrong = []
    for module, imported in _graph().items():
        part = _part(module)
        if part is None:
            continue
        below = TRAINING_ORDER[:TRAINING_ORDER.index(part)]
        for target in imported:
            other = _part(target)
            if target.split(".")[:2] == ["mypt_jax", "training"] and other is None:
                wrong.append(f"{module} -> {target} (the loop at training's top)")
            elif other is not None and other != part and other not in below:
                wrong.append(f"{module} -> {target} ({part} may import {list(below)})")
    assert not wrong, "imports against training's order:\n" + "\n".join(sorted(wrong))


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node, node.end_lineno - node.lineno + 1


def test_no_function_over_80_lines():
    long = {f"{m}.{node.name}": n for m, p in _modules().items()
            for node, n in _functions(p) if n > MAX_FUNCTION_LINES}
    assert not long, f"over {MAX_FUNCTION_LINES} lines (name a concern of its own): {long}"


def test_the_loop_fits_on_a_screen():
    """train() is setup, loop, finish: the loop statement at most 40 lines, the others 60."""
    spans = {node.name: (node, n) for node, n in _functions(PACKAGE / "training" / "trainer.py")}
    assert spans["_setup"][1] <= 60 and spans["_finish"][1] <= 60, {
        k: spans[k][1] for k in ("_setup", "_finish")}
    loops = [n for n in ast.walk(spans["_loop"][0]) if isinstance(n, ast.While | ast.For)]
    assert len(loops) == 1 and loops[0].end_lineno - loops[0].lineno + 1 <= 40
    calls = {n.func.id for n in ast.walk(spans["train"][0])
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"_setup", "register_hooks", "_loop", "_finish"} <= calls, calls
