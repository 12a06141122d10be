"""The worker's HTTP server (observability/server.py serve) on a real socket of this machine."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from observability.server import serve


def _ready() -> tuple[bool, dict[str, Any]]:
    return True, {}


@pytest.fixture
def server() -> Iterator[Any]:
    """A server on a free port of 127.0.0.1, with a short per-connection timeout."""
    srv = serve(0, CollectorRegistry(), _ready, host="127.0.0.1", connection_timeout=1.0)
    yield srv
    srv.shutdown()
    srv.server_close()


def _healthz(port: int, timeout: float) -> tuple[int, dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as response:
        return int(response.status), json.loads(response.read())


def test_healthz_answers_promptly_while_another_connection_sits_idle() -> None:
    """A probe is not queued behind a client that connected and sent nothing (default timeout)."""
    srv = serve(0, CollectorRegistry(), _ready, host="127.0.0.1")
    try:
        with socket.create_connection(("127.0.0.1", srv.server_port)) as idle:
            idle.sendall(b"GET /metr")  # a request line that never ends
            time.sleep(0.2)  # the server has accepted it and waits for the rest
            started = time.monotonic()
            assert _healthz(srv.server_port, timeout=3) == (200, {"status": "alive"})
            assert time.monotonic() - started < 2
    finally:
        srv.shutdown()
        srv.server_close()


def test_healthz_answers_while_many_connections_sit_idle(server: Any) -> None:
    idle = [socket.create_connection(("127.0.0.1", server.server_port)) for _ in range(20)]
    try:
        assert _healthz(server.server_port, timeout=3) == (200, {"status": "alive"})
    finally:
        for sock in idle:
            sock.close()


def test_an_idle_connection_is_closed_after_the_connection_timeout(server: Any) -> None:
    with socket.create_connection(("127.0.0.1", server.server_port)) as idle:
        idle.settimeout(10)
        started = time.monotonic()
        assert idle.recv(1024) == b"", "the server closes the connection"
        assert time.monotonic() - started < 5


def test_server_binds_the_given_host(server: Any) -> None:
    assert server.server_address[0] == "127.0.0.1"


def test_server_binds_all_interfaces_by_default_so_container_probes_reach_it() -> None:
    srv = serve(0, CollectorRegistry(), _ready)
    try:
        assert srv.server_address[0] == "0.0.0.0"
        assert _healthz(srv.server_port, timeout=3)[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()
