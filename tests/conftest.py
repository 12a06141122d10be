"""Options of the whole suite: ``--repeat N`` runs each chaos test N times in a row.

``make chaos REPEAT=5`` (or ``pytest tests/chaos --repeat 5``): a chaos test that fails once in N
runs is a defect to find, so fault-handling changes are run several times before they are done.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--repeat", type=int, default=1, metavar="N", help="run each chaos test N times in a row (default 1)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    n = int(metafunc.config.getoption("repeat"))
    if n > 1 and metafunc.definition.get_closest_marker("chaos") is not None:
        metafunc.fixturenames.append("repeat_run")
        metafunc.parametrize("repeat_run", range(1, n + 1), ids=lambda i: f"run{i}of{n}")
