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

Writes ``reports/bench/trace_cost.json`` and the section "Trace export cost"
of docs/benchmarks.md (a kept section: ``make bench`` leaves it in place).
Not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.drain import Drain, measure_drain
from benchmarks.report import machine, put_section
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
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--docs-only", action="store_true", help="only write the docs from --out's JSON")
    args = parser.parse_args()
    console = Console()
    if args.docs_only:
        write_docs(json.loads(args.out.read_text()), args.docs, console)
        return 0
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
        "machine": machine(),
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "events": args.events,
        "default_ratio": base.trace_sample_ratio,
        "median": summary(rounds),
        "rounds": [{k: d.as_dict() for k, d in r.items()} for r in rounds],
        "collector_file_mb": round(written / 1e6, 1),
        "seconds": round(time.monotonic() - started),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    write_docs(report, args.docs, console)
    console.print(f"wrote {args.out}")
    return 0


def write_docs(report: dict[str, Any], docs: Path, console: Console) -> None:
    """Print the "Trace export cost" section and put it into ``docs`` (replacing an earlier one)."""
    text = markdown(report)
    put_section(docs, "trace-cost", text)
    console.print(text, markup=False, highlight=False)
    console.print(f"wrote the trace export section of {docs}")


def markdown(report: dict[str, Any]) -> str:
    """The "Trace export cost" section of docs/benchmarks.md."""
    m, rounds = report["machine"], len(report["rounds"])
    ratios = " ".join(f"--ratio {name.rsplit(' ', 1)[1]}" for name in report["median"] if name != OFF)
    lines = [
        "## Trace export cost",
        "",
        f"`python -m benchmarks.trace_cost --rounds {rounds} --events {report['events']} {ratios}` "
        f"(commit `{m['commit']}`, {m['cores']} cores, {m['cpu']}; {report['seconds']} s). One worker "
        f"drains a preloaded backlog of {report['events']:,} JSON events (benchmarks/drain.py) with "
        "tracing off, and with its spans exported over OTLP/HTTP to the project's OpenTelemetry "
        "Collector (batched, written to a file) at each sampling ratio; one broker, Triton and "
        f"Collector for all; {rounds} rounds, the order of the variants rotated each round; medians. "
        f"The default `SIE_TRACE_SAMPLE_RATIO` is {report['default_ratio']:g} (the bench events carry "
        "no `traceparent`, so the ratio decides).",
        "",
        "| tracing | "
        + " | ".join(f"round {i + 1} events/s" for i in range(rounds))
        + " | median events/s | median worker CPU µs/event | fewer events/s than off (median) |",
        "|---|" + "---:|" * (rounds + 3),
    ]
    for name, s in report["median"].items():
        each = " | ".join(f"{r[name]['rate']:,.0f}" for r in report["rounds"])
        cost = "-" if name == OFF else f"{s['cost_pct']}%"
        cpu = "-" if s["cpu_us_per_event"] is None else f"{s['cpu_us_per_event']:.1f}"
        lines.append(f"| {name} | {each} | {s['rate']:,.0f} | {cpu} | {cost} |")
    lines += [
        "",
        f"A busy machine: other engineers ran their tests on the same cores (load average "
        f"{report['load_average'][0]} at the end), so single drains vary by tens of percent; compare "
        f"the variants within a round. The Collector wrote {report['collector_file_mb']} MB of OTLP JSON.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
