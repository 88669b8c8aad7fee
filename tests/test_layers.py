"""curate imports downwards only: every import of a curate module (at module level or inside a
function) goes to the same or a lower layer, module-level imports form no cycle, and the command
line starts without the heavy libraries.

Read from the source with ``ast``, so nothing is imported to check it. A new module must be
placed in ``LAYERS`` (the test says so), which is where its allowed dependencies are decided.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "curate"

# Lowest first. A module may import its own layer and those below it, never one above.
# Entries are module names or package prefixes ("curate.io" covers curate.io.*).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("curate", "curate._version", "curate.errors", "curate.seeding", "curate.device")),
    ("core", ("curate.core", "curate.table")),
    ("data", ("curate.io", "curate.data", "curate.report", "curate.captions")),
    ("models", ("curate.models", "curate.dedup")),
    (
        "methods",
        (
            "curate.train",
            "curate.rank",
            "curate.guidance",
            "curate.guidance.config",
            "curate.guidance.calibrate",
            "curate.generate",
        ),
    ),
    ("audit", ("curate.audit",)),
    (
        "pipeline",
        (
            "curate.steps",
            "curate.registry",
            "curate.recipe",
            "curate.runner",
            "curate.export",
            "curate.shards",
            "curate.engines",
        ),
    ),  # fmt: skip
    ("cli", ("curate.cli", "curate.__main__")),
]

# curate.core may not reach into any other curate package but these (its own base)
CORE_MAY_IMPORT = ("curate.core", "curate.errors", "curate.seeding")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
    best, best_len = None, -1
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            hit = module == prefix or (prefix != "curate" and module.startswith(prefix + "."))
            if hit and len(prefix) > best_len:
                best, best_len = rank, len(prefix)
    return best


def _submodule(base: str, name: str) -> str:
    """``base.name`` when that is a module (``from curate.audit import metrics``), else ``base``."""
    path = ROOT.parent.joinpath(*f"{base}.{name}".split("."))
    return f"{base}.{name}" if path.with_suffix(".py").exists() or path.is_dir() else base


def _imports(path: Path, module: str) -> list[tuple[str, int, bool]]:
    """``(imported curate module, line, at module level)`` for every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    # imports under `if TYPE_CHECKING:` never run
    type_only = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            # `from curate.audit import metrics` imports the submodule curate.audit.metrics
            names = [_submodule(base, a.name) for a in node.names]
        for name in names:
            if name == "curate" or name.startswith("curate."):
                out.append((name, node.lineno, id(node) in top_level))
    return out


def _graph() -> dict[str, list[tuple[str, int, bool]]]:
    return {
        _module_name(p): _imports(p, _module_name(p))
        for p in sorted(ROOT.rglob("*.py"))
        if "assets" not in p.parts
    }


def test_every_module_has_a_layer():
    missing = sorted(m for m in _graph() if _layer(m) is None)
    assert not missing, f"place these modules in tests/test_layers.py LAYERS: {missing}"


def test_imports_go_downwards_only():
    graph = _graph()
    upward = []
    for module, imports in graph.items():
        own = _layer(module)
        for target, line, _ in imports:
            layer = _layer(target)
            if own is not None and layer is not None and layer > own:
                upward.append(
                    f"{module}:{line} imports {target} ({LAYERS[own][0]} -> {LAYERS[layer][0]})"
                )
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_core_imports_nothing_above_it():
    bad = [
        f"{module}:{line} imports {target}"
        for module, imports in _graph().items()
        if module.startswith("curate.core")
        for target, line, _ in imports
        if not target.startswith(CORE_MAY_IMPORT)
    ]
    assert not bad, "\n".join(bad)


def test_module_level_imports_have_no_cycle():
    graph = {
        m: sorted({t for t, _, top in imps if top and t in _graph_keys()})
        for m, imps in _graph().items()
    }
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _graph_keys() -> set[str]:
    return {_module_name(p) for p in ROOT.rglob("*.py") if "assets" not in p.parts}


@pytest.mark.parametrize(
    "module", ["curate.cli", "curate.core.weights", "curate.core.images", "curate.table"]
)
def test_light_modules_import_without_heavy_libraries(module):
    """``curate --help`` loads curate.cli: it must not pull in torch, diffusers, polars, numpy
    or faiss (the low layer's light modules neither, beyond what they name)."""
    heavy = {"torch", "diffusers", "transformers", "faiss", "polars", "datasets", "open_clip"}
    heavy |= {"ray"}  # --engine ray imports it when it runs, never at start
    if module == "curate.cli":
        heavy |= {"numpy", "PIL"}
    code = (
        f"import sys; import {module}; "
        f"print(sorted(m for m in {sorted(heavy)!r} if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    allowed = {"curate.table": {"polars"}}.get(module, set())
    loaded = set(ast.literal_eval(out.stdout.strip())) - allowed
    assert not loaded, f"importing {module} loads {sorted(loaded)}"


# Components more than one area uses live in the low layer, not in one user's package: the
# image embedders (curate.core.embed) serve dedup, the audit and AMG.
SHARED_LOW = {"curate.core.embed": ("curate.dedup", "curate.audit", "curate.guidance")}


def test_shared_components_sit_in_the_low_layer():
    graph = _graph()
    for module, users in SHARED_LOW.items():
        assert module in graph and LAYERS[_layer(module)][0] == "core", module
        for user in users:
            assert any(
                t == module for m, imps in graph.items() if m.startswith(user) for t, _, _ in imps
            ), f"{user} no longer uses {module}: update SHARED_LOW"
    # methods and audit code reach dedup only through the low layer
    into_dedup = [
        f"{m}:{line} imports {t}"
        for m, imps in graph.items()
        if m.startswith(("curate.audit", "curate.guidance", "curate.rank", "curate.train"))
        for t, line, _ in imps
        if t.startswith("curate.dedup")
    ]
    assert not into_dedup, "\n".join(into_dedup)


def test_a_planted_upward_import_is_caught(tmp_path, monkeypatch):
    """The checker itself: an import from the core layer up into the audit is reported."""
    fake = tmp_path / "curate"
    (fake / "core").mkdir(parents=True)
    (fake / "audit").mkdir()
    for init in (
        fake / "__init__.py",
        fake / "core" / "__init__.py",
        fake / "audit" / "__init__.py",
    ):
        init.write_text("")
    (fake / "audit" / "job.py").write_text("from curate.core import x\n")
    (fake / "core" / "x.py").write_text("def f():\n    from curate.audit.job import run\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake)
    with pytest.raises(AssertionError, match=r"curate\.core\.x:2 imports curate\.audit\.job"):
        test_imports_go_downwards_only()
    (fake / "core" / "x.py").write_text("from curate.audit import job\n")
    with pytest.raises(AssertionError, match="import cycle"):
        test_module_level_imports_have_no_cycle()
