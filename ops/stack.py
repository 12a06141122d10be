"""A whole local stack as child processes: Apache Kafka, tritonserver and N ``sie worker``s.

Used by ``sie up`` (and so ``make demo``) and by the integration tests. Each
worker is a separate process configured only through ``SIE_*`` environment
variables rendered from a :class:`~engine.settings.Settings` object.
"""

from __future__ import annotations

import logging
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic_core import to_json

from engine.errors import EngineError
from engine.settings import Settings
from inference.repository import RepositoryError, errors, validate_repository
from observability.tracing import otlp_traces_url
from ops.embedded import (
    KafkaBroker,
    ManagedProcess,
    TritonProcess,
    child_env,
    create_topics,
    free_port,
    start_broker,
    start_triton,
)
from ops.embedded.kafka_dist import KAFKA_VERSION
from ops.embedded.otelcol import TRACES_FILE, CollectorProcess, start_collector
from ops.embedded.process import http_ok

log = logging.getLogger(__name__)

ENV_PREFIX = "SIE_"


def _env_value(value: Any) -> str:
    if isinstance(value, (dict, list, tuple, BaseModel)):  # complex fields are JSON in the env
        return to_json(value).decode()
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)


def settings_env(settings: Settings) -> dict[str, str]:
    """``SIE_*`` variables that rebuild ``settings`` in a child (secrets included, unredacted)."""
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, BaseModel):
            for key in type(value).model_fields:
                inner = getattr(value, key)
                if inner is not None:
                    env[f"{ENV_PREFIX}{name.upper()}__{key.upper()}"] = _env_value(inner)
        elif value is not None:
            env[f"{ENV_PREFIX}{name.upper()}"] = _env_value(value)
    return env


@dataclass
class WorkerProcess:
    """One ``sie worker`` child."""

    name: str
    settings: Settings
    process: ManagedProcess

    @property
    def metrics_url(self) -> str:
        """Its Prometheus endpoint."""
        return f"http://127.0.0.1:{self.settings.metrics_port}/metrics"

    def ready(self) -> bool:
        """Its ``/readyz`` answers 200 (partitions assigned, Triton reachable)."""
        return http_ok(f"http://127.0.0.1:{self.settings.metrics_port}/readyz")

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until ready; raises with the log tail if it dies or times out."""
        self.process.wait_ready(self.ready, timeout)

    def respawn(self) -> None:
        """Start the exited process again, without waiting: same settings, group and metrics port."""
        if not self.process.alive:
            self.process.start()

    def stop(self, timeout: float = 40) -> None:
        """SIGTERM: it drains in-flight batches and commits before exiting."""
        self.process.stop(timeout)


def worker_command(settings: Settings) -> tuple[tuple[str, ...], dict[str, str]]:
    """The command line and environment of a ``sie worker`` child configured by ``settings``."""
    env = child_env(settings_env(settings) | {"PYTHONUNBUFFERED": "1"})
    return (sys.executable, "-m", "ops.cli", "worker"), env


def start_worker(settings: Settings, work_dir: Path, name: str) -> WorkerProcess:
    """Spawn ``python -m ops.cli worker`` configured by ``settings``; does not wait."""
    argv, env = worker_command(settings)
    process = ManagedProcess(name=name, argv=argv, env=env, log_path=Path(work_dir).resolve() / f"{name}.log")
    return WorkerProcess(name, settings, process)


def worker_settings(base: Settings, index: int, work_dir: Path, metrics_port: int | None = None) -> Settings:
    """``base`` with this worker's own name, metrics port and Faust data dir."""
    name = f"{base.worker_name}-{index}"
    return base.model_copy(
        update={
            "worker_name": name,
            "metrics_port": metrics_port if metrics_port is not None else free_port(),
            "data_dir": Path(work_dir).resolve() / name,
        }
    )


@dataclass
class Stack:
    """The running local stack; :meth:`stop` takes it down in reverse order."""

    settings: Settings
    work_dir: Path
    broker: KafkaBroker | None = None
    triton: TritonProcess | None = None
    workers: list[WorkerProcess] = field(default_factory=list)
    collector: CollectorProcess | None = None

    def add_worker(self, metrics_port: int | None = None, wait: bool = True) -> WorkerProcess:
        """Start one more worker (joins the same consumer group)."""
        index = len(self.workers) + 1
        ws = worker_settings(self.settings, index, self.work_dir, metrics_port)
        worker = start_worker(ws, self.work_dir, ws.worker_name)
        self.workers.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    def endpoints(self) -> dict[str, str]:
        """Human-readable addresses of everything running."""
        out = {"kafka": self.settings.kafka.bootstrap_servers}
        if self.triton is not None:
            out |= {"triton grpc": self.triton.grpc_url, "triton metrics": self.triton.metrics_url}
        for w in self.workers:
            out[w.name] = w.metrics_url
        if self.collector is not None:
            c = self.collector
            out["otel collector"] = f"{c.traces_url} -> {c.traces_file}" + (
                f" and {c.forward_endpoint}" if c.forward_endpoint else ""
            )
        return out

    def stop(self) -> None:
        """Stop workers (graceful drain), then Triton, then the Collector (flushing), then the broker."""
        for worker in reversed(self.workers):
            worker.stop()
        if self.triton is not None:
            self.triton.stop()
        if self.collector is not None:
            self.collector.stop()
        if self.broker is not None:
            self.broker.stop()


def copy_model_repository(source: Path, work_dir: Path) -> Path:
    """A private copy, so Triton's ``__pycache__`` never lands in the checkout."""
    target = Path(work_dir) / "model_repository"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.py[co]"))
    return target


