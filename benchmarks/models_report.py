"""``python -m benchmarks.models_report`` (``sie models report``, ``make models-report``).

The ONNX exports of the repository's models and their compressed variants
(FP16, INT8 static QDQ, INT8 dynamic; inference/variants.py), measured
against the original on the same run:

1. held-out accuracy, agreement with the FP32 original and size on disk
   (benchmarks/models_quality.py, ONNX Runtime in this process);
2. Triton p50/p99 latency and inferences/s at batch 1, 64 and 256 with
   ``perf_analyzer`` (benchmarks/perf.py), every model served by one
   tritonserver (ONNX through the local Python-based onnxruntime backend);
3. engine drain events/s (benchmarks/drain.py): one worker draining a
   preloaded backlog of ``breast_cancer`` events through the numpy
   python-backend model, the ONNX export and each variant; numpy and ONNX
   FP32 are drained three times, alternating, and compared by their medians,
   so both see the same (busy) machine.

Writes docs/models-report.json, docs/models-latency.png and the generated
section of docs/models.md (~10 minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.drain import measure_drain
from benchmarks.models_markdown import targets, write_markdown, write_plot
from benchmarks.models_quality import quality_table
from benchmarks.perf import run_perf
from benchmarks.report import machine, write_json
from benchmarks.run import BROKER_HEAP_MB, PARTITIONS, warm_up_broker, wipe_broker_data
from benchmarks.systems import SystemSpec
from engine.settings import Settings
from inference.variants import KINDS, make_variant, variant_name
from ops.embedded import KafkaBroker, TritonProcess, free_port, start_broker, start_triton
from ops.eventgen import GeneratedEvent, generate, load_profiles
from ops.stack import copy_model_repository

REPO = Path(__file__).resolve().parents[1]
MODELS = ("breast_cancer", "iris", "seq_trend")
BATCHES = (1, 64, 256)
CONCURRENCY = 4
SEQUENCE_SHAPE = "sequence:32"  # perf_analyzer's fixed length for seq_trend's variable-length input
DRAIN_MODEL = "breast_cancer"
DRAIN_EVENTS = 40_000
DRAIN_SPEC = SystemSpec("engine, 1 worker", "engine", 1)
DRAIN_ROUNDS = 3  # numpy and ONNX FP32 drained this many times, alternating (the target takes medians)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="sie models report", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "models", help="work folder")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "models.md", help="page to update")
    parser.add_argument("--drain-events", type=int, default=DRAIN_EVENTS, help="backlog per drain")
    parser.add_argument("--no-perf", action="store_true", help="skip perf_analyzer")
    parser.add_argument("--no-drain", action="store_true", help="skip the engine drains")
    return parser.parse_args(argv)


def build_variants(repository: Path) -> dict[str, dict[str, str]]:
    """Make every variant of every ONNX export in ``repository``: ``{name: {kind: triton model}}``."""
    made: dict[str, dict[str, str]] = {}
    for name in MODELS:
        made[name] = {}
        for kind in KINDS:
            make_variant(repository, f"{name}_onnx", kind)
            made[name][kind] = variant_name(f"{name}_onnx", kind)
    return made


def served_models(variants: dict[str, dict[str, str]]) -> list[str]:
    """Every model the report's Triton serves: numpy ``DRAIN_MODEL``, the exports and the variants."""
    return [DRAIN_MODEL] + [m for name in MODELS for m in (f"{name}_onnx", *variants[name].values())]


def start_servers(
    work: Path, repository: Path, models: list[str]
) -> tuple[KafkaBroker, TritonProcess, Settings]:
    """An empty Apache Kafka broker and a tritonserver serving ``models``; settings pointing at both."""
    wipe_broker_data(work)
    broker = start_broker(free_port(), work, heap_mb=BROKER_HEAP_MB)
    try:
        triton = start_triton(
            repository,
            work,
            http_port=free_port(),
            grpc_port=free_port(),
            metrics_port=free_port(),
            models=models,
        )
    except BaseException:
        broker.stop()
        raise
    base = Settings(
        kafka={"bootstrap_servers": broker.bootstrap},
        triton={"url": triton.grpc_url, "http_url": triton.http_url, "default_model": DRAIN_MODEL},
        topics={"partitions": PARTITIONS},
        log_level="WARNING",
    )
    return broker, triton, base


