"""What trace export costs: one worker draining a backlog with spans exported to the Collector, and without.

One Apache Kafka broker, one tritonserver and the project's OpenTelemetry
Collector (ops/embedded/otelcol.py, spans written to a file) start once; then
``--rounds`` rounds each drain the same preloaded backlog twice on fresh
topics (benchmarks/drain.py): once with tracing off, and once for each ``--ratio`` with the worker's
``SIE_OTLP_ENDPOINT`` at the Collector and ``SIE_TRACE_SAMPLE_RATIO`` at that
ratio (default: the settings' default, 1.0; the bench events carry no
``traceparent``, so the ratio alone decides). The order rotates between
rounds so that a neighbour's load or the broker warming up falls on every
variant::

    .venv/bin/python -m benchmarks.trace_cost --rounds 3 --events 60000 --ratio 1 --ratio 0.01

Writes ``reports/bench/trace_cost.json`` and prints the lines for
docs/benchmarks.md. Not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.drain import Drain, measure_drain
from benchmarks.run import PARTITIONS, REPO, bench_events, start_servers
from benchmarks.systems import SYSTEMS
from engine.settings import Settings
from ops.embedded import free_port
from ops.embedded.otelcol import start_collector
from ops.trace_file import trace_files

SPEC = next(s for s in SYSTEMS if s.name == "engine, 1 worker")
OFF = "off"


def variant(ratio: float) -> str:
    """The report's name of a drain with export on at ``ratio``."""
    return f"on, ratio {ratio:g}"


def _round(variants: dict[str, Settings], work: Path, n: int, shift: int, say: Any) -> dict[str, Drain]:
    """One drain per variant, the order rotated by ``shift``."""
    names = list(variants)
    out: dict[str, Drain] = {}
    for name in names[shift % len(names) :] + names[: shift % len(names)]:
        say(f"tracing {name}:")
        out[name] = measure_drain(
            SPEC, variants[name], work, bench_events(seed=2), n, lambda m: say(f"  {m}")
        )
    return out


def _median(rounds: list[dict[str, Drain]], name: str, field: str) -> float | None:
    values = [getattr(r[name], field) for r in rounds if getattr(r[name], field) is not None]
    return round(statistics.median(values), 2) if values else None


def summary(rounds: list[dict[str, Drain]]) -> dict[str, Any]:
    """Median rate and CPU per variant, and each traced variant's cost against off."""
    off = _median(rounds, OFF, "rate")
    out: dict[str, Any] = {}
    for name in rounds[0]:
        rate = _median(rounds, name, "rate")
        cost = round((1 - rate / off) * 100, 1) if off and rate is not None else None
        out[name] = {
            "rate": rate,
            "cpu_us_per_event": _median(rounds, name, "cpu_us_per_event"),
            "cost_pct": cost,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=60_000, help="backlog per drain")
    parser.add_argument(
        "--ratio",
        type=float,
        action="append",
        help="SIE_TRACE_SAMPLE_RATIO to measure (repeatable; default: the default)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "bench" / "trace_cost.json")
    args = parser.parse_args()
    console = Console()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sie-trace-cost-") as tmp:
        work = Path(tmp)
        console.print("[cyan]>[/] starting Apache Kafka, tritonserver and the OpenTelemetry Collector")
        broker, triton, base = start_servers(work, PARTITIONS)
        collector = start_collector(work / "otelcol", grpc_port=free_port(), http_port=free_port())
        variants = {OFF: base} | {
            variant(r): base.model_copy(
                update={"otlp_endpoint": collector.traces_url, "trace_sample_ratio": r}
            )
            for r in args.ratio or [base.trace_sample_ratio]
        }
        rounds = []
        try:
            for i in range(args.rounds):
                console.rule(f"round {i + 1}/{args.rounds}")
                rounds.append(_round(variants, work, args.events, i, console.print))
        finally:
            collector.stop()
            triton.stop()
            broker.stop()
        written = sum(p.stat().st_size for p in trace_files(collector.traces_file))
    report = {
        "events": args.events,
        "default_ratio": base.trace_sample_ratio,
        "median": summary(rounds),
        "rounds": [{k: d.as_dict() for k, d in r.items()} for r in rounds],
        "collector_file_mb": round(written / 1e6, 1),
        "seconds": round(time.monotonic() - started),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"drain, 1 worker, {args.events:,} events, median of {args.rounds} rounds (order rotated):")
    for name, m in report["median"].items():
        cost = f", {m['cost_pct']}% fewer events/s than off" if name != OFF else ""
        console.print(
            f"  {name}: {m['rate']:,.0f} events/s, {m['cpu_us_per_event']} µs worker CPU/event{cost}"
        )
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
