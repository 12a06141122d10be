"""The benchmark's drain rate (benchmarks/drain.py), the targets it feeds, and the report around them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.drain import CpuWindow, drain_rate, process_cpu_s
from benchmarks.previous import PREVIOUS_TANSU, comparison_lines
from benchmarks.report import put_section, write_json, write_markdown
from benchmarks.targets import targets


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


def _system(best: float, half: dict[str, float] | None = None, within: float = 0.0) -> dict[str, object]:
    return {"max_sustainable": best, "max_within_slo": within, "levels": [], "half_load": half}


def _half(offered: float, p99: float) -> dict[str, float]:
    return {"offered": offered, "achieved": offered, "p50_ms": p99 / 2, "p95_ms": p99, "p99_ms": p99}


def test_drain_targets_give_rate_and_cpu_per_event_by_format_and_the_engine_ratios() -> None:
    systems = {"engine, 1 worker": _system(10_000.0), "naive baseline": _system(100.0)}
    drains = {
        "engine, 1 worker": {"rate": 41_000.0, "cpu_us_per_event": 23.0},
        "engine, 1 worker | binary": {"rate": 49_000.0, "cpu_us_per_event": 14.5},
        "pass-through bound": {"rate": 50_000.0},
        "raw client bound": {"rate": 200_000.0},
    }
    rows = {t["target"]: t for t in targets(systems, drains)}
    live = rows[">= 20,000 events/s per worker, live sweep (load generator on the same cores)"]
    assert (live["measured"], live["met"]) == ("10,000/s", False)
    json_rate = rows[">= 40,000 json events/s per worker, draining a preloaded backlog"]
    assert (json_rate["measured"], json_rate["met"]) == ("41,000/s", True)
    assert rows["<= 22 µs worker CPU per json event (drain)"]["met"] is False
    assert rows[">= 50,000 binary events/s per worker, draining a preloaded backlog"]["met"] is False
    assert rows["<= 15 µs worker CPU per binary event (drain)"]["measured"] == "14.5 µs"
    assert rows["engine >= 0.8 x pass-through (drain, JSON)"]["measured"] == "0.82x"
    raw = rows["engine >= 0.3 x the raw confluent loop (drain, JSON)"]
    assert (raw["measured"], raw["met"]) == ("0.20x (200,000/s)", False)
    assert rows["engine >= 20 x naive baseline"]["met"] is True


def test_cpu_window_counts_cpu_between_the_10_and_90_percent_marks() -> None:
    clock = iter([1.0, 1.8])  # CPU seconds read when each mark is passed
    window = CpuWindow(1000, lambda: next(clock))
    for received in (50, 99, 100, 500, 899):
        window.seen(received)
    assert window.us_per_event() is None  # the 90% mark not reached yet
    window.seen(1000)
    assert window.us_per_event() == pytest.approx(0.8 * 1e6 / 800)


def test_process_cpu_of_this_process_grows_and_a_gone_pid_counts_nothing() -> None:
    import os

    before = process_cpu_s([os.getpid()])
    sum(i * i for i in range(2_000_000))
    assert process_cpu_s([os.getpid()]) > before
    assert process_cpu_s([2**22 + 12345]) == 0.0


def test_without_a_drain_there_is_no_drain_target_row() -> None:
    rows = [t["target"] for t in targets({"engine, 1 worker": _system(10_000.0)})]
    assert not any("draining" in r or "(drain" in r for r in rows)


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


def test_p99_at_half_load_is_judged_against_25_ms_beside_the_raw_clients_own_half_load() -> None:
    systems = {
        "engine, 1 worker": _system(10_000.0, _half(5_000.0, 18.5)),
        "raw client bound": _system(30_000.0, _half(15_000.0, 9.0)),
    }
    row = next(t for t in targets(systems) if "50% of max" in t["target"])
    assert row["target"] == "p99 <= 25 ms at 50% of max sustainable rate"
    assert row["measured"] == "18.5 ms at 5,000/s (raw client bound at 50% of its max, 15,000/s: p99 9.0 ms)"
    assert row["met"] is True


def test_adaptive_batching_is_compared_with_fixed_deadlines_at_the_real_slo() -> None:
    systems = {
        "engine, 1 worker": _system(10_000.0, within=4_000.0),
        "engine, 1 worker, adaptive (SLO 25 ms)": _system(9_000.0, within=6_000.0),
        "engine, 1 worker, fixed 20 ms deadline": _system(9_500.0, within=5_000.0),
    }
    row = next(t for t in targets(systems) if "adaptive" in t["target"])
    assert row["target"] == "adaptive batching beats every fixed deadline at p99 <= 25 ms"
    assert (row["measured"], row["met"]) == ("6,000/s vs best fixed 5,000/s", True)


def _report() -> dict[str, object]:
    broker = {"name": "Apache Kafka", "version": "4.1.1", "mode": "KRaft, single node", "heap_mb": 512}
    return {
        "machine": {"cores": 2, "cpu": "AMD EPYC", "python": "3.11.7", "commit": "abc1234"},
        "started": "2026-12-01 10:00",
        "seconds": 900.0,
        "quick": False,
        "model": "breast_cancer",
        "partitions": 4,
        "event_bytes": 374,
        "broker": broker | {"java": 'openjdk version "17.0.15"'},
        "fetch_max_wait_ms": 100,
        "slo_ms": 25.0,
        "systems": {
            "engine, 1 worker": _system(15_000.0, _half(7_500.0, 20.0)) | {"at_max": None},
            "engine, 1 worker, adaptive (SLO 25 ms)": _system(14_000.0) | {"at_max": None},
        },
        "drain": {
            "engine, 1 worker": {"events": 200_000, "received": 200_000, "rate": 21_000.0, "seconds": 7.6}
        },
        "triton_bound": [],
        "targets": [],
        "previous": PREVIOUS_TANSU,
    }


def test_report_names_the_broker_and_sets_the_previous_tansu_run_beside_this_one(tmp_path: Path) -> None:
    path = tmp_path / "benchmarks.md"
    write_markdown(_report(), path, tmp_path / "plot.png", Path("reports/bench/bench.json"))
    text = path.read_text()
    assert "Broker: Apache Kafka 4.1.1, KRaft, single node, JVM heap 512 MiB" in text
    assert "tansu" not in text.split("## Against the previous run on tansu (commit 013abbc)")[0]
    assert "| engine, 1 worker | 15,000 | 13,480 | 21,000 | 17,253 |" in text
    # the adaptive system is matched by name across the SLO change (50 ms on tansu, 25 ms now)
    assert "| engine, 1 worker, adaptive (SLO 25 ms) | 14,000 | 10,319 | - | - |" in text
    # systems this run did not measure still show the tansu figures
    assert "| raw client bound | - | 33,571 | - | 193,544 |" in text
    assert (
        "- p99 at 50% of max, engine, 1 worker: p99 20.0 ms at 7,500/s (on tansu: 365.9 ms at 6,740/s)."
        in text
    )


def test_comparison_says_when_a_half_load_level_was_not_run() -> None:
    lines = comparison_lines(_report())
    raw = next(line for line in lines if line.startswith("- p99 at 50% of max, raw client bound"))
    assert raw == (
        "- p99 at 50% of max, raw client bound: not run (on tansu: 121.8 ms at its level nearest "
        "the engine's 50%, 5,830/s)."
    )


def test_a_section_another_benchmark_wrote_survives_make_bench_and_is_replaced_by_its_next_run(
    tmp_path: Path,
) -> None:
    path = tmp_path / "benchmarks.md"
    write_markdown(_report(), path, tmp_path / "plot.png", Path("reports/bench/bench.json"))
    put_section(path, "trace-cost", "## Trace export cost\n\nfirst run")
    write_markdown(_report(), path, tmp_path / "plot.png", Path("reports/bench/bench.json"))
    assert path.read_text().count("## Trace export cost") == 1 and "first run" in path.read_text()
    put_section(path, "trace-cost", "## Trace export cost\n\nsecond run")
    text = path.read_text()
    assert "second run" in text and "first run" not in text and text.count("<!-- kept:trace-cost -->") == 1


def test_the_trace_cost_section_shows_each_variant_against_off_and_how_to_rerun_it() -> None:
    from benchmarks.drain import Drain
    from benchmarks.trace_cost import markdown, summary

    rounds = [
        {"off": Drain(100, 100, 1.0, rate), "on, ratio 1": Drain(100, 100, 1.0, rate / 4)}
        for rate in (10_000.0, 20_000.0, 16_000.0)
    ]
    report = {
        "machine": {"commit": "abc1234", "cores": 2, "cpu": "some CPU"},
        "load_average": [6.5, 5.0, 4.0],
        "events": 100,
        "default_ratio": 1.0,
        "median": summary(rounds),
        "rounds": [{k: d.as_dict() for k, d in r.items()} for r in rounds],
        "collector_file_mb": 12.5,
        "seconds": 90,
    }
    text = markdown(report)
    assert "--rounds 3 --events 100 --ratio 1`" in text
    assert "| off | 10,000 | 20,000 | 16,000 | 16,000 | - | - |" in text
    assert "| on, ratio 1 | 2,500 | 5,000 | 4,000 | 4,000 | - | 75.0% |" in text
    assert "load average 6.5" in text
