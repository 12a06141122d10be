"""Liveness of a worker: the first fatal failure makes it unhealthy for good.

A worker is alive until something it cannot recover from happens: a pipeline
task died, or Kafka refused outputs for good (see :mod:`streams.sink`). Then
:meth:`Liveness.fail` logs the reason as an error and tells ``on_fail`` once.
What follows is the adapters' work, not the core's: ``/healthz`` answers 503
with the reason (``observability.server.with_liveness``), and the process is
stopped (``ops.process_stop.ProcessStopper``: a SIGTERM, so Faust commits what
is acknowledged, then a hard exit if that graceful stop hangs) with
:data:`FAILED_EXIT_CODE`, so a supervisor (``sie up``, Kubernetes) restarts it
instead of leaving its partitions stalled behind a live-looking process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

FAILED_EXIT_CODE = 70  # EX_SOFTWARE


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
