"""The ``sie`` command line. Settings are built here, once, and passed in.

Expected errors (a port in use, a missing binary, invalid settings) print one
line and exit 1 (ops/cli_errors.py); ``sie --debug ...`` shows their traceback.
"""

from __future__ import annotations

import logging
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from rich.console import Console

from engine.redact import settings_json, settings_line
from engine.settings import Settings
from ops.cli_errors import DEBUG_PARAM, ExpectedErrorsGroup
from ops.models_cli import models_app
from streams.kafka_config import client_config, reader_config

app = typer.Typer(
    cls=ExpectedErrorsGroup,
    help="Streaming inference engine: Kafka events -> Triton -> Kafka predictions.",
)
app.add_typer(models_app, name="models")
console = Console(stderr=True)

Bootstrap = Annotated[Optional[str], typer.Option("--bootstrap", help="Kafka bootstrap servers.")]
TritonUrl = Annotated[Optional[str], typer.Option("--triton-url", help="Triton gRPC host:port.")]
EventsTopic = Annotated[Optional[str], typer.Option("--events-topic", help="Input topic.")]
PredTopic = Annotated[Optional[str], typer.Option("--predictions-topic", help="Output topic.")]
DlqTopic = Annotated[Optional[str], typer.Option("--dlq-topic", help="Dead-letter topic.")]
Isolation = Annotated[
    Literal["uncommitted", "committed"],
    typer.Option(
        "--isolation",
        help="committed: read only records of committed transactions, as a read_committed consumer "
        "does (exactly-once outputs); uncommitted: every record written.",
    ),
]


