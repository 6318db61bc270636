"""The import structure of ``msat/`` (docs/DESIGN.md, "Layers"): parsed with ``ast``, not imported.

Every module belongs to one layer; it may import modules of lower layers, and modules of its own
package (e.g. ``msat.models.build`` -> ``msat.models.graph``), never a higher layer. The whole graph has
no cycle, and no ``msat`` import hides inside a function; third-party imports inside functions are
only the optional or heavy dependencies listed below.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "msat"
DESIGN = Path(__file__).resolve().parents[1] / "docs" / "DESIGN.md"

# bottom to top; a module's layer is the longest entry that is its name or a package above it
LAYERS = ["msat.utils", "msat.config", "msat.stats", "msat.checkpoint", "msat.loggers", "msat.runs",
          "msat.reporting", "msat.models", "msat.data", "msat.neurons", "msat.pooling", "msat.network",
          "msat.simulation", "msat.measure", "msat.methods", "msat.conversion", "msat.training", "msat.evaluate",
          "msat.hydra_schema", "msat.cli", "msat"]
# imports that may stay inside a function: optional, heavy or platform-specific dependencies
DEFERRED_OK = {"wandb", "matplotlib", "torchvision", "torchaudio", "datasets", "sklearn", "tqdm", "ctypes", "omegaconf",
               "hydra"}


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _targets(name: str, path: Path, node: ast.AST) -> list[str]:
    """The msat modules an import statement of module ``name`` reads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "msat"]
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if node.level:
        base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module or ""
    if mod.split(".")[0] != "msat":
        return []
    return sorted({f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names})


def _imports() -> list[tuple[str, str, bool, int]]:
    """(module, imported msat module or third-party name, inside a function, line) for every import."""
    out = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            inner = id(node) in nested
            msat_targets = _targets(name, path, node)
            out += [(name, t, inner, node.lineno) for t in msat_targets if t != name]
            if not msat_targets and inner:
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                out += [(name, "3rd:" + m, True, node.lineno) for m in mods]
    return out


def layer(module: str) -> int:
    best = max((e for e in LAYERS if module == e or module.startswith(e + ".")), key=len)
    return LAYERS.index(best)


def _same_package(a: str, b: str) -> bool:
    return LAYERS[layer(a)] == LAYERS[layer(b)] and LAYERS[layer(a)] != "msat"


def test_every_module_has_a_layer_and_the_list_is_the_documented_one():
    assert all(layer(m) >= 0 for m in MODULES)
    text = DESIGN.read_text()
    documented = re.search(r"<!-- layers -->(.*?)<!-- /layers -->", text, re.S)
    assert documented, "docs/DESIGN.md lists the layers between <!-- layers --> markers"
    names = re.findall(r"`(msat(?:\.\w+)?)`", documented.group(1))
    assert names == LAYERS


def test_no_import_goes_up_the_layers():
    up = [f"{m}:{line} imports {t} (layer {LAYERS[layer(t)]} is above {LAYERS[layer(m)]})"
          for m, t, _, line in _imports() if not t.startswith("3rd:") and layer(t) > layer(m)]
    assert not up, "\n".join(up)


def test_same_layer_imports_stay_inside_their_package():
    across = [f"{m}:{line} imports {t}" for m, t, _, line in _imports()
              if not t.startswith("3rd:") and layer(t) == layer(m) and not _same_package(m, t) and t != "msat"]
    assert not across, "\n".join(across)


def test_the_import_graph_has_no_cycle():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, t, _, _ in _imports():
        if not t.startswith("3rd:"):
            graph[m].add(t)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for t in sorted(graph.get(n, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[n] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, " -> ".join(cycle)


def test_no_msat_import_inside_a_function():
    hidden = [f"{m}:{line} imports {t} inside a function" for m, t, inner, line in _imports()
              if inner and not t.startswith("3rd:")]
    assert not hidden, "\n".join(hidden)


def test_only_optional_dependencies_are_imported_inside_functions():
    bad = [f"{m}:{line} imports {t[4:]} inside a function" for m, t, inner, line in _imports()
           if inner and t.startswith("3rd:") and t[4:].split(".")[0] not in DEFERRED_OK and t[4:] not in DEFERRED_OK]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("source, expected", [
    ("from .config import X", ["msat.config"]),
    ("from ..utils import X", ["msat.utils"]),
    ("from . import config", ["msat.config"]),
    ("import msat.neurons", ["msat.neurons"]),
])
def test_the_parser_resolves_relative_imports(source, expected):
    """The checks above can fail: relative imports of a module in a package resolve to the module they name."""
    node = ast.parse(source).body[0]
    name = "msat.methods.base" if source.startswith("from ..") else "msat.evaluate"
    path = ROOT / ("methods/base.py" if source.startswith("from ..") else "evaluate.py")
    assert _targets(name, path, node) == expected
    assert layer("msat.methods.base") > layer("msat.measure") > layer("msat.simulation")
