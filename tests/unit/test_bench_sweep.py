"""The benchmark's rising-levels loop (benchmarks/sweep.py), with a simulated system."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from benchmarks.sweep import (
    MAX_DRAIN_S,
    MIN_DRAIN_S,
    Level,
    SweepConfig,
    drain_timeout,
    max_sustainable,
    rising_levels,
)


def simulated(capacity: float, calls: list[float]) -> Callable[[float], Level]:
    """A system that carries up to ``capacity`` events/s."""

    def run(rate: float) -> Level:
        calls.append(rate)
        achieved = min(rate, capacity)
        return Level(rate, achieved, 10.0, 20.0, 30.0 if achieved == rate else 900.0, 100)

    return run


def test_levels_rise_until_saturation_then_retry_once_and_refine_once() -> None:
    calls: list[float] = []
    levels = rising_levels(simulated(6_000, calls), 1_000, SweepConfig(factor=2.0))
    # 8,000 offered -> 6,000 achieved (75%) is saturated, and again on the retry; then 90% of 6,000
    assert calls == [1000, 2000, 4000, 8000, 8000, 5400]
    assert [lv.offered for lv in levels] == [1000, 2000, 4000, 5400, 8000, 8000]  # sorted by rate
    assert max_sustainable(levels) == 5400


def test_no_refining_level_when_it_would_not_beat_the_last_kept_rate() -> None:
    calls: list[float] = []
    rising_levels(simulated(4_100, calls), 1_000, SweepConfig(factor=2.0))
    assert calls == [1000, 2000, 4000, 8000, 8000]


def test_the_sweep_stops_at_the_configured_maximum_rate() -> None:
    calls: list[float] = []
    levels = rising_levels(simulated(10**9, calls), 1_000, SweepConfig(factor=2.0, max_rate=5_000))
    assert [lv.offered for lv in levels] == [1000, 2000, 4000]


def test_a_level_sunk_by_a_hiccup_is_run_again_and_the_sweep_goes_on() -> None:
    calls: list[float] = []
    healthy = simulated(10_000, calls)

    def hiccup_at_first_2000(rate: float) -> Level:
        level = healthy(rate)
        if rate == 2000 and calls.count(2000) == 1:  # e.g. a rebalance during the level
            return Level(rate, 900.0, 500.0, 900.0, 1500.0, 10)
        return level

    levels = rising_levels(hiccup_at_first_2000, 1_000, SweepConfig(factor=2.0))
    assert calls[:4] == [1000, 2000, 2000, 4000]
    assert max_sustainable(levels) == 10_000 * 0.9


def test_only_the_first_failing_level_is_retried() -> None:
    calls: list[float] = []
    healthy = simulated(3_000, calls)

    def hiccup_at_first_1000(rate: float) -> Level:
        level = healthy(rate)
        return Level(rate, 500.0, 50.0, 90.0, 150.0, 10) if calls == [1000] else level

    rising_levels(hiccup_at_first_1000, 1_000, SweepConfig(factor=2.0))
    # 1,000 is retried after its hiccup; 4,000 saturates and is not retried: one refining level follows
    assert calls == [1000, 1000, 2000, 4000, 2700]


def test_a_backlog_gets_three_times_its_expected_drain_time_within_bounds() -> None:
    # 8,000/s offered for 5 s with 6,000/s achieved leaves 10,000 events: ~1.7 s at 6,000/s
    assert drain_timeout(10_000, 6_000) == MIN_DRAIN_S
    assert drain_timeout(100_000, 2_000) == pytest.approx(MAX_DRAIN_S)  # 150 s, capped
    assert drain_timeout(10_000, 1_000) == pytest.approx(30.0)
    assert drain_timeout(50, 0.0) == pytest.approx(MAX_DRAIN_S)  # nothing answered: wait the longest
