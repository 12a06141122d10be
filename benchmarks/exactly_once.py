"""``python -m benchmarks.exactly_once``: what exactly-once costs against at-least-once.

On one broker and one tritonserver, one worker with defaults under each guarantee, in turn and
alternating which goes first:

* **Drain**: a preloaded backlog of JSON events drained (benchmarks/drain.py: the rate over the
  middle 80% of the outputs, by their timestamps, and the worker's CPU per event).
* **Latency at a fixed rate** (1,000 events/s by default): end-to-end p50/p99 from producer
  hand-off to the output read back by a ``read_committed`` reader (librdkafka's default), so an
  exactly-once output counts from when its transaction commits.

Target (issue 24): drain throughput within 15% of at-least-once; p99 at 1,000 events/s reported
(the transaction interval bounds it from below). Its tables are a kept section of
docs/benchmarks.md (``make bench`` leaves it in place); reports/bench/exactly_once.json is written.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.drain import measure_drain
from benchmarks.report import put_section
from benchmarks.run import REPO, bench_events, start_servers
from benchmarks.sweep import SweepConfig, Sweeper
from benchmarks.systems import SystemSpec, start_system
from engine.settings import Settings

AT_LEAST_ONCE = SystemSpec("engine, 1 worker, at-least-once", "engine", 1)
EXACTLY_ONCE = SystemSpec("engine, 1 worker, exactly-once", "engine", 1, exactly_once=True)
TARGET_DRAIN_RATIO = 0.85


def _pairs(n: int) -> list[tuple[SystemSpec, SystemSpec]]:
    """``n`` pairs, alternating which guarantee goes first."""
    return [(AT_LEAST_ONCE, EXACTLY_ONCE) if i % 2 == 0 else (EXACTLY_ONCE, AT_LEAST_ONCE) for i in range(n)]


def drains(base: Settings, work: Path, pairs: int, events: int, console: Console) -> list[dict[str, Any]]:
    """Each guarantee drains ``events`` ``pairs`` times, alternating."""
    rows = []
    for i, pair in enumerate(_pairs(pairs)):
        for spec in pair:
            drain = measure_drain(spec, base, work, bench_events(seed=40 + i), events, console.print)
            rows.append({"system": spec.name, "pair": i} | drain.as_dict())
            console.print(json.dumps(rows[-1]))
    return rows


def latencies(
    base: Settings, work: Path, pairs: int, rate: float, seconds: float, console: Console
) -> list[dict[str, Any]]:
    """Each guarantee offered ``rate`` for ``seconds``, ``pairs`` times, alternating."""
    rows = []
    for i, pair in enumerate(_pairs(pairs)):
        for spec in pair:
            system = start_system(spec, base, work)
            config = SweepConfig(level_s=seconds, warmup_s=2.0)
            sweeper = Sweeper(system, bench_events(seed=60 + i), config, console.print)
            try:
                sweeper.prime()
                level = sweeper.run_level(rate, seconds)
            finally:
                sweeper.close()
                system.stop()
            rows.append(
                {
                    "system": spec.name,
                    "pair": i,
                    "offered_per_s": rate,
                    "achieved_per_s": level.achieved,
                    "p50_ms": round(level.p50_ms, 2),
                    "p99_ms": round(level.p99_ms, 2),
                }
            )
            console.print(json.dumps(rows[-1]))
    return rows


def _median(rows: Sequence[dict[str, Any]], system: str, key: str) -> float:
    values = [r[key] for r in rows if r["system"] == system and r[key] is not None]
    return round(float(statistics.median(values)), 2) if values else float("nan")


def markdown(drain_rows: Sequence[dict[str, Any]], latency_rows: Sequence[dict[str, Any]], note: str) -> str:
    """The docs section: every run, then the medians side by side."""
    alo, eos = AT_LEAST_ONCE.name, EXACTLY_ONCE.name
    alo_rate, eos_rate = _median(drain_rows, alo, "rate"), _median(drain_rows, eos, "rate")
    ratio = eos_rate / alo_rate
    verdict = "met" if ratio >= TARGET_DRAIN_RATIO else "**missed**"
    lines = [
        "## Exactly-once against at-least-once",
        "",
        "One worker with defaults under each guarantee (`SIE_KAFKA__PROCESSING_GUARANTEE`; exactly-once "
        "commits a transaction every 0.1 s), in turn, alternating which goes first. Drain: a preloaded "
        "backlog of JSON events, the rate over the middle 80% of the outputs. Latency: a fixed offered "
        "rate, producer hand-off to the output read back by a `read_committed` reader. "
        "`python -m benchmarks.exactly_once` regenerates this section. " + note,
        "",
        "| system | pair | events | drain events/s | worker CPU µs/event |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in drain_rows:
        cpu = "-" if r["cpu_us_per_event"] is None else f"{r['cpu_us_per_event']}"
        lines.append(f"| {r['system']} | {r['pair']} | {r['received']:,} | {r['rate']:,.0f} | {cpu} |")
    lines += [
        "",
        "| system | pair | offered/s | achieved/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in latency_rows:
        lines.append(
            f"| {r['system']} | {r['pair']} | {r['offered_per_s']:,.0f} | {r['achieved_per_s']:,.0f} | "
            f"{r['p50_ms']} | {r['p99_ms']} |"
        )
    lines += [
        "",
        "| median | at-least-once | exactly-once | ratio |",
        "|---|---:|---:|---:|",
        f"| drain events/s | {alo_rate:,.0f} | {eos_rate:,.0f} | {ratio:.2f} |",
        f"| p50 ms | {_median(latency_rows, alo, 'p50_ms')} | {_median(latency_rows, eos, 'p50_ms')} | |",
        f"| p99 ms | {_median(latency_rows, alo, 'p99_ms')} | {_median(latency_rows, eos, 'p99_ms')} | |",
        "",
        f"Target: exactly-once drains within 15% of at-least-once (ratio >= {TARGET_DRAIN_RATIO}): "
        f"{verdict}.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the drains and the fixed-rate levels; write the section and the JSON report."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.exactly_once", description=__doc__)
    parser.add_argument("--pairs", type=int, default=3, help="alternating pairs of drains")
    parser.add_argument("--events", type=int, default=60_000, help="events of each drain")
    parser.add_argument("--latency-pairs", type=int, default=2)
    parser.add_argument("--rate", type=float, default=1000.0, help="offered rate of the latency runs")
    parser.add_argument("--latency-s", type=float, default=20.0, help="seconds of each latency run")
    parser.add_argument("--note", default="", help="a sentence on the machine and its load")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "bench")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    console = Console()
    work = args.out / "exactly-once-work"
    work.mkdir(parents=True, exist_ok=True)
    broker, triton, base = start_servers(work, 4)
    try:
        drain_rows = drains(base, work, args.pairs, args.events, console)
        latency_rows = latencies(base, work, args.latency_pairs, args.rate, args.latency_s, console)
    finally:
        triton.stop()
        broker.stop()
    report = args.out / "exactly_once.json"
    report.write_text(json.dumps({"drain": drain_rows, "latency": latency_rows}, indent=2) + "\n")
    put_section(args.docs, "exactly-once", markdown(drain_rows, latency_rows, args.note))
    console.print(f"[green]wrote[/] {args.docs} and {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
