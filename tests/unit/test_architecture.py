"""The package rule of docs/architecture.md holds on this repository, and reports every planted breach.

The rule itself is in ``tests/unit/import_rule.py`` (functions of a tree's root); here it runs on the
repository, then on trees written to ``tmp_path`` with one violation each, to prove it sees them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.import_rule import (
    ADAPTERS,
    CORE,
    PROJECT,
    TELEMETRY,
    adapter_violations,
    core_violations,
    import_cycles,
    imported_modules,
    matches,
    module_name,
    outside_violations,
    telemetry_violations,
    unplaced_packages,
)

REPO = Path(__file__).resolve().parents[2]


def test_every_top_level_package_has_a_place_in_the_rule() -> None:
    assert unplaced_packages(REPO) == [], "add them to tests/unit/import_rule.py and docs/architecture.md"
    assert {p.parent.name for p in REPO.glob("*/__init__.py")} >= {CORE, TELEMETRY, *ADAPTERS, "ops"}


def test_the_core_imports_only_allowed_modules_and_controls_no_process() -> None:
    assert core_violations(REPO) == []


def test_observability_imports_no_adapter_library_and_only_the_core() -> None:
    assert telemetry_violations(REPO) == []


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_an_adapter_imports_no_other_adapter_nor_the_composition_root(adapter: str) -> None:
    assert adapter_violations(REPO, adapter) == []


def test_benchmarks_and_model_code_do_not_import_the_tests() -> None:
    assert outside_violations(REPO) == []


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert import_cycles(REPO) == []


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
    assert matches("http.client", "http") and not matches("httpx", "http")


def test_a_sub_package_init_is_its_package_and_its_relative_imports_resolve_there() -> None:
    assert module_name(Path("engine/contract/__init__.py")) == ("engine.contract", "engine.contract")
    assert module_name(Path("engine/contract/wire.py")) == ("engine.contract.wire", "engine.contract")
    assert "engine.contract.wire" in imported_modules("from . import wire\n", "engine.contract")
    assert "engine.records" in imported_modules("from ..records import Event\n", "engine.contract")


# --- planted violations: each tree breaks the rule once, and the rule says where ---------------------


def plant(root: Path, files: dict[str, str]) -> Path:
    """Write a project tree (every package with an ``__init__.py``) under ``root``."""
    for package in PROJECT:
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").touch()
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(root).parents:
            if parent != Path(".") and not (root / parent / "__init__.py").exists():
                (root / parent / "__init__.py").touch()
        path.write_text(source)
    return root


@pytest.mark.parametrize(
    ("source", "reported"),
    [
        ("import signal\n", "engine/bad.py imports signal"),
        ("import socket\n", "engine/bad.py imports socket"),
        ("import subprocess\n", "engine/bad.py imports subprocess"),
        ("from multiprocessing import Process\n", "engine/bad.py imports multiprocessing"),
        ("from concurrent.futures import ProcessPoolExecutor\n", "engine/bad.py imports concurrent.futures"),
        ("import http.server\n", "engine/bad.py imports http.server"),
        ("import os\n", "engine/bad.py imports os"),
        ("import sys\n", "engine/bad.py imports sys"),
        ("import faust\n", "engine/bad.py imports faust"),
        ("import tritonclient.grpc as g\n", "engine/bad.py imports tritonclient.grpc"),
        ("from streams.sink import KafkaSink\n", "engine/bad.py imports streams.sink"),
        ("def f():\n    from asyncio.subprocess import PIPE\n", "engine/bad.py imports asyncio.subprocess"),
        (
            "from asyncio import create_subprocess_exec\n",
            "engine/bad.py imports asyncio.create_subprocess_exec",
        ),
        (
            "import asyncio\nasyncio.get_running_loop().add_signal_handler(15, print)\n",
            "bad.py:2 uses add_signal_handler",
        ),
        ("def stop(o):\n    o.kill(o.getpid(), 9)\n", "engine/bad.py:2 uses kill"),
        ("def stop(proc):\n    proc._exit(70)\n", "engine/bad.py:2 uses _exit"),
        ("def stop(m):\n    getattr(m, 'kill')(1, 9)\n", "engine/bad.py:2 uses kill"),
        ("m = __import__('os')\n", "engine/bad.py:1 uses __import__()"),
        ("exit(70)\n", "engine/bad.py:1 uses exit()"),
    ],
)
def test_a_planted_breach_of_the_core_is_reported(tmp_path: Path, source: str, reported: str) -> None:
    root = plant(tmp_path, {"engine/bad.py": source, "engine/good.py": "import asyncio\nimport numpy\n"})
    found = core_violations(root)
    assert any(reported in line for line in found), found
    assert not any("good.py" in line for line in found)


def test_a_planted_breach_inside_a_core_sub_package_is_reported_at_its_path(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {"engine/contract/__init__.py": "from . import wire\n", "engine/contract/wire.py": "import socket\n"},
    )
    assert core_violations(root) == ["engine/contract/wire.py imports socket"]


@pytest.mark.parametrize("library", ["faust", "confluent_kafka", "tritonclient.grpc", "aiokafka", "grpc"])
def test_observability_importing_an_adapter_library_is_reported(tmp_path: Path, library: str) -> None:
    root = plant(tmp_path, {"observability/bad.py": f"import {library}\n"})
    assert telemetry_violations(root) == [f"observability/bad.py imports {library}"]


def test_observability_importing_an_adapter_package_is_reported(tmp_path: Path) -> None:
    root = plant(tmp_path, {"observability/bad.py": "from inference.triton import TritonBackend\n"})
    assert "observability/bad.py imports inference.triton" in telemetry_violations(root)


def test_an_adapter_importing_another_adapter_is_reported(tmp_path: Path) -> None:
    root = plant(tmp_path, {"streams/bad.py": "from ..inference import triton\n"})
    assert "streams/bad.py imports inference.triton" in adapter_violations(root, "streams")


def test_benchmarks_importing_the_tests_is_reported(tmp_path: Path) -> None:
    root = plant(tmp_path, {"benchmarks/bad.py": "def f():\n    from tests.unit.fakes import X\n"})
    assert "benchmarks/bad.py imports tests.unit.fakes" in outside_violations(root)


def test_an_import_circle_is_reported_even_under_type_checking(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "engine/a.py": "from engine.b import B\n",
            "engine/b.py": "import typing\nif typing.TYPE_CHECKING:\n    from engine.c import C\n",
            "engine/c.py": "from engine import a\n",
            "engine/d.py": "from engine.a import A\n",
        },
    )
    assert import_cycles(root) == [["engine.a", "engine.b", "engine.c"]]


def test_a_relative_import_in_a_sub_package_init_closes_a_circle_at_the_right_level(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "engine/contract/__init__.py": "from . import decode\n",
            "engine/contract/decode.py": "import engine.contract\n",
            "engine/decode.py": "x = 1\n",  # where a resolution one level too shallow would land
        },
    )
    assert import_cycles(root) == [["engine.contract", "engine.contract.decode"]]


def test_a_clean_planted_tree_has_nothing_to_report(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "engine/a.py": "import asyncio\nimport threading\nfrom engine.b import B\n",
            "engine/b.py": "import numpy as np\n",
            "observability/m.py": "import prometheus_client\nfrom engine.a import A\n",
            "streams/s.py": "import confluent_kafka\nfrom engine.b import B\nfrom observability.m import M\n",
            "ops/w.py": "import os\nimport signal\nos.kill(os.getpid(), signal.SIGTERM)\n",
        },
    )
    assert core_violations(root) == []
    assert telemetry_violations(root) == []
    assert adapter_violations(root, "streams") == []
    assert import_cycles(root) == []