@app.callback()
def main(
    debug: Annotated[
        bool, typer.Option(f"--{DEBUG_PARAM}", help="Show the traceback of expected errors too.")
    ] = False,
) -> None:
    """Streaming inference engine: Kafka events -> Triton -> Kafka predictions."""


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (``SIE_*``), then CLI flags ("section.field" keys)."""
    settings = Settings()
    data = settings.model_dump()
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, field = dotted.rpartition(".")
        (data[section] if section else data)[field] = value
    return Settings.model_validate(data)


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("faust", "mode", "aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


class EventFormat(str, Enum):
    """How events are written (engine/contract/json_input.py, engine/contract/wire.py)."""

    json = "json"
    binary = "binary"


@app.command()
def worker(
    bootstrap: Bootstrap = None,
    triton_url: TritonUrl = None,
    events_topic: EventsTopic = None,
    predictions_topic: PredTopic = None,
    dlq_topic: DlqTopic = None,
    group: Annotated[Optional[str], typer.Option(help="Consumer group id.")] = None,
    default_model: Annotated[Optional[str], typer.Option(help="Model for events naming none.")] = None,
    max_batch: Annotated[Optional[int], typer.Option(help="Events per micro-batch.")] = None,
    max_delay_ms: Annotated[Optional[float], typer.Option(help="Micro-batch deadline.")] = None,
    max_in_flight: Annotated[Optional[int], typer.Option(help="Triton requests in flight.")] = None,
    metrics_port: Annotated[Optional[int], typer.Option(help="Port of /metrics, /healthz, /readyz.")] = None,
    processes: Annotated[
        int,
        typer.Option(
            min=1,
            help="Worker processes in the one consumer group (one per core); each serves metrics on "
            "its own port, counting up from --metrics-port.",
        ),
    ] = 1,
) -> None:
    """Run a worker against the configured Kafka and Triton (production entry point)."""
    from ops.worker import Worker

    settings = load_settings(
        **{
            "kafka.bootstrap_servers": bootstrap,
            "kafka.group_id": group,
            "triton.url": triton_url,
            "triton.default_model": default_model,
            "topics.events": events_topic,
            "topics.predictions": predictions_topic,
            "topics.dlq": dlq_topic,
            "batch.max_size": max_batch,
            "batch.max_delay_ms": max_delay_ms,
            "batch.max_in_flight": max_in_flight,
            "metrics_port": metrics_port,
        }
    )
    _logging(settings.log_level)
    logging.getLogger(__name__).info("starting worker with %s", settings_line(settings))
    if processes > 1:
        from ops.processes import run_processes

        raise typer.Exit(run_processes(settings, processes))
    Worker(settings).run()


@app.command()
def produce(
    file: Annotated[Optional[Path], typer.Argument(help="JSON-lines file; stdin when omitted.")] = None,
    topic: EventsTopic = None,
    bootstrap: Bootstrap = None,
    event_format: Annotated[
        EventFormat,
        typer.Option(
            "--format",
            help="json: each line as is; binary: each line's inputs as binary tensors (dtypes from "
            "the model repository's config.pbtxt).",
        ),
    ] = EventFormat.json,
    model_repository: Annotated[
        Path, typer.Option(help="Where --format binary finds the models' input dtypes.")
    ] = Path("model_repository"),
) -> None:
    """Publish events from a JSON-lines file or stdin (key = the event's id)."""
    from streams.kafka_tools import iter_json_lines, produce_all

    settings = load_settings(**{"kafka.bootstrap_servers": bootstrap, "topics.events": topic})
    config, events_topic = client_config(settings.kafka), settings.topics.events
    with file.open() if file else sys.stdin as stream:
        lines = iter_json_lines(stream)
        if event_format is EventFormat.binary:
            from ops.binary_events import BinaryConverter

            converter = BinaryConverter.from_repository(model_repository, settings.triton.default_model)
            n = produce_all(config, events_topic, converter.convert_all(lines))
        else:
            n = produce_all(config, events_topic, lines)
    console.print(f"produced {n} records to {events_topic!r}")


@app.command()
def tail(
    topic: Annotated[str, typer.Argument(help="Topic to print.")],
    bootstrap: Bootstrap = None,
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest record.")] = True,
    max_records: Annotated[Optional[int], typer.Option("--max", help="Stop after N records.")] = None,
    idle_timeout: Annotated[Optional[float], typer.Option(help="Stop after N idle seconds.")] = None,
    isolation: Isolation = "uncommitted",
) -> None:
    """Print a topic's records (key, headers, value)."""
    from streams.kafka_tools import consume, describe

    settings = load_settings(**{"kafka.bootstrap_servers": bootstrap})
    records = consume(
        reader_config(settings.kafka, committed=isolation == "committed"),
        topic,
        from_beginning=from_beginning,
        idle_timeout=idle_timeout,
    )
    for n, msg in enumerate(records, 1):
        typer.echo(describe(msg))
        if max_records is not None and n >= max_records:
            break


@app.command()
def replay(
    reason: Annotated[
        Optional[list[str]], typer.Option("--reason", help="Only this error.reason (repeatable).")
    ] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Replay at most N dead letters.")] = None,
    to: Annotated[
        Optional[str],
        typer.Option("--to", help="Target topic (default: their source topic, if it is an input topic)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would be replayed.")] = False,
    bootstrap: Bootstrap = None,
    dlq_topic: DlqTopic = None,
    events_topic: EventsTopic = None,
    isolation: Isolation = "uncommitted",
) -> None:
    """Republish dead letters' original bytes (key, headers) to the input topic after a fix.

    Without --to, a dead letter goes back to its source topic only if that is an
    input topic (the events topic or a routing.topic_models key); others are
    skipped and counted. The DLQ is streamed; --limit stops reading.
    """
    from engine.errors import Reason
    from ops.replay import replay as run_replay

    unknown = sorted(set(reason or ()) - {r.value for r in Reason})
    if unknown:
        console.print(f"unknown reason(s) {unknown}; known: {', '.join(r.value for r in Reason)}")
        raise typer.Exit(2)
    settings = load_settings(
        **{"kafka.bootstrap_servers": bootstrap, "topics.dlq": dlq_topic, "topics.events": events_topic}
    )
    report = run_replay(
        client_config(settings.kafka),
        settings.topics.dlq,
        settings.topics.events,
        inputs=set(settings.routing.topic_models),
        reasons=reason,
        limit=limit,
        to_topic=to,
        dry_run=dry_run,
        read_committed=isolation == "committed",
    )
    verb = "would replay" if dry_run else "replayed"
    console.print(
        f"{verb} {report.chosen} of {report.read} dead letters read from {settings.topics.dlq!r} "
        f"by reason {dict(report.by_reason)} to {dict(report.by_topic)}; "
        f"skipped {report.skipped} {dict(report.skip_reasons)}",
        soft_wrap=True,
        markup=False,
    )


@app.command()
def up(
    workers: Annotated[int, typer.Option(min=1, help="Worker processes to start.")] = 2,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions per new topic (>= workers).")] = 4,
    demo_rate: Annotated[float, typer.Option(help="Publish synthetic events at this rate (0: none).")] = 0.0,
    duration: Annotated[Optional[float], typer.Option(help="Stop after N seconds (default: Ctrl-C).")] = None,
    model_repository: Annotated[Path, typer.Option(help="Model repository.")] = Path("model_repository"),
    kafka_port: Annotated[int, typer.Option(help="Broker port.")] = 9092,
    kafka_controller_port: Annotated[int, typer.Option(help="KRaft controller port.")] = 9093,
    triton_http_port: Annotated[int, typer.Option(help="Triton HTTP port.")] = 8000,
    triton_grpc_port: Annotated[int, typer.Option(help="Triton gRPC port.")] = 8001,
    triton_metrics_port: Annotated[int, typer.Option(help="Triton metrics port.")] = 8002,
    metrics_port: Annotated[int, typer.Option(help="First worker's /metrics port (+1 per worker).")] = 9300,
    otlp_endpoint: Annotated[
        Optional[str],
        typer.Option(help="OTLP/HTTP traces URL for workers and Triton directly (no local Collector)."),
    ] = None,
    otlp_forward: Annotated[
        Optional[str],
        typer.Option(help="The local Collector also sends spans here (OTLP/HTTP, e.g. Jaeger's :4318)."),
    ] = None,
    traces: Annotated[
        bool, typer.Option(help="Run the OpenTelemetry Collector (once built) and trace events.")
    ] = True,
    otlp_http_port: Annotated[int, typer.Option(help="The local Collector's OTLP/HTTP port.")] = 4318,
    otlp_grpc_port: Annotated[int, typer.Option(help="The local Collector's OTLP/gRPC port.")] = 4317,
    report: Annotated[Optional[Path], typer.Option(help="Write the demo summary (JSON) here.")] = None,
    event_format: Annotated[
        EventFormat, typer.Option("--format", help="The demo's events: JSON or binary tensors.")
    ] = EventFormat.json,
) -> None:
    """Start the local stack (Apache Kafka, tritonserver, workers) as processes; Ctrl-C stops it.

    Kafka keeps its data in <data_dir>/stack/kafka-data across runs (`make clean` removes it).
    """
    from ops.stack import StackPorts
    from ops.up import UpOptions, run_up

    partitions = max(partitions, workers)  # a worker without a partition would idle
    settings = load_settings(**{"otlp_endpoint": otlp_endpoint, "topics.partitions": partitions})
    _logging("WARNING")
    ports = StackPorts(
        kafka_port,
        triton_http_port,
        triton_grpc_port,
        triton_metrics_port,
        metrics_port,
        kafka_controller_port,
        otlp_grpc_port,
        otlp_http_port,
    )
    opts = UpOptions(
        workers=workers,
        model_repository=model_repository,
        ports=ports,
        demo_rate=demo_rate,
        event_format=event_format.value,
        duration_s=duration,
        report=report,
        traces=traces,
        otlp_forward=otlp_forward,
    )
    raise typer.Exit(run_up(settings, opts, console))


@app.command("fetch-kafka")
def fetch_kafka() -> None:
    """Check Java and fetch the local Apache Kafka broker's jars with Maven (once; cached)."""
    from ops.embedded.kafka_dist import KAFKA_VERSION, find_java, kafka_libs

    find_java()  # EmbeddedServerError: one line (ops/cli_errors.py)
    libs = kafka_libs(on_progress=lambda msg: console.print(f"[cyan]>[/] {msg}"))
    console.print(f"Apache Kafka {KAFKA_VERSION}: {libs}")


@app.command("fetch-otelcol")
def fetch_otelcol() -> None:
    """Build the project's OpenTelemetry Collector with Go (once; cached by its manifest's hash)."""
    from ops.embedded.otelcol_dist import otelcol_binary

    binary = otelcol_binary(on_progress=lambda msg: console.print(f"[cyan]>[/] {msg}"))
    console.print(f"OpenTelemetry Collector: {binary}")


@app.command()
def traces(
    trace: Annotated[
        Optional[str], typer.Argument(help="A trace id or an event id: show that trace alone.")
    ] = None,
    file: Annotated[
        Optional[Path], typer.Option(help="The Collector's output (default: <data_dir>/stack/traces.jsonl).")
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="How many of the slowest traces to draw.")] = 3,
    since: Annotated[float, typer.Option(min=0, help="Only traces that started in the last N minutes.")] = 15,
    width: Annotated[int, typer.Option(min=10, help="Width of the time axis in characters.")] = 48,
) -> None:
    """Where an event's time went: the slowest recent traces (or one) as waterfalls.

    Reads the file the Collector of `sie up` writes every span to.
    """
    from ops.traces_cli import show_traces

    path = file or load_settings().data_dir / "stack" / "traces.jsonl"
    raise typer.Exit(show_traces(Console(), path, trace, top=top, since_min=since, width=width))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Benchmark the engine against its bounds (runs benchmarks/run.py; see --help there)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "run.py").is_file():
        console.print("[red]sie bench needs a source checkout (benchmarks/ beside engine/)[/]")
        raise typer.Exit(2)
    argv = [sys.executable, "-m", "benchmarks.run", *ctx.args]
    raise typer.Exit(subprocess.call(argv, cwd=root))


@app.command("settings")
def show_settings() -> None:
    """Print the effective settings (secrets and credentials in URLs redacted)."""
    typer.echo(settings_json(Settings()))


if __name__ == "__main__":
    app()
