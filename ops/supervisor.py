"""Restart policy of ``sie up``: exited children come back, with backoff, until they crash too often.

Like a compose ``restart: always`` policy or a Kubernetes Deployment. Pure
logic: the children, the clock and the output are injected, so the policy is
unit-tested without processes (tests/unit/test_supervisor.py).

* A *supervised* child (a worker, tritonserver) that has exited is started
  again after a backoff that doubles from ``initial_backoff_s`` up to
  ``max_backoff_s`` and drops back once the child has stayed up
  ``stable_after_s``.
* The supervisor gives up (:class:`GaveUp`) when a child has exited
  ``max_exits`` times within ``window_s`` seconds.
* Every child is supervised the same way, the broker too: it restarts on its
  own data directory (log recovery after an unclean stop), and the workers,
  which ride through the outage, resume from their committed positions.

The owner calls :meth:`Supervisor.poll` from its own loop; a poll only starts
processes and asks readiness probes, it never waits for a child.
"""

from __future__ import annotations

import logging
import signal
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from engine.backoff import delay_after

log = logging.getLogger(__name__)


class Clock(Protocol):
    """Monotonic seconds (``time.monotonic`` in production)."""

    def __call__(self) -> float:
        """The current time."""


class Child(Protocol):
    """A child the supervisor restarts."""

    @property
    def name(self) -> str:
        """Its name in messages."""

    def exit_code(self) -> int | None:
        """None while it runs; else its return code (negative: killed by that signal)."""

    def respawn(self) -> None:
        """Start it again as before (same settings and ports); must not wait until it is ready."""

    def ready(self) -> bool:
        """Whether it serves again (a quick probe)."""


class Level(Enum):
    """How loud a :class:`Notice` is."""

    INFO = "info"  # started again, ready again
    WARNING = "warning"  # exited


@dataclass(frozen=True)
class Notice:
    """One thing the supervisor did or saw, for the console."""

    level: Level
    child: str
    text: str


Notify = Callable[[Notice], None]


def _log_notice(notice: Notice) -> None:
    log.log(logging.INFO if notice.level is Level.INFO else logging.WARNING, "%s", notice.text)


class SupervisionError(RuntimeError):
    """The stack cannot go on; the message says why (``sie up`` prints it and exits non-zero)."""

    def __init__(self, message: str, child: str) -> None:
        super().__init__(message)
        self.child = child


class GaveUp(SupervisionError):
    """A supervised child exited too often within the window."""


def _probe(child: Child) -> bool:
    try:
        return child.ready()
    except Exception:  # a probe that fails means "not ready yet"
        return False


def describe_exit(code: int) -> str:
    """``"SIGKILL"`` for -9, ``"exit code 1"`` for 1 (``Popen.returncode`` convention)."""
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


@dataclass(frozen=True)
class RestartPolicy:
    """Backoff and give-up limits."""

    initial_backoff_s: float = 1.0
    multiplier: float = 2.0
    max_backoff_s: float = 30.0
    max_exits: int = 5  # give up at this many exits ...
    window_s: float = 60.0  # ... within this many seconds
    stable_after_s: float = 60.0  # up this long: the next backoff starts at initial_backoff_s again

    def backoff(self, streak: int) -> float:
        """Delay before the restart that follows ``streak`` earlier restarts in a row."""
        return delay_after(streak, self.initial_backoff_s, self.multiplier, self.max_backoff_s)


@dataclass
class _State:
    """What the supervisor remembers about one supervised child."""

    child: Child
    exits: deque[float] = field(default_factory=deque)  # times of exits within the window
    streak: int = 0  # restarts since the child was last up for stable_after_s
    restarts: int = 0  # restarts so far, for messages (like Kubernetes' RESTARTS)
    due: float | None = None  # when the pending restart is due
    exited_at: float = 0.0
    started_at: float | None = None
    awaiting_ready: bool = False


class Supervisor:
    """Restarts exited ``children`` by ``policy``; raises :class:`GaveUp` when it gives up."""

    def __init__(
        self,
        children: Sequence[Child],
        *,
        policy: RestartPolicy | None = None,
        clock: Clock,
        notify: Notify = _log_notice,
    ) -> None:
        self.policy = policy or RestartPolicy()
        self._states = [_State(child) for child in children]
        self._clock = clock
        self._notify = notify

    def restarts(self) -> dict[str, int]:
        """Restarts so far per supervised child."""
        return {s.child.name: s.restarts for s in self._states}

    def poll(self) -> None:
        """Look at every child once: restart what is due, note exits and readiness.

        Raises :class:`GaveUp` if a child exited ``max_exits`` times within ``window_s``.
        """
        now = self._clock()
        for state in self._states:
            if state.due is not None:
                if now >= state.due:
                    self._respawn(state, now)
                continue
            code = state.child.exit_code()
            if code is None:
                self._running(state, now)
            else:
                self._exited(state, describe_exit(code), now)

    def next_poll_in(self, longest: float) -> float:
        """Seconds the owner may sleep before the next poll: ``longest`` or until a restart is due."""
        now = self._clock()
        dues = [s.due - now for s in self._states if s.due is not None]
        return max(0.0, min([longest, *dues]))

    def _exited(self, state: _State, status: str, now: float) -> None:
        policy = self.policy
        name = state.child.name
        state.exits.append(now)
        while state.exits and state.exits[0] <= now - policy.window_s:
            state.exits.popleft()
        state.started_at = None
        state.awaiting_ready = False
        if len(state.exits) >= policy.max_exits:
            raise GaveUp(
                f"{name} exited {len(state.exits)} times within {policy.window_s:.0f}s "
                f"(last: {status}); giving up on it, so the stack stops",
                name,
            )
        delay = policy.backoff(state.streak)
        state.streak += 1
        state.restarts += 1
        state.exited_at = now
        state.due = now + delay
        text = f"{name} exited ({status}); restarting in {delay:.1f}s (restart {state.restarts})"
        self._say(Level.WARNING, name, text)

    def _respawn(self, state: _State, now: float) -> None:
        state.due = None
        try:
            state.child.respawn()
        except Exception as exc:  # a failed start counts as an exit
            self._exited(state, f"failed to start: {exc}", now)
            return
        state.started_at = now
        state.awaiting_ready = True
        name = state.child.name
        self._say(Level.INFO, name, f"{name} started again (restart {state.restarts})")

    def _running(self, state: _State, now: float) -> None:
        if state.awaiting_ready and _probe(state.child):
            state.awaiting_ready = False
            name = state.child.name
            self._say(Level.INFO, name, f"{name} ready again {now - state.exited_at:.1f}s after it exited")
        if (
            state.started_at is not None
            and state.streak
            and now - state.started_at >= self.policy.stable_after_s
        ):
            state.streak = 0

    def _say(self, level: Level, child: str, text: str) -> None:
        self._notify(Notice(level, child, text))
