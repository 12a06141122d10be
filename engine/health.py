"""Liveness of a worker: the first fatal failure makes it unhealthy for good and stops the process.

A worker is alive until something it cannot recover from happens: a pipeline
task died, or Kafka refused outputs for good (see :mod:`streams.sink`). Then
:meth:`Liveness.fail` logs the reason as an error, ``/healthz`` answers 503
with it (:func:`with_liveness` wraps the metrics server's WSGI app), and the
process is stopped (:class:`ProcessStopper`: a SIGTERM, so Faust commits what
is acknowledged, then a hard exit if that graceful stop hangs) with
:data:`FAILED_EXIT_CODE`, so a supervisor (``sie up``, Kubernetes) restarts it
instead of leaving its partitions stalled behind a live-looking process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

FAILED_EXIT_CODE = 70  # EX_SOFTWARE
GRACE_S = 15.0  # longest the graceful stop of a failed worker may take before a hard exit

WsgiApp = Callable[..., Iterable[bytes]]


class Liveness:
    """Alive until :meth:`fail`; the first failure is kept and reported (``on_fail`` is told once)."""

    def __init__(self, on_fail: Callable[[str], None] | None = None) -> None:
        self._on_fail = on_fail
        self._lock = threading.Lock()
        self.failure: str | None = None

    @property
    def alive(self) -> bool:
        """Whether no fatal failure has happened."""
        return self.failure is None

    def fail(self, reason: str) -> None:
        """Record a fatal failure (the first one wins), log it, and tell ``on_fail``."""
        with self._lock:
            if self.failure is not None:
                return
            self.failure = reason
        log.error("worker failed and stops: %s", reason)
        if self._on_fail is not None:
            self._on_fail(reason)

    def exit_code(self, code: int | str | None) -> int | str | None:
        """The process exit status: ``code`` while alive, :data:`FAILED_EXIT_CODE` after a failure."""
        return code if self.alive else FAILED_EXIT_CODE


def with_liveness(app: WsgiApp, liveness: Liveness) -> WsgiApp:
    """``app`` whose ``/healthz`` answers 503 ``{"status": "failed", "reason": ...}`` after a failure."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        failure = liveness.failure
        if environ.get("PATH_INFO") != "/healthz" or failure is None:
            return app(environ, start_response)
        body = json.dumps({"status": "failed", "reason": failure}).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_response("503 Service Unavailable", headers)
        return [body]

    return wrapped


class ProcessStopper:
    """Stops this process after a failure: SIGTERM (a graceful stop), then a hard exit after ``grace_s``."""

    def __init__(
        self,
        grace_s: float = GRACE_S,
        kill: Callable[[int, int], None] = os.kill,
        hard_exit: Callable[[int], None] = os._exit,
    ) -> None:
        self._grace_s = grace_s
        self._kill = kill
        self._hard_exit = hard_exit
        self._started = threading.Event()

    def __call__(self, reason: str) -> None:
        """Start stopping (once)."""
        if self._started.is_set():
            return
        self._started.set()
        watchdog = threading.Thread(target=self._watchdog, name="failed-worker-exit", daemon=True)
        watchdog.start()
        self._kill(os.getpid(), signal.SIGTERM)

    def _watchdog(self) -> None:
        threading.Event().wait(self._grace_s)
        log.error("graceful stop took over %.0fs; exiting with status %d", self._grace_s, FAILED_EXIT_CODE)
        logging.shutdown()
        self._hard_exit(FAILED_EXIT_CODE)
