"""The benchmark's rising-levels loop (benchmarks/sweep.py), with a simulated system."""

from __future__ import annotations

from benchmarks.sweep import Level, SweepConfig, max_sustainable, rising_levels


def simulated(capacity: float, calls: list[tuple[float, bool]]):  # type: ignore[no-untyped-def]
    """A system that carries up to ``capacity`` events/s."""

    def run(rate: float, fresh: bool) -> Level:
        calls.append((rate, fresh))
        achieved = min(rate, capacity)
        return Level(rate, achieved, 10.0, 20.0, 30.0 if achieved == rate else 900.0, 100)

    return run


def test_levels_rise_until_saturation_then_refine_once_on_fresh_topics() -> None:
    calls: list[tuple[float, bool]] = []
    levels = rising_levels(simulated(6_000, calls), 1_000, SweepConfig(factor=2.0))
    # 8,000 offered -> 6,000 achieved (75%) is saturated, again on fresh topics; then 90% of 6,000
    assert calls == [(1000, False), (2000, False), (4000, False), (8000, False), (8000, True), (5400, True)]
    assert [lv.offered for lv in levels] == [1000, 2000, 4000, 5400, 8000, 8000]  # sorted by rate
    assert max_sustainable(levels) == 5400


def test_no_refining_level_when_it_would_not_beat_the_last_kept_rate() -> None:
    calls: list[tuple[float, bool]] = []
    rising_levels(simulated(4_100, calls), 1_000, SweepConfig(factor=2.0))
    assert calls == [(1000, False), (2000, False), (4000, False), (8000, False), (8000, True)]


def test_the_sweep_stops_at_the_configured_maximum_rate() -> None:
    calls: list[tuple[float, bool]] = []
    levels = rising_levels(simulated(10**9, calls), 1_000, SweepConfig(factor=2.0, max_rate=5_000))
    assert [lv.offered for lv in levels] == [1000, 2000, 4000]


def test_a_level_sunk_by_a_hiccup_is_run_again_and_the_sweep_goes_on() -> None:
    calls: list[tuple[float, bool]] = []
    healthy = simulated(10_000, calls)

    def hiccup_at_2000(rate: float, fresh: bool) -> Level:
        level = healthy(rate, fresh)
        if rate == 2000 and not fresh:  # e.g. a rebalance during the level
            return Level(rate, 900.0, 500.0, 900.0, 1500.0, 10)
        return level

    levels = rising_levels(hiccup_at_2000, 1_000, SweepConfig(factor=2.0))
    assert calls[:4] == [(1000, False), (2000, False), (2000, True), (4000, False)]
    assert max_sustainable(levels) == 10_000 * 0.9
