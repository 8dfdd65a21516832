"""Imports point one way: the pure parts of metis_core never import the systems they are driven
by, and nothing in metis_core imports prefect (only tasks/ and flows/ do)."""

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "metis_core"
ADAPTERS = {"engine", "trainer", "store", "tracking"}
ADAPTER_MODULES = {"launch.py"}  # wires the adapters together
SYSTEMS = {"prefect", "mlflow", "duckdb", "vllm", "deepspeed"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def core_modules():
    return sorted(CORE.rglob("*.py"))


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(CORE)))
def test_metis_core_never_imports_prefect(path):
    assert "prefect" not in imported_roots(path)


def pure_modules():
    return [
        p
        for p in core_modules()
        if p.relative_to(CORE).parts[0] not in ADAPTERS and p.name not in ADAPTER_MODULES
    ]


@pytest.mark.parametrize("path", pure_modules(), ids=lambda p: str(p.relative_to(CORE)))
def test_pure_parts_do_not_import_systems(path):
    leaked = imported_roots(path) & SYSTEMS
    assert not leaked, f"{path.relative_to(CORE)} imports {leaked}; move that code into an adapter"


def test_the_scan_sees_the_adapters():
    assert "vllm" in imported_roots(CORE / "engine" / "vllm_engine.py")
    assert "duckdb" in imported_roots(CORE / "store" / "outcomes.py")
