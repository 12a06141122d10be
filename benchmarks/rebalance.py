"""``python -m benchmarks.rebalance``: the pause a joining and a leaving worker cause, per group protocol.

For each group protocol (``classic`` with cooperative-sticky assignment, and Kafka 4's
``consumer`` protocol, KIP-848), on one broker and one tritonserver: one worker runs at a steady
offered rate; a second worker joins the group, later it stops (SIGTERM, a graceful leave). A
monitor reads every output and its latency (send to output read back). For each event it reports
the longest gap between two outputs and the worst latency in the seconds after it, beside the
steady state before the join. The section between the ``rebalance`` markers of
docs/benchmarks.md is rewritten with the table.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from benchmarks.run import REPO, bench_events, start_servers
from benchmarks.systems import SystemSpec, fresh_settings
from engine.settings import Settings
from ops.loadgen import PacedProducer, PredictionMonitor, SendLog
from ops.stack import start_worker, worker_settings

PROTOCOLS = ("classic", "consumer")
MARK_BEGIN, MARK_END = "<!-- rebalance:begin -->", "<!-- rebalance:end -->"


def _window(monitor: PredictionMonitor, start: float, end: float) -> dict[str, float]:
    """Longest gap between outputs (ms), latency p50/p99/max (ms) of outputs in ``[start, end)``."""
    arrivals = monitor.arrival_times(start, end)
    lat = monitor.window(start, end)[1] * 1000.0
    gap = float(np.diff(arrivals).max()) * 1000.0 if arrivals.size > 1 else float("nan")
    p50, p99, worst = np.percentile(lat, [50, 99, 100]) if lat.size else (float("nan"),) * 3
    return {
        "outputs": int(arrivals.size),
        "longest_gap_ms": round(gap, 1),
        "p50_ms": round(float(p50), 1),
        "p99_ms": round(float(p99), 1),
        "max_ms": round(float(worst), 1),
    }


def measure(
    base: Settings, work: Path, protocol: str, rate: float, phase_s: float, console: Console
) -> dict[str, Any]:
    """One protocol: steady, join, leave; figures per phase."""
    spec = SystemSpec(f"rebalance {protocol}", "engine", 2)
    settings = fresh_settings(base, spec, work)
    settings = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"group_protocol": protocol})}
    )
    one = worker_settings(settings, 1, work)
    first = start_worker(one, work, one.worker_name)
    first.wait_ready(timeout=120)
    log = SendLog()
    monitor = PredictionMonitor(
        settings.kafka.consumer_config(),
        settings.topics.predictions,
        settings.topics.dlq,
        log,
        from_beginning=False,
    )
    monitor.start()
    producer = PacedProducer(
        settings.kafka.confluent_config(), settings.topics.events, bench_events(seed=11), rate, log
    )
    producer.start()
    second = None
    try:
        time.sleep(phase_s)
        joined = time.monotonic()
        console.print(f"  {protocol}: second worker joins")
        two = worker_settings(settings, 2, work)
        second = start_worker(two, work, two.worker_name)
        time.sleep(phase_s)
        left = time.monotonic()
        console.print(f"  {protocol}: second worker leaves (SIGTERM)")
        second.stop()
        time.sleep(phase_s)
        ended = time.monotonic()
    finally:
        producer.stop()
        producer.join(10)
        if second is not None:
            second.stop()
        first.stop()
        monitor.stop()
        monitor.join(10)
    return {
        "protocol": protocol,
        "rate_per_s": rate,
        "steady": _window(monitor, joined - phase_s / 2, joined),
        "join": _window(monitor, joined, left),
        "leave": _window(monitor, left, ended),
    }


def markdown(results: Sequence[dict[str, Any]], machine_note: str) -> str:
    """The docs section."""
    lines = [
        MARK_BEGIN,
        "## Rebalance pause by group protocol",
        "",
        f"One worker at {results[0]['rate_per_s']:,.0f} events/s offered; a second worker joins, later "
        "leaves (SIGTERM). Per phase: the longest gap between two outputs and output latency (send to "
        "output read back). `python -m benchmarks.rebalance` regenerates this section. " + machine_note,
        "",
        "| protocol | phase | outputs | longest gap ms | p50 ms | p99 ms | max ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for phase in ("steady", "join", "leave"):
            w = r[phase]
            lines.append(
                f"| {r['protocol']} | {phase} | {w['outputs']:,} | {w['longest_gap_ms']} | {w['p50_ms']} | "
                f"{w['p99_ms']} | {w['max_ms']} |"
            )
    lines.append(MARK_END)
    return "\n".join(lines)


def write_section(docs: Path, section: str) -> None:
    """Replace the marked section of ``docs`` (or append it)."""
    text = docs.read_text() if docs.exists() else ""
    pattern = re.compile(re.escape(MARK_BEGIN) + ".*?" + re.escape(MARK_END), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    docs.write_text(text.rstrip() + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run both protocols and write the section and reports/bench/rebalance.json."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rebalance", description=__doc__)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--phase-s", type=float, default=20.0, help="seconds of each phase")
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    parser.add_argument("--note", default="", help="a sentence on the machine and its load")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "bench")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    console = Console()
    work = args.out / "rebalance-work"
    work.mkdir(parents=True, exist_ok=True)
    broker, triton, base = start_servers(work, 4)
    try:
        results = []
        for protocol in args.protocols:
            console.print(f"[cyan]>[/] {protocol} protocol at {args.rate:,.0f} events/s")
            results.append(measure(base, work, protocol, args.rate, args.phase_s, console))
            console.print(json.dumps(results[-1]))
    finally:
        triton.stop()
        broker.stop()
    (args.out / "rebalance.json").write_text(json.dumps(results, indent=2) + "\n")
    write_section(args.docs, markdown(results, args.note))
    console.print(f"[green]wrote[/] {args.docs} and {args.out / 'rebalance.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
