"""``python -m benchmarks.consumer_path``: the Kafka consumer path of the engine, beside the raw loop.

**Latency at fixed rates.** The engine with one worker and the raw confluent-kafka loop (no engine
code), each offered 1,000 and 5,000 events/s in turn (alternating which goes first): end-to-end
p50/p99 (producer hand-off to the output read back) and the broker's CPU per event answered.

**Commit lag.** Two workers at a steady offered rate (1,000 events/s); every 0.5 s each worker's
``sie_commit_lag_seconds`` and ``sie_commit_lag_records`` are read per partition; the report
gives the largest value seen on any partition and the rate's records per second beside it.

**Rebalance pause.** For each group protocol (``classic`` with cooperative-sticky assignment, and Kafka 4's
``consumer`` protocol, KIP-848), on one broker and one tritonserver: one worker runs at a steady
offered rate; a second worker joins the group, later it stops (SIGTERM, a graceful leave). A
monitor reads every output and its latency (send to output read back). For each event it reports
the longest gap between two outputs and the worst latency in the seconds after it, beside the
steady state before the join.

Its tables are a kept section of docs/benchmarks.md (``make bench`` leaves it in place), and
reports/bench/consumer_path.json is written.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from benchmarks.drain import process_cpu_s
from benchmarks.report import put_section
from benchmarks.run import REPO, bench_events, start_servers
from benchmarks.sweep import SweepConfig, Sweeper
from benchmarks.systems import SYSTEMS, SystemSpec, fresh_settings, start_system
from engine.settings import Settings
from ops.loadgen import PacedProducer, PredictionMonitor, SendLog
from ops.stack import start_worker, worker_settings
from streams.kafka_config import client_config, consumer_config

PROTOCOLS = ("classic", "consumer")
LATENCY_SYSTEMS = ("raw client bound", "engine, 1 worker")


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


def fixed_rate_latency(
    base: Settings, work: Path, broker_pid: int, rates: Sequence[float], seconds: float, console: Console
) -> list[dict[str, Any]]:
    """Each of :data:`LATENCY_SYSTEMS` at each rate (the order alternating): latency and broker CPU."""
    specs = {s.name: s for s in SYSTEMS}
    rows = []
    for n, rate in enumerate(rates):
        order = LATENCY_SYSTEMS if n % 2 == 0 else tuple(reversed(LATENCY_SYSTEMS))
        for name in order:
            system = start_system(specs[name], base, work)
            sweeper = Sweeper(
                system, bench_events(seed=21 + n), SweepConfig(level_s=seconds, warmup_s=2.0), console.print
            )
            try:
                sweeper.prime()
                cpu, answered = process_cpu_s([broker_pid]), sweeper.answered
                level = sweeper.run_level(rate, seconds)
                broker_us = (process_cpu_s([broker_pid]) - cpu) * 1e6 / max(sweeper.answered - answered, 1)
            finally:
                sweeper.close()
                system.stop()
            rows.append(
                {
                    "system": name,
                    "offered_per_s": rate,
                    "achieved_per_s": level.achieved,
                    "p50_ms": round(level.p50_ms, 2),
                    "p99_ms": round(level.p99_ms, 2),
                    "broker_cpu_us_per_event": round(broker_us, 1),
                }
            )
            console.print(json.dumps(rows[-1]))
    return rows


def partition_samples(url: str, name: str) -> list[float]:
    """Every sample of gauge ``name`` at the Prometheus endpoint ``url`` (none if it does not answer)."""
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            text = response.read().decode()
    except OSError:
        return []
    return [s.value for f in text_string_to_metric_families(text) if f.name == name for s in f.samples]


def commit_lag(base: Settings, work: Path, rate: float, seconds: float, console: Console) -> dict[str, Any]:
    """Two workers at ``rate``: the largest committed-position lag (s, records) seen per poll."""
    settings = fresh_settings(base, SystemSpec("commit lag", "engine", 2), work)
    workers = []
    for i in (1, 2):
        ws = worker_settings(settings, i, work)
        workers.append(start_worker(ws, work, ws.worker_name))
    for w in workers:
        w.wait_ready(timeout=120)
    producer = PacedProducer(
        client_config(settings.kafka), settings.topics.events, bench_events(seed=5), rate, SendLog()
    )
    producer.start()
    worst_s: list[float] = []
    worst_records: list[float] = []
    try:
        time.sleep(5.0)  # past start-up: the first commit of every partition
        console.print(f"  commit lag: 2 workers at {rate:,.0f} events/s for {seconds:.0f}s")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            lag_s = [v for w in workers for v in partition_samples(w.metrics_url, "sie_commit_lag_seconds")]
            lag_n = [v for w in workers for v in partition_samples(w.metrics_url, "sie_commit_lag_records")]
            if lag_s:
                worst_s.append(max(lag_s))
            if lag_n:
                worst_records.append(max(lag_n))
            time.sleep(0.5)
    finally:
        producer.stop()
        producer.join(10)
        for w in workers:
            w.stop()
    s_arr, n_arr = np.array(worst_s), np.array(worst_records)
    return {
        "rate_per_s": rate,
        "seconds": seconds,
        "polls": int(s_arr.size),
        "max_lag_s": round(float(s_arr.max()), 3) if s_arr.size else None,
        "p99_lag_s": round(float(np.percentile(s_arr, 99)), 3) if s_arr.size else None,
        "max_lag_records": int(n_arr.max()) if n_arr.size else None,
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
        consumer_config(settings.kafka),
        settings.topics.predictions,
        settings.topics.dlq,
        log,
        from_beginning=False,
    )
    monitor.start()
    producer = PacedProducer(
        client_config(settings.kafka), settings.topics.events, bench_events(seed=11), rate, log
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


def markdown(
    latency: Sequence[dict[str, Any]],
    lag: dict[str, Any],
    results: Sequence[dict[str, Any]],
    machine_note: str,
) -> str:
    """The docs section."""
    lines = [
        "## Latency at fixed rates, engine against the raw loop",
        "",
        "One worker (defaults) and the raw confluent-kafka consume-produce loop, each offered the rate "
        "in turn (the order alternating per rate); end-to-end latency from producer hand-off to the "
        "output read back, and the broker's CPU per event answered (the load generator's produce and "
        "read-back included, the same for both). Targets: engine p99 <= 15 ms, and within 10 ms of the "
        "raw loop's. " + machine_note,
        "",
        "| offered/s | system | achieved/s | p50 ms | p99 ms | broker CPU µs/event |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in latency:
        rate, achieved = f"{row['offered_per_s']:,.0f}", f"{row['achieved_per_s']:,.0f}"
        lines.append(
            f"| {rate} | {row['system']} | {achieved} | {row['p50_ms']} | {row['p99_ms']} | "
            f"{row['broker_cpu_us_per_event']} |"
        )
    lines += [
        "",
        "## Committed-position lag",
        "",
        f"Two workers (defaults: commit every 0.25 s) at {lag['rate_per_s']:,.0f} events/s for "
        f"{lag['seconds']:.0f} s; each worker's `sie_commit_lag_seconds` and `sie_commit_lag_records` read "
        f"every 0.5 s on every partition ({lag['polls']} polls). Target: at most 1 s of traffic on every "
        "partition, all the time.",
        "",
        "| largest lag on any partition, s | p99 over polls, s | largest lag, records |",
        "|---:|---:|---:|",
        f"| {lag['max_lag_s']} | {lag['p99_lag_s']} | {lag['max_lag_records']} |",
        "",
        "## Rebalance pause by group protocol",
        "",
        f"One worker at {results[0]['rate_per_s']:,.0f} events/s offered; a second worker joins, later "
        "leaves (SIGTERM). Per phase: the longest gap between two outputs and output latency (send to "
        "output read back). `python -m benchmarks.consumer_path` regenerates this section.",
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
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run both protocols and write the section and reports/bench/rebalance.json."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.consumer_path", description=__doc__)
    parser.add_argument("--latency-rates", type=float, nargs="+", default=[1000.0, 5000.0])
    parser.add_argument("--latency-s", type=float, default=20.0, help="seconds of each fixed-rate level")
    parser.add_argument("--rate", type=float, default=5000.0, help="offered rate of the rebalance runs")
    parser.add_argument("--lag-rate", type=float, default=1000.0, help="offered rate of the commit-lag run")
    parser.add_argument("--lag-s", type=float, default=60.0, help="seconds of the commit-lag run")
    parser.add_argument("--phase-s", type=float, default=20.0, help="seconds of each phase")
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    parser.add_argument("--note", default="", help="a sentence on the machine and its load")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "bench")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    console = Console()
    work = args.out / "consumer-path-work"
    work.mkdir(parents=True, exist_ok=True)
    broker, triton, base = start_servers(work, 4)
    try:
        latency = fixed_rate_latency(
            base, work, broker.process.pid, args.latency_rates, args.latency_s, console
        )
        lag = commit_lag(base, work, args.lag_rate, args.lag_s, console)
        console.print(json.dumps(lag))
        results = []
        for protocol in args.protocols:
            console.print(f"[cyan]>[/] {protocol} protocol at {args.rate:,.0f} events/s")
            results.append(measure(base, work, protocol, args.rate, args.phase_s, console))
            console.print(json.dumps(results[-1]))
    finally:
        triton.stop()
        broker.stop()
    report = args.out / "consumer_path.json"
    report.write_text(
        json.dumps({"latency": latency, "commit_lag": lag, "rebalance": results}, indent=2) + "\n"
    )
    put_section(args.docs, "consumer-path", markdown(latency, lag, results, args.note))
    console.print(f"[green]wrote[/] {args.docs} and {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
