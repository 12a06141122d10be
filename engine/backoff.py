"""Exponential backoff, the one formula behind every retry pause of the project.

Pure arithmetic, no sleeping: the caller waits. Used by the retrier and the circuit breaker
(engine/retry.py), the wait for the Kafka broker (streams/kafka_tools.py) and the restart policy
of ``sie up`` (ops/supervisor.py).
"""

from __future__ import annotations


def next_delay(delay: float, multiplier: float, cap: float) -> float:
    """The pause after one of ``delay``: ``delay * multiplier``, at most ``cap``."""
    return min(delay * multiplier, cap)


def delay_after(attempts: int, initial: float, multiplier: float, cap: float) -> float:
    """The pause after ``attempts`` pauses in a row, the first of ``initial``:
    ``initial * multiplier ** attempts``, at most ``cap`` (also when that power overflows)."""
    try:
        return min(cap, initial * multiplier**attempts)
    except OverflowError:
        return cap
