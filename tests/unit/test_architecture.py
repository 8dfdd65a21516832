"""Imports point one way, through every chain of project imports:

    flows/ (4) -> tasks/ (3) -> metis_core/stages/ (2) -> adapters (1) -> pure (0)

A module may import modules of its own layer or lower ones only, and so may everything it imports,
transitively: a pure module that imports a pure helper that imports the DuckDB store breaks the
rule as much as one that imports the store itself. The adapters are the subpackages that drive a
system (vLLM, DeepSpeed, DuckDB, MLflow, the model files) and launch.py, which wires them into a
run; everything else in metis_core is pure. The systems count as modules of the layer allowed to
use them: prefect of tasks/ (metis_core never imports it), the others of the adapters. On top of
the layers, the stages reach no adapter and no system at all: they get them from the `Run`,
through the ports (metis_core/ports.py), which is what lets a test hand them fakes.

Every import counts: a module's top level, inside functions (lazy imports still run), and under
`if TYPE_CHECKING:` (never run, but an upward dependency all the same). Importing `a.b.c` also
runs `a/__init__.py` and `a/b/__init__.py`, so those count as imported too.
"""

from __future__ import annotations

import ast
from collections import deque
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("metis_core", "tasks", "flows")
PURE, ADAPTERS, STAGES, TASKS, FLOWS = range(5)
ADAPTER_PACKAGES = {"engine", "trainer", "store", "tracking", "model"}
ADAPTER_MODULES = {"launch"}  # wires the adapters into a run
SYSTEMS = {"prefect": TASKS, "mlflow": ADAPTERS, "duckdb": ADAPTERS, "vllm": ADAPTERS,
           "deepspeed": ADAPTERS}  # fmt: skip
LAYER_NAMES = ["pure", "adapter", "stage", "task", "flow"]


def layer(module: str) -> int:
    """The layer of a project module (dotted name) or of a system package."""
    if module in SYSTEMS:
        return SYSTEMS[module]
    parts = module.split(".")
    if parts[0] == "flows":
        return FLOWS
    if parts[0] == "tasks":
        return TASKS
    if parts[1:2] == ["stages"]:
        return STAGES
    if parts[1:2] and (parts[1] in ADAPTER_PACKAGES or parts[1] in ADAPTER_MODULES):
        return ADAPTERS
    return PURE


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path) -> dict[str, Path]:
    return {
        module_name(p, root): p
        for package in PACKAGES
        for p in sorted((root / package).rglob("*.py"))
    }


def imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """What importing module `name` (at `path`) imports: project modules (with the packages
    around them) and system packages; other libraries are left out."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package `level - 1` folders up
                base = ".".join(package[: len(package) - node.level + 1] + [base] * bool(base))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # submodules
    out = set()
    for target in found:
        parts = target.split(".")
        if parts[0] in SYSTEMS:
            out.add(parts[0])
        out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & modules.keys()
    return out - {name}


@cache
def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: imports(path, name, modules) for name, path in modules.items()}


def chains_to(start: str, graph: dict[str, set[str]], forbidden) -> list[list[str]]:
    """The shortest import chain from `start` to each module or system it reaches for which
    `forbidden(reached)` holds."""
    parent: dict[str, str | None] = {start: None}
    queue, found = deque([start]), []
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph.get(node, ())):
            if nxt in parent:
                continue
            parent[nxt] = node
            if forbidden(nxt):
                chain, at = [], nxt
                while at is not None:
                    chain.append(at)
                    at = parent[at]
                found.append(chain[::-1])
            else:
                queue.append(nxt)
    return found


def layer_violations(module: str, graph: dict[str, set[str]]) -> list[str]:
    own = layer(module)
    chains = chains_to(module, graph, lambda m: layer(m) > own)
    return [
        " -> ".join(chain) + f"  ({LAYER_NAMES[own]} reaches {LAYER_NAMES[layer(chain[-1])]})"
        for chain in chains
    ]


@pytest.mark.parametrize("module", sorted(import_graph()))
def test_imports_point_down_the_layers(module):
    found = layer_violations(module, import_graph())
    assert not found, "move the code to the right layer; imported upward:\n" + "\n".join(found)


@pytest.mark.parametrize("module", sorted(m for m in import_graph() if layer(m) == STAGES))
def test_stages_reach_adapters_only_through_the_ports(module):
    found = chains_to(module, import_graph(), lambda m: layer(m) == ADAPTERS)
    assert not found, "use the Run's engine, trainer, store, tracker instead:\n" + "\n".join(
        " -> ".join(chain) for chain in found
    )


def test_the_scan_follows_chains_through_lazy_relative_and_package_imports(tmp_path):
    files = {
        "metis_core/__init__.py": "",
        "metis_core/maths.py": "from .helpers import mean\n",
        "metis_core/helpers.py": "def mean():\n    from metis_core.store import outcomes\n",
        "metis_core/store/__init__.py": "",
        "metis_core/store/outcomes.py": "import duckdb\n",
        "metis_core/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from metis_core.sub.leaf import Leaf\n",
        "metis_core/sub/__init__.py": "import prefect.events\n",  # runs on importing sub.leaf
        "metis_core/sub/leaf.py": "class Leaf: ...\n",
        "tasks/__init__.py": "import prefect\n",
        "tasks/stages.py": "",
        "flows/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert layer_violations("metis_core.maths", graph) == [
        "metis_core.maths -> metis_core.helpers -> metis_core.store  (pure reaches adapter)",
        "metis_core.maths -> metis_core.helpers -> metis_core.store.outcomes  (pure reaches adapter)",
    ]
    assert layer_violations("metis_core.typed", graph) == [
        "metis_core.typed -> metis_core.sub -> prefect  (pure reaches task)",
    ]
    assert layer_violations("metis_core.store.outcomes", graph) == []
    assert layer_violations("tasks", graph) == []  # a task may use prefect


def test_the_scan_sees_the_adapters_use_their_systems():
    graph = import_graph()
    assert "vllm" in graph["metis_core.engine.vllm_engine"]  # imported inside methods
    assert "duckdb" in graph["metis_core.store.outcomes"]
    assert "prefect" in graph["tasks.stages"]
    assert layer("metis_core.launch") == ADAPTERS and layer("metis_core.run") == PURE
