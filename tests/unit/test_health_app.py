"""The worker's HTTP app (observability/server.py make_app), called as WSGI without a socket."""

from __future__ import annotations

import json
from typing import Any
from wsgiref.util import setup_testing_defaults

from prometheus_client import CollectorRegistry, Counter

from observability.server import ReadinessCheck, make_app


def get(
    readiness: ReadinessCheck, path: str, registry: CollectorRegistry | None = None
) -> tuple[int, str, bytes]:
    """(status code, content type, body) of a GET on ``path``."""
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        captured["status"], captured["headers"] = status, dict(headers)

    body = b"".join(make_app(registry or CollectorRegistry(), readiness)(environ, start_response))
    return int(captured["status"].split()[0]), captured["headers"]["Content-Type"], body


def fixed(ready: bool, **details: Any) -> ReadinessCheck:
    return lambda: (ready, details)


def test_healthz_answers_200_whether_or_not_the_worker_is_ready() -> None:
    for ready in (False, True):
        code, content_type, body = get(fixed(ready), "/healthz")
        assert (code, content_type) == (200, "application/json")
        assert json.loads(body) == {"status": "alive"}


def test_readyz_answers_503_with_the_reason_while_not_ready() -> None:
    code, _, body = get(fixed(False, assigned_partitions=0, triton=False), "/readyz")
    assert code == 503
    assert json.loads(body) == {"ready": False, "assigned_partitions": 0, "triton": False}


def test_readyz_answers_200_with_assigned_partitions_when_ready() -> None:
    code, _, body = get(fixed(True, assigned_partitions=3, triton=True), "/readyz")
    assert code == 200
    assert json.loads(body) == {"ready": True, "assigned_partitions": 3, "triton": True}


def test_readyz_asks_the_readiness_check_on_every_request() -> None:
    states = iter([False, True, False])
    check: ReadinessCheck = lambda: (next(states), {})  # noqa: E731
    assert [get(check, "/readyz")[0] for _ in range(3)] == [503, 200, 503]


def test_other_paths_serve_the_registry_metrics() -> None:
    registry = CollectorRegistry()
    Counter("sie_test_events", "events seen by this test", registry=registry).inc(7)
    code, content_type, body = get(fixed(False), "/metrics", registry)
    assert code == 200 and content_type.startswith("text/plain")
    assert b"sie_test_events_total 7.0" in body
