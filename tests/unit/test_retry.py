"""Retry policy and circuit breaker."""

from __future__ import annotations

import pytest

from engine.errors import BackendUnavailable, InferenceFailed
from engine.retry import CircuitBreaker, CircuitState, Retrier
from engine.settings import RetrySettings
from engine.testing import ManualClock

SETTINGS = RetrySettings(initial_backoff_s=0.1, max_backoff_s=1.0, failure_threshold=2, reset_timeout_s=0.5)


def test_circuit_opens_after_threshold_and_probes_after_reset_timeout() -> None:
    clock = ManualClock()
    states: list[CircuitState] = []
    breaker = CircuitBreaker(SETTINGS, clock, on_change=states.append)
    breaker.failure()
    assert breaker.state is CircuitState.CLOSED
    breaker.failure()
    assert breaker.state is CircuitState.OPEN
    breaker.success()
    assert states == [CircuitState.OPEN, CircuitState.CLOSED]


async def test_open_circuit_waits_then_lets_one_probe_through() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(SETTINGS, clock)
    breaker.failure()
    breaker.failure()
    await breaker.acquire()  # sleeps (advances the manual clock) until the reset timeout
    assert clock.now() >= 0.5 and breaker.state is CircuitState.HALF_OPEN
    breaker.failure()
    assert breaker.state is CircuitState.OPEN  # a failed probe re-opens, for longer


async def test_retrier_retries_retryable_errors_until_success() -> None:
    clock = ManualClock()
    attempts = []

    async def flaky() -> str:
        attempts.append(clock.now())
        if len(attempts) < 5:
            raise BackendUnavailable("UNAVAILABLE")
        return "ok"

    retried: list[Exception] = []
    retrier = Retrier(SETTINGS, clock, CircuitBreaker(SETTINGS, clock), on_retry=retried.append)
    assert await retrier.call(flaky) == "ok"
    assert len(attempts) == 5 and len(retried) == 4
    assert all(b > a for a, b in zip(attempts, attempts[1:], strict=False))


async def test_retrier_raises_fatal_errors_at_once_and_keeps_circuit_closed() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(SETTINGS, clock)

    async def bad() -> None:
        raise InferenceFailed("INVALID_ARGUMENT")

    with pytest.raises(InferenceFailed):
        await Retrier(SETTINGS, clock, breaker).call(bad)
    assert breaker.state is CircuitState.CLOSED
