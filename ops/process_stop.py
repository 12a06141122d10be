"""Stopping a failed worker's process: SIGTERM first, a hard exit if the graceful stop hangs.

:class:`engine.health.Liveness` tells :class:`ProcessStopper` once, on the
first fatal failure. The SIGTERM lets Faust commit what is acknowledged; should
that stop hang, the process exits with :data:`engine.health.FAILED_EXIT_CODE`
after :data:`GRACE_S`, so a supervisor (``sie up``, Kubernetes) restarts it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

from engine.health import FAILED_EXIT_CODE

log = logging.getLogger(__name__)

GRACE_S = 15.0  # longest the graceful stop of a failed worker may take before a hard exit


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
