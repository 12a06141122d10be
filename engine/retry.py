"""Retries with exponential backoff, behind a circuit breaker.

Policy: a retryable failure (the backend unavailable, overloaded, timed out) is
retried without limit - the stream pauses rather than dead-lettering events
because the backend is down. After ``failure_threshold`` failures in a row the
circuit opens: no call is attempted until ``reset_timeout`` has passed, then a
single probe goes through (half-open); its success closes the circuit, its
failure opens it again for a longer time (capped at ``max_backoff``).
Fatal errors pass straight through and do not count against the circuit.
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from engine.backoff import next_delay
from engine.clock import Clock
from engine.errors import FatalError, RetryableError
from engine.settings import RetrySettings

log = logging.getLogger(__name__)
T = TypeVar("T")


class CircuitState(enum.IntEnum):
    """Circuit states; the value is exported as a gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """Stops calls to a failing dependency for a while; see the module docstring."""

    def __init__(
        self,
        settings: RetrySettings,
        clock: Clock,
        on_change: Callable[[CircuitState], None] | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._on_change = on_change
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._open_for = settings.reset_timeout_s
        self._probing = False

    @property
    def state(self) -> CircuitState:
        """The current state."""
        return self._state

    async def acquire(self) -> None:
        """Wait until a call may be attempted."""
        while True:
            if self._state is CircuitState.CLOSED:
                return
            if self._state is CircuitState.OPEN:
                wait = self._opened_at + self._open_for - self._clock.now()
                if wait <= 0:
                    self._set(CircuitState.HALF_OPEN)
                    self._probing = True
                    return
                await self._clock.sleep(wait)
            elif not self._probing:
                self._probing = True
                return
            else:
                await self._clock.sleep(min(0.05, self._settings.reset_timeout_s))

    def success(self) -> None:
        """Record a successful call."""
        self._failures = 0
        self._probing = False
        self._open_for = self._settings.reset_timeout_s
        if self._state is not CircuitState.CLOSED:
            log.info("circuit closed: the inference backend answers again")
            self._set(CircuitState.CLOSED)

    def release(self) -> None:
        """Give back a probe whose call ended without a verdict (e.g. cancelled)."""
        self._probing = False

    def failure(self) -> None:
        """Record a retryable failure."""
        self._failures += 1
        self._probing = False
        if self._state is CircuitState.HALF_OPEN:
            retry = self._settings
            self._open_for = next_delay(self._open_for, retry.multiplier, retry.max_backoff_s)
            self._open()
        elif self._state is CircuitState.CLOSED and self._failures >= self._settings.failure_threshold:
            self._open()

    def _open(self) -> None:
        if self._state is not CircuitState.OPEN:
            log.warning("circuit open after %d failures; next try in %.2fs", self._failures, self._open_for)
        self._opened_at = self._clock.now()
        self._set(CircuitState.OPEN)

    def _set(self, state: CircuitState) -> None:
        if state is not self._state:
            self._state = state
            if self._on_change is not None:
                self._on_change(state)


class Retrier:
    """Runs a call until it succeeds or fails fatally; see the module docstring."""

    def __init__(
        self,
        settings: RetrySettings,
        clock: Clock,
        breaker: CircuitBreaker,
        on_retry: Callable[[RetryableError], None] | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._breaker = breaker
        self._on_retry = on_retry

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Await ``fn()`` until it returns; RetryableError is retried, others raise."""
        delay = self._settings.initial_backoff_s
        while True:
            await self._breaker.acquire()
            try:
                result = await fn()
            except RetryableError as err:
                self._breaker.failure()
                if self._on_retry is not None:
                    self._on_retry(err)
                await self._clock.sleep(delay * random.uniform(0.5, 1.0))
                delay = next_delay(delay, self._settings.multiplier, self._settings.max_backoff_s)
                continue
            except FatalError:
                self._breaker.success()  # the server answered: it is reachable
                raise
            except BaseException:
                self._breaker.release()
                raise
            self._breaker.success()
            return result
