"""The package rule of docs/architecture.md, checked on the source (an AST scan of every import).

* ``engine/`` (the core) imports no Kafka, Faust, Triton, gRPC, Prometheus or HTTP library and no
  other package of the project;
* ``observability/`` imports only ``engine/`` (and itself);
* an adapter (``streams/``, ``inference/``, ``models/``) imports ``engine/``, ``observability/`` and
  itself, never another adapter nor ``ops/``;
* ``ops/`` is the composition root: it may import everything.

Imports inside functions and under ``if TYPE_CHECKING:`` count as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CORE = "engine"
TELEMETRY = "observability"
ADAPTERS = ("streams", "inference", "models")
COMPOSITION_ROOT = "ops"
# Not part of the engine's import graph: developer tools and the Triton model code.
OUTSIDE = ("benchmarks", "model_repository", "tests")
PROJECT = (CORE, TELEMETRY, *ADAPTERS, COMPOSITION_ROOT, *OUTSIDE)

# Libraries the core must not import (top-level name, or a dotted prefix).
CORE_FORBIDDEN_LIBRARIES = (
    "faust",
    "mode",
    "aiokafka",
    "confluent_kafka",
    "tritonclient",
    "grpc",
    "prometheus_client",
    "http",
    "urllib.request",
    "wsgiref",
    "requests",
    "httpx",
    "aiohttp",
    "opentelemetry.sdk",
    "opentelemetry.exporter",
)


def imported_modules(source: str, package: str) -> set[str]:
    """Every module ``source`` imports (relative imports resolved against ``package``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            # `from engine import codec` imports engine.codec
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def modules_of(package: str) -> list[tuple[str, set[str]]]:
    out = []
    for path in sorted((REPO / package).rglob("*.py")):
        dotted = ".".join(path.relative_to(REPO).with_suffix("").parts)
        owner = dotted if path.name == "__init__.py" else dotted.rsplit(".", 1)[0]
        out.append((str(path.relative_to(REPO)), imported_modules(path.read_text(), owner)))
    return out


def violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path} imports {module}"
        for path, imports in modules_of(package)
        for module in sorted(imports)
        if any(matches(module, f) for f in forbidden)
    ]


def test_every_top_level_package_has_a_place_in_the_rule() -> None:
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert packages <= set(PROJECT), f"add {sorted(packages - set(PROJECT))} to docs/architecture.md"
    assert {CORE, TELEMETRY, *ADAPTERS, COMPOSITION_ROOT} <= packages


def test_the_core_imports_no_io_library_and_no_other_package_of_the_project() -> None:
    others = tuple(p for p in PROJECT if p != CORE)
    assert violations(CORE, CORE_FORBIDDEN_LIBRARIES + others) == []


def test_observability_imports_only_the_core() -> None:
    others = tuple(p for p in PROJECT if p not in (CORE, TELEMETRY))
    assert violations(TELEMETRY, others) == []


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_an_adapter_imports_no_other_adapter_nor_the_composition_root(adapter: str) -> None:
    others = tuple(p for p in PROJECT if p not in (CORE, TELEMETRY, adapter))
    assert violations(adapter, others) == []


def test_the_scan_sees_every_kind_of_import() -> None:
    source = (
        "import faust\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from streams.sink import KafkaSink\n"
        "def f():\n    from confluent_kafka.admin import AdminClient\n"
        "from engine import codec\n"
        "from . import records\n"
        "from ..inference import triton\n"
    )
    found = imported_modules(source, "engine.sub")
    for module in ("faust", "streams.sink", "confluent_kafka.admin", "engine.codec", "engine.sub.records"):
        assert module in found
    assert "engine.inference.triton" in found
    assert any(matches(m, "confluent_kafka") for m in found)
    assert not matches("httpx", "http")
