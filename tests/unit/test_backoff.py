"""engine/backoff.py: the one backoff formula."""

from __future__ import annotations

from engine.backoff import delay_after, next_delay


def test_next_delay_multiplies_up_to_the_cap() -> None:
    delays = [0.5]
    for _ in range(5):
        delays.append(next_delay(delays[-1], 2, 5.0))
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_delay_after_matches_repeated_next_delay() -> None:
    delay = 1.0
    for attempts in range(8):
        assert delay_after(attempts, 1.0, 2.0, 30.0) == delay
        delay = next_delay(delay, 2.0, 30.0)


def test_delay_after_is_the_cap_when_the_power_overflows() -> None:
    assert delay_after(5000, 0.05, 2.0, 2.0) == 2.0