def refuse_invalid_models(repository: Path) -> None:
    """Raise one :class:`RepositoryError` listing every error of the repository's models.

    An ONNX graph whose inputs or outputs differ from its ``config.pbtxt`` is named here, before
    Triton starts (Triton would refuse it too, inside its log).
    """
    found = [p for problems in validate_repository(repository).values() for p in errors(problems)]
    if found:
        raise RepositoryError(found)


@dataclass(frozen=True)
class StackPorts:
    """Ports of the local stack; ``sie up`` defaults follow each server's convention."""

    kafka: int = 9092
    triton_http: int = 8000
    triton_grpc: int = 8001
    triton_metrics: int = 8002
    first_worker_metrics: int = 9300
    kafka_controller: int = 9093
    otlp_grpc: int = 4317  # the OpenTelemetry Collector's, when it runs
    otlp_http: int = 4318

    @classmethod
    def free(cls) -> StackPorts:
        """Ports free right now (tests)."""
        kafka, http, grpc, metrics, controller, otlp_grpc, otlp_http = (free_port() for _ in range(7))
        return cls(kafka, http, grpc, metrics, 0, controller, otlp_grpc, otlp_http)

    def check_free(self, workers: int, collector: bool = False) -> None:
        """Raise a clear error naming any port already in use."""
        wanted = {"OTLP gRPC": self.otlp_grpc, "OTLP HTTP": self.otlp_http} if collector else {}
        wanted |= {
            "Kafka": self.kafka,
            "Kafka controller": self.kafka_controller,
            "Triton HTTP": self.triton_http,
            "Triton gRPC": self.triton_grpc,
            "Triton metrics": self.triton_metrics,
        }
        if self.first_worker_metrics:
            wanted |= {f"worker {i + 1} metrics": self.first_worker_metrics + i for i in range(workers)}
        busy = [f"{name} port {port}" for name, port in wanted.items() if not port_is_free(port)]
        if busy:
            raise StackError(
                "already in use: " + ", ".join(busy) + " (another stack running? stop it or pick other ports)"
            )


class StackError(EngineError):
    """The local stack cannot start as asked."""


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now.

    ``SO_REUSEADDR`` as the servers themselves set it: sockets of earlier client
    connections in TIME_WAIT do not count as "in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_stack(
    base: Settings,
    work_dir: Path,
    model_repository: Path,
    *,
    workers: int = 2,
    ports: StackPorts | None = None,
    on_step: Callable[[str], None] | None = None,
    otelcol: Path | None = None,
    otlp_forward: str | None = None,
) -> Stack:
    """Start broker, create topics, start Triton and ``workers`` workers; wait for all.

    With ``otelcol`` (the Collector's binary) a Collector starts first and
    receives the spans of Triton and the workers (``base.otlp_endpoint`` is
    replaced): written to ``work_dir/traces.jsonl`` and sent on to
    ``otlp_forward`` if given. ``on_step(message)`` is called before each
    step (progress output). On any failure everything started so far is
    stopped again.
    """
    ports = ports or StackPorts()
    ports.check_free(workers, collector=otelcol is not None)
    step = on_step or (lambda _msg: None)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    logs = work_dir / "logs"
    stack = Stack(base, work_dir)
    try:
        if otelcol is not None:
            traces = work_dir / TRACES_FILE
            step(f"starting the OpenTelemetry Collector (OTLP/HTTP {ports.otlp_http}), spans to {traces}")
            stack.collector = start_collector(
                logs,
                traces_file=traces,
                grpc_port=ports.otlp_grpc,
                http_port=ports.otlp_http,
                forward_endpoint=otlp_forward,
                binary=otelcol,
            )
            base = base.model_copy(update={"otlp_endpoint": stack.collector.traces_url})
        data = work_dir / "kafka-data"
        step(f"starting Apache Kafka {KAFKA_VERSION} (KRaft) on 127.0.0.1:{ports.kafka}, data in {data}")
        stack.broker = start_broker(
            ports.kafka, logs, controller_port=ports.kafka_controller, data_dir=data, on_progress=step
        )
        topics = base.topics
        step(f"creating topics {topics.events}, {topics.predictions}, {topics.dlq}")
        names = (topics.events, topics.predictions, topics.dlq)
        create_topics(stack.broker.bootstrap, {t: topics.partitions for t in names})
        step(f"starting Triton Inference Server (gRPC {ports.triton_grpc}, HTTP {ports.triton_http})")
        served = copy_model_repository(model_repository, work_dir)
        refuse_invalid_models(served)
        stack.triton = start_triton(
            served,
            logs,
            http_port=ports.triton_http,
            grpc_port=ports.triton_grpc,
            metrics_port=ports.triton_metrics,
            otlp_endpoint=otlp_traces_url(base.otlp_endpoint) if base.otlp_endpoint else None,
        )
        stack.settings = _pointed_at(base, stack.broker, stack.triton)
        if stack.settings.drift.reference_dir is None:  # drift gauges against the served profiles
            drift = stack.settings.drift.model_copy(update={"reference_dir": served})
            stack.settings = stack.settings.model_copy(update={"drift": drift})
        for i in range(workers):
            step(f"starting worker {i + 1}/{workers}")
            port = ports.first_worker_metrics + i if ports.first_worker_metrics else None
            stack.add_worker(port, wait=False)
        step("waiting for workers to join the consumer group and read model specs")
        for worker in stack.workers:
            worker.wait_ready(timeout=120)
    except BaseException:
        stack.stop()
        raise
    return stack


def _pointed_at(base: Settings, broker: KafkaBroker, triton: TritonProcess) -> Settings:
    return base.model_copy(
        update={
            "kafka": base.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap}),
            "triton": base.triton.model_copy(update={"url": triton.grpc_url, "http_url": triton.http_url}),
        }
    )
