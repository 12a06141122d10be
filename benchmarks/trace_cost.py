"""What trace export costs: one worker draining a backlog with spans exported to the Collector, and without.

One Apache Kafka broker, one tritonserver and the project's OpenTelemetry
Collector (ops/embedded/otelcol.py, spans written to a file) start once; then
``--rounds`` rounds each drain the same preloaded backlog twice on fresh
topics (benchmarks/drain.py): once with tracing off, once with the worker's
``SIE_OTLP_ENDPOINT`` at the Collector and the default sampling
(``SIE_TRACE_SAMPLE_RATIO`` 1.0, bench events carry no ``traceparent``: every
event gets a span). The order alternates between rounds so that a neighbour's
load or the broker warming up falls on both sides::

    .venv/bin/python -m benchmarks.trace_cost --rounds 3 --events 60000

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


def _round(
    base: Settings, traced: Settings, work: Path, n: int, tracing_first: bool, say: Any
) -> dict[str, Drain]:
    """One drain each way, in the given order."""
    out: dict[str, Drain] = {}
    for name in ("on", "off") if tracing_first else ("off", "on"):
        settings = traced if name == "on" else base
        say(f"tracing {name}:")
        out[name] = measure_drain(SPEC, settings, work, bench_events(seed=2), n, lambda m: say(f"  {m}"))
    return out


def _summary(rounds: list[dict[str, Drain]]) -> dict[str, Any]:
    def median(name: str, field: str) -> float:
        values = [getattr(r[name], field) for r in rounds if getattr(r[name], field) is not None]
        return round(statistics.median(values), 2) if values else float("nan")

    off, on = median("off", "rate"), median("on", "rate")
    return {
        "rate_off": off,
        "rate_on": on,
        "cost_pct": round((1 - on / off) * 100, 1) if off else None,
        "cpu_us_off": median("off", "cpu_us_per_event"),
        "cpu_us_on": median("on", "cpu_us_per_event"),
        "rounds": [{k: d.as_dict() for k, d in r.items()} for r in rounds],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=60_000, help="backlog per drain")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "bench" / "trace_cost.json")
    args = parser.parse_args()
    console = Console()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sie-trace-cost-") as tmp:
        work = Path(tmp)
        console.print("[cyan]>[/] starting Apache Kafka, tritonserver and the OpenTelemetry Collector")
        broker, triton, base = start_servers(work, PARTITIONS)
        collector = start_collector(work / "otelcol", grpc_port=free_port(), http_port=free_port())
        traced = base.model_copy(update={"otlp_endpoint": collector.traces_url})
        rounds = []
        try:
            for i in range(args.rounds):
                console.rule(f"round {i + 1}/{args.rounds}")
                rounds.append(_round(base, traced, work, args.events, i % 2 == 1, console.print))
        finally:
            collector.stop()
            triton.stop()
            broker.stop()
        written = sum(p.stat().st_size for p in trace_files(collector.traces_file))
    report = _summary(rounds) | {
        "events": args.events,
        "sample_ratio": base.trace_sample_ratio,
        "collector_file_mb": round(written / 1e6, 1),
        "seconds": round(time.monotonic() - started),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(
        f"drain, 1 worker, {args.events:,} events, median of {args.rounds} alternating rounds: "
        f"off {report['rate_off']:,.0f}/s ({report['cpu_us_off']} µs CPU/event), "
        f"on {report['rate_on']:,.0f}/s ({report['cpu_us_on']} µs CPU/event): "
        f"{report['cost_pct']}% fewer events/s; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