def perf_all(
    grpc_url: str, models: list[str], work: Path, console: Console
) -> dict[str, list[dict[str, float]]]:
    """perf_analyzer at each batch size for each model."""
    console.rule("Triton (perf_analyzer)")
    out: dict[str, list[dict[str, float]]] = {}
    for model in models:
        shape = SEQUENCE_SHAPE if model.startswith("seq_trend") else None
        out[model] = []
        for batch in BATCHES:
            try:
                point = run_perf(grpc_url, model, batch, CONCURRENCY, work, interval_ms=1000, shape=shape)
            except RuntimeError as err:
                console.print(f"  [red]{model} batch {batch}: {err}[/]")
                continue
            out[model].append(point.as_dict())
            console.print(
                f"  {model} batch {batch}: {point.inferences_per_s:,.0f} inferences/s, "
                f"p50 {point.p50_ms:.2f} ms, p99 {point.p99_ms:.2f} ms"
            )
    return out


def drain_events(model: str) -> Iterator[GeneratedEvent]:
    """``DRAIN_MODEL``'s events addressed to ``model`` (same seed, same rows for every model)."""
    profile = load_profiles(REPO / "model_repository", [DRAIN_MODEL])[0]
    return generate([dataclasses.replace(profile, model=model)], 10**9, seed=2, keys=256)


def drains(
    base: Settings, work: Path, variants: dict[str, str], n: int, console: Console
) -> dict[str, list[dict[str, Any]]]:
    """Engine drain rates per model; numpy and ONNX FP32 ``DRAIN_ROUNDS`` times, alternating."""
    console.rule(f"Engine, 1 worker, draining {n:,} {DRAIN_MODEL} events per model")
    onnx = f"{DRAIN_MODEL}_onnx"
    order = [DRAIN_MODEL, onnx, *variants.values()] + [DRAIN_MODEL, onnx] * (DRAIN_ROUNDS - 1)
    out: dict[str, list[dict[str, Any]]] = {}
    for model in order:
        console.print(f"  {model}:")
        settings = base.model_copy(update={"triton": base.triton.model_copy(update={"default_model": model})})
        drain = measure_drain(
            DRAIN_SPEC, settings, work, drain_events(model), n, lambda msg: console.print(f"    {msg}")
        )
        out.setdefault(model, []).append(drain.as_dict())
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and write the report."""
    opts = parse(argv)
    console = Console()
    logging.getLogger().setLevel(logging.ERROR)  # ONNX Runtime's quantizer warns on the root logger
    t0 = time.monotonic()
    work = (opts.out / "work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    console.print("[cyan]>[/] making the FP16, INT8 and INT8-dynamic variants of every ONNX model")
    repository = copy_model_repository(REPO / "model_repository", work)
    variants = build_variants(repository)
    report: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M")}
    report["quality"] = {n: [q.as_dict() for q in quality_table(repository, n, variants[n])] for n in MODELS}
    report |= {"batches": list(BATCHES), "concurrency": CONCURRENCY, "sequence_shape": SEQUENCE_SHAPE}
    report |= {"drain_model": DRAIN_MODEL, "drain_events": opts.drain_events, "perf": {}, "drain": {}}
    if not opts.no_perf or not opts.no_drain:
        console.print("[cyan]>[/] starting Apache Kafka and tritonserver (every original and variant)")
        broker, triton, base = start_servers(work, repository, served_models(variants))
        try:
            if not opts.no_perf:
                report["perf"] = perf_all(triton.grpc_url, served_models(variants), work, console)
            if not opts.no_drain:
                warm_up_broker(base)
                report["drain"] = drains(base, work, variants[DRAIN_MODEL], opts.drain_events, console)
        finally:
            triton.stop()
            broker.stop()
            wipe_broker_data(work)
    report["targets"] = targets(report)
    report["seconds"] = round(time.monotonic() - t0, 1)
    docs_dir = opts.docs.parent
    write_json(report, docs_dir / "models-report.json")
    write_plot(report, docs_dir / "models-latency.png")
    write_markdown(report, opts.docs, "models-report.json", "models-latency.png")
    console.print(
        f"[green]wrote[/] {opts.docs} (+ models-report.json, models-latency.png) in {report['seconds']:.0f}s"
    )
    for t in report["targets"]:
        console.print(f"  {'ok ' if t['met'] else 'NO '} {t['target']}: {t['measured']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
