"""The package's layers, enforced (docs/architecture.md, "Layers").

Every module of ``src/diffsolve`` is parsed (its AST, function-local imports included) and each
import of a diffsolve module must point to the same layer or one below it; the module import
graph must have no cycle; a solver file imports engines and ``solvers.base`` only, never
another solver file; and ``import diffsolve`` loads neither the benchmark harness nor the
optional integrations' third-party packages.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import diffsolve

SRC = Path(diffsolve.__file__).parent

#: lowest first; a module may import from its own layer and every layer before it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("diffsolve._aliases", "diffsolve.core")),
    ("solvers", ("diffsolve.solvers",)),
    ("drivers", ("diffsolve.drivers",)),
    ("zoo", ("diffsolve.zoo",)),
    ("tools", ("diffsolve.tools",)),
    ("integrations", ("diffsolve.integrations",)),
    ("bench", ("diffsolve.bench",)),
    ("cli", ("diffsolve.cli", "diffsolve.__main__", "diffsolve")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for k, (_, prefixes) in enumerate(LAYERS):
        for pre in prefixes:
            if (module == pre or module.startswith(pre + ".")) and len(pre) > best:
                best, rank = len(pre), k
    assert rank >= 0, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return rank


def _resolve(base: str) -> str | None:
    """The deepest existing diffsolve module named by ``base`` (a module or a name in one)."""
    while base and base not in MODULES:
        base = base.rpartition(".")[0]
    return base or None


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                root = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{root}.{node.module}" if node.module else root
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            if t == "diffsolve" or t.startswith("diffsolve."):
                m = _resolve(t)
                if m and m != module:
                    found.add(m)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_layer():
    for m in MODULES:
        layer_of(m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module):
    mine = layer_of(module)
    upward = sorted(t for t in GRAPH[module]
                    if layer_of(t) > mine and not (module == "diffsolve" and t != module))
    assert not upward, (f"{module} (layer {LAYERS[mine][0]}) imports upward: " +
                        ", ".join(f"{t} ({LAYERS[layer_of(t)][0]})" for t in upward))


def test_no_import_cycle():
    """Tarjan's strongly connected components over the whole graph (local imports too),
    except the package roots, which import their own submodules by design."""
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in GRAPH.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


SOLVER_FILES = sorted(m for m in MODULES if m.startswith("diffsolve.solvers.")
                      and not m.startswith("diffsolve.solvers.engines")
                      and m != "diffsolve.solvers.base")


@pytest.mark.parametrize("module", SOLVER_FILES)
def test_solver_files_import_only_engines_and_base(module):
    allowed = ("diffsolve.solvers.base", "diffsolve.solvers.engines")
    bad = sorted(t for t in GRAPH[module] if t.startswith("diffsolve.solvers")
                 and not t.startswith(allowed) and t != "diffsolve.solvers")
    assert not bad, f"{module} imports other solver files: {bad}"


def test_engines_import_no_solver_file():
    for m in MODULES:
        if m.startswith("diffsolve.solvers.engines"):
            bad = [t for t in GRAPH[m] if t.startswith("diffsolve.solvers.")
                   and not t.startswith(("diffsolve.solvers.engines", "diffsolve.solvers.base"))]
            assert not bad, f"{m} imports solver files {bad}"


def test_checker_sees_a_violation(tmp_path):
    """The AST walk resolves relative and function-local imports (else the tests above
    could pass vacuously)."""
    assert "diffsolve.core.schedules" in GRAPH["diffsolve.core.models"]
    assert "diffsolve.drivers.loop" in GRAPH["diffsolve.tools.v3_calibration"]
    assert layer_of("diffsolve.bench.metrics") > layer_of("diffsolve.drivers.loop")
    # a function-local import is found
    src = "def f():\n    from ..bench import metrics\n"
    node = ast.parse(src)
    assert any(isinstance(n, ast.ImportFrom) for n in ast.walk(node))


def test_import_diffsolve_stays_light():
    code = ("import sys, diffsolve; "
            "bad = [m for m in sys.modules if m.startswith(('diffsolve.bench', 'diffusers', "
            "'transformers', 'k_diffusion', 'matplotlib', 'diffsolve.integrations'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
