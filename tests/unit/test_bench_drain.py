"""The benchmark's drain rate (benchmarks/drain.py) and the per-worker targets it feeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.drain import drain_rate
from benchmarks.report import write_json
from benchmarks.run import targets


def test_drain_rate_is_taken_over_the_middle_of_the_outputs_leaving_out_start_and_tail() -> None:
    # 100 outputs: the first 10 straggle over 5 s of start-up, the last 10 over a slow tail,
    # the 80 in between arrive one per millisecond
    start = [i * 500.0 for i in range(10)]
    middle = [5_000.0 + i for i in range(80)]
    tail = [5_080.0 + i * 300.0 for i in range(10)]
    rate, seconds = drain_rate(tail + middle + start)  # order of arrival does not matter
    assert seconds == pytest.approx((5_079.0 - 5_000.0) / 1000.0)  # first to last of the middle 80
    assert rate == pytest.approx(1_000.0)  # 79 intervals of 1 ms


def test_drain_rate_of_too_few_outputs_is_zero_rather_than_a_guess() -> None:
    assert drain_rate([1.0, 2.0, 3.0]) == (0.0, 0.0)
    assert drain_rate([5.0] * 20) == (0.0, 0.0)  # all in one millisecond: no measurable window


def _system(best: float) -> dict[str, object]:
    return {"max_sustainable": best, "max_within_slo": 0.0, "levels": [], "half_load": None}


def test_per_worker_target_is_reported_for_the_live_sweep_and_the_drain_separately() -> None:
    systems = {"engine, 1 worker": _system(10_000.0), "naive baseline": _system(100.0)}
    drains = {"engine, 1 worker": {"rate": 21_000.0}, "raw client bound": {"rate": 40_000.0}}
    rows = {t["target"]: t for t in targets(systems, drains)}
    live = rows[">= 20,000 events/s per worker, live sweep (load generator on the same cores)"]
    drained = rows[">= 20,000 events/s per worker, draining a preloaded backlog"]
    assert (live["measured"], live["met"]) == ("10,000/s", False)
    assert (drained["measured"], drained["met"]) == ("21,000/s (raw client bound 40,000/s)", True)
    assert rows["engine >= 20 x naive baseline"]["met"] is True


def test_without_a_drain_there_is_no_drain_target_row() -> None:
    rows = [t["target"] for t in targets({"engine, 1 worker": _system(10_000.0)})]
    assert not any("draining" in r for r in rows)


def test_drain_figures_and_targets_are_plain_json_numbers() -> None:
    rate, seconds = drain_rate([float(i) for i in range(100)])
    assert type(rate) is float and type(seconds) is float
    rows = targets({"engine, 1 worker": _system(10_000.0)}, {"engine, 1 worker": {"rate": rate}})
    json.dumps(rows)  # raises on numpy scalars
    assert all(type(row["met"]) is bool for row in rows)


def test_report_json_turns_numpy_scalars_into_numbers(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    write_json({"rate": np.float64(1.5), "met": np.bool_(True), "n": np.int64(3)}, path)
    assert json.loads(path.read_text()) == {"rate": 1.5, "met": True, "n": 3}
