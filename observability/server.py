"""The worker's HTTP endpoint: ``/metrics``, ``/healthz`` (alive) and ``/readyz``.

``/healthz`` answers 503 with the reason once the worker has failed
(:func:`with_liveness` around the app, fed by :class:`engine.health.Liveness`).

Each connection is handled on its own thread and closed when it sends nothing
for ``connection_timeout`` seconds, so a slow scrape or an idle client never
keeps a liveness probe waiting.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from engine.health import Liveness

WsgiApp = Callable[..., Iterable[bytes]]

# () -> (ready, details shown in the response body)
ReadinessCheck = Callable[[], tuple[bool, dict[str, Any]]]

# Longest a connection may stay silent (also bounds a send to a client that stops reading).
CONNECTION_TIMEOUT_S = 10.0


class _QuietHandler(WSGIRequestHandler):
    timeout = CONNECTION_TIMEOUT_S  # socket timeout, set per connection (StreamRequestHandler)

    def handle(self) -> None:
        """Serve the request; a client that went silent or away is simply dropped."""
        try:
            super().handle()
        except (TimeoutError, ConnectionError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Scrapes every few seconds would flood the log; stay quiet."""


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """A WSGI server with one daemon thread per connection."""

    daemon_threads = True  # a connection still open never holds up the worker's exit
    block_on_close = False


def make_app(registry: CollectorRegistry, readiness: ReadinessCheck) -> Callable[..., Iterable[bytes]]:
    """A WSGI app serving metrics from ``registry`` and the health endpoints."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            return _json(start_response, 200, {"status": "alive"})
        if path == "/readyz":
            ready, details = readiness()
            return _json(start_response, 200 if ready else 503, {"ready": ready, **details})
        return metrics_app(environ, start_response)

    return app


def with_liveness(app: WsgiApp, liveness: Liveness) -> WsgiApp:
    """``app`` whose ``/healthz`` answers 503 ``{"status": "failed", "reason": ...}`` after a failure."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        failure = liveness.failure
        if environ.get("PATH_INFO") != "/healthz" or failure is None:
            return app(environ, start_response)
        return _json(start_response, 503, {"status": "failed", "reason": failure})

    return wrapped


def _json(start_response: Callable[..., Any], code: int, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body, default=str).encode()
    status = {200: "200 OK", 503: "503 Service Unavailable"}[code]
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def serve(
    port: int,
    registry: CollectorRegistry,
    readiness: ReadinessCheck,
    host: str = "0.0.0.0",
    *,
    connection_timeout: float = CONNECTION_TIMEOUT_S,
) -> WSGIServer:
    """Serve on ``host:port`` in a daemon thread; returns the server (``.server_port``, ``.shutdown()``).

    ``host`` is ``settings.metrics_host``: all interfaces by default, so probes
    reach it inside a container.
    """
    handler = type("_Handler", (_QuietHandler,), {"timeout": connection_timeout})
    server = make_server(host, port, make_app(registry, readiness), ThreadingWSGIServer, handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
