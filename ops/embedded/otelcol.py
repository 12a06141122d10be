"""The project's OpenTelemetry Collector as a child process: OTLP in, OTLP JSON lines to a file out.

Configured by the shared pipeline ``observability/otel/collector.yaml`` plus
the local overlay ``collector-local.yaml`` (ports and the output file through
``SIE_OTELCOL_*`` variables of the child's environment) and, when spans should
also go on to a Jaeger or Tempo, a third file written here that adds an
OTLP/HTTP exporter. The binary comes from :mod:`ops.embedded.otelcol_dist`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ops.embedded.otelcol_dist import OTEL_DIR, otelcol_binary
from ops.embedded.process import EmbeddedServerError, ManagedProcess, child_env

PIPELINE = OTEL_DIR / "collector.yaml"
LOCAL_OVERLAY = OTEL_DIR / "collector-local.yaml"
COMPOSE_OVERLAY = OTEL_DIR / "collector-compose.yaml"
TRACES_FILE = "traces.jsonl"
FORWARD_EXPORTER = "otlp_http/forward"


@dataclass
class CollectorProcess:
    """A running Collector: where to send OTLP, and the file it writes spans to."""

    process: ManagedProcess
    grpc_port: int
    http_port: int
    traces_file: Path
    forward_endpoint: str | None = None

    @property
    def traces_url(self) -> str:
        """The OTLP/HTTP traces URL for workers and Triton."""
        return f"http://127.0.0.1:{self.http_port}/v1/traces"

    def ready(self) -> bool:
        """The OTLP/HTTP receiver accepts an empty export request."""
        return accepts_otlp(self.traces_url)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: the batch processor and the file exporter flush what they hold first."""
        self.process.stop(timeout)


def accepts_otlp(url: str, timeout: float = 2.0) -> bool:
    """Whether ``url`` answers an empty OTLP/JSON export request with 200."""
    request = urllib.request.Request(
        url, data=b"{}", headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def forward_overlay(endpoint: str) -> dict[str, object]:
    """A config overlay that also sends every span to ``endpoint`` over OTLP/HTTP.

    ``http://host:4318`` is a base the exporter adds ``/v1/traces`` to; a URL
    already ending in ``/v1/traces`` is used as it is.
    """
    key = "traces_endpoint" if endpoint.rstrip("/").endswith("/v1/traces") else "endpoint"
    return {
        "exporters": {FORWARD_EXPORTER: {key: endpoint}},
        "service": {"pipelines": {"traces": {"exporters": ["file", FORWARD_EXPORTER]}}},
    }


def config_files(work_dir: Path, forward_endpoint: str | None = None) -> list[Path]:
    """The ``--config`` files in merge order (the forward overlay written into ``work_dir``)."""
    files = [PIPELINE, LOCAL_OVERLAY]
    if forward_endpoint:
        forward = work_dir / "collector-forward.yaml"
        forward.write_text(json.dumps(forward_overlay(forward_endpoint), indent=2) + "\n")  # JSON is YAML
        files.append(forward)
    return files


def collector_env(grpc_port: int, http_port: int, traces_file: Path) -> dict[str, str]:
    """The variables ``collector-local.yaml`` reads."""
    return {
        "SIE_OTELCOL_GRPC_PORT": str(grpc_port),
        "SIE_OTELCOL_HTTP_PORT": str(http_port),
        "SIE_OTELCOL_TRACES_FILE": str(traces_file),
    }


def start_collector(
    work_dir: Path,
    *,
    grpc_port: int,
    http_port: int,
    traces_file: Path | None = None,
    forward_endpoint: str | None = None,
    binary: Path | None = None,
    timeout: float = 30.0,
) -> CollectorProcess:
    """Start the Collector (building it first if needed) and wait until it accepts OTLP.

    Spans go to ``traces_file`` (default ``work_dir/traces.jsonl``, appended to)
    and, with ``forward_endpoint``, on to that OTLP/HTTP endpoint as well.
    """
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    traces_file = Path(traces_file or work_dir / TRACES_FILE).resolve()
    traces_file.parent.mkdir(parents=True, exist_ok=True)
    argv = [str(binary or otelcol_binary())]
    argv += [f"--config={f}" for f in config_files(work_dir, forward_endpoint)]
    process = ManagedProcess(
        name=f"otelcol:{http_port}",
        argv=tuple(argv),
        env=child_env(collector_env(grpc_port, http_port, traces_file)),
        log_path=work_dir / f"otelcol-{http_port}.log",
    )
    collector = CollectorProcess(process, grpc_port, http_port, traces_file, forward_endpoint)
    try:
        process.wait_ready(collector.ready, timeout)
    except EmbeddedServerError:
        process.stop()
        raise
    return collector
