"""``sie worker --processes N``: N worker processes in one consumer group, under one command.

Python runs one worker on one core at a time; Faust scales by running one
process per core in the same consumer group, each taking its share of the
partitions. This module starts N ``sie worker`` children from one settings
object: each gets its own name (``<worker_name>-<i>``), metrics port
(``metrics_port + i - 1``, so the first keeps the configured one; 0 keeps 0)
and Faust data directory; the group, topics, Triton and everything else are
shared. Their output goes to this command's output.

SIGTERM or SIGINT is passed on to every child (each drains and commits, as a
single worker does) and the command exits when all have. Should a child exit
on its own, the others are stopped too and the command exits with the child's
status: whatever runs the command (systemd, Kubernetes, ``sie up``) restarts
the set, rather than a partial set running on unnoticed.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Protocol

from engine.settings import Settings
from ops.embedded.process import death_signal_hook
from ops.stack import worker_command, worker_settings

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 60.0  # a child's drain and commit, then it is killed


class Child(Protocol):
    """A started worker process (``subprocess.Popen`` in production)."""

    pid: int

    def poll(self) -> int | None:
        """None while it runs, else its exit status."""

    def send_signal(self, sig: int) -> None:
        """Send ``sig``."""

    def kill(self) -> None:
        """SIGKILL."""


Spawn = Callable[[Settings], Child]


def child_settings(settings: Settings, index: int) -> Settings:
    """Settings of child ``index`` (1-based): its own name, metrics port and data directory."""
    port = settings.metrics_port + index - 1 if settings.metrics_port else 0
    return worker_settings(settings, index, settings.data_dir, metrics_port=port)


def spawn_worker(settings: Settings) -> Child:
    """A ``sie worker`` child configured by ``settings`` (environment only), output inherited."""
    argv, env = worker_command(settings)
    # Each child dies with this command (prctl on Linux), as the embedded servers do.
    return subprocess.Popen(argv, env=env, preexec_fn=death_signal_hook())


@dataclass
class ProcessGroup:
    """N children and what happened to them."""

    children: list[Child]
    stopping: bool = False

    def signal_all(self, sig: int) -> None:
        """Send ``sig`` to every child still running."""
        for child in self.children:
            if child.poll() is None:
                child.send_signal(sig)

    def first_exit(self) -> tuple[int, int] | None:
        """(index, status) of a child that has exited, or None."""
        for i, child in enumerate(self.children, 1):
            status = child.poll()
            if status is not None:
                return i, status
        return None

    def all_exited(self) -> bool:
        """Whether every child has exited."""
        return all(c.poll() is not None for c in self.children)


def run_processes(
    settings: Settings,
    n: int,
    spawn: Spawn = spawn_worker,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    install_handlers: bool = True,
) -> int:
    """Run ``n`` workers until they are told to stop or one exits; returns the command's exit status."""
    group = ProcessGroup([spawn(child_settings(settings, i)) for i in range(1, n + 1)])
    pids = ", ".join(str(c.pid) for c in group.children)
    log.info("started %d worker processes in group %r (pids %s)", n, settings.kafka.group_id, pids)

    def stop(signum: int, _frame: FrameType | None) -> None:
        group.stopping = True
        group.signal_all(signal.SIGTERM)

    if install_handlers:
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    return supervise(group, sleep, clock)


def supervise(group: ProcessGroup, sleep: Callable[[float], None], clock: Callable[[], float]) -> int:
    """Wait for a stop or a child's exit, then for every child; the exit status (see the module doc)."""
    while not group.stopping:
        exited = group.first_exit()
        if exited is not None:
            index, status = exited
            log.error("worker process %d exited with status %s; stopping the others", index, status)
            group.signal_all(signal.SIGTERM)
            _wait(group, sleep, clock)
            return status if status > 0 else 1
        sleep(0.2)
    _wait(group, sleep, clock)
    statuses = [c.poll() or 0 for c in group.children]
    return max((s for s in statuses if s > 0), default=0)


def _wait(group: ProcessGroup, sleep: Callable[[float], None], clock: Callable[[], float]) -> None:
    deadline = clock() + STOP_TIMEOUT_S
    while not group.all_exited() and clock() < deadline:
        sleep(0.1)
    for child in group.children:
        if child.poll() is None:
            log.error("worker process %d did not stop in %.0f s; killing it", child.pid, STOP_TIMEOUT_S)
            child.kill()
