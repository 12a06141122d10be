"""benchmarks/exactly_once.py: alternating pairs, and the verdict against the 15% target."""

from __future__ import annotations

from benchmarks.exactly_once import AT_LEAST_ONCE, EXACTLY_ONCE, _pairs, markdown


def _drain(system: str, rate: float) -> dict[str, object]:
    return {"system": system, "pair": 0, "received": 60_000, "rate": rate, "cpu_us_per_event": 30.0}


def _latency(system: str, p99: float) -> dict[str, object]:
    return {
        "system": system,
        "pair": 0,
        "offered_per_s": 1000,
        "achieved_per_s": 998,
        "p50_ms": 5.0,
        "p99_ms": p99,
    }


def test_pairs_alternate_which_guarantee_goes_first() -> None:
    assert [pair[0] for pair in _pairs(3)] == [AT_LEAST_ONCE, EXACTLY_ONCE, AT_LEAST_ONCE]


def test_a_drain_ratio_under_the_target_is_reported_as_missed() -> None:
    text = markdown(
        [_drain(AT_LEAST_ONCE.name, 10_000), _drain(EXACTLY_ONCE.name, 8_000)],
        [_latency(AT_LEAST_ONCE.name, 20.0), _latency(EXACTLY_ONCE.name, 140.0)],
        "",
    )
    assert "| drain events/s | 10,000 | 8,000 | 0.80 |" in text
    assert "**missed**" in text
    assert "| p99 ms | 20.0 | 140.0 | |" in text


def test_a_drain_ratio_within_the_target_is_reported_as_met() -> None:
    text = markdown([_drain(AT_LEAST_ONCE.name, 10_000), _drain(EXACTLY_ONCE.name, 9_000)], [], "")
    assert "0.90" in text and "met." in text and "missed" not in text
