"""A whole local stack as child processes: tansu, tritonserver and N ``sie worker``s.

Used by ``sie up`` (and so ``make demo``) and by the integration tests. Each
worker is a separate process configured only through ``SIE_*`` environment
variables rendered from a :class:`~engine.settings.Settings` object.
"""

from __future__ import annotations

import logging
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from engine.embedded import (
    BrokerProcess,
    ManagedProcess,
    TritonProcess,
    child_env,
    create_topics,
    free_port,
    start_broker,
    start_triton,
)
from engine.settings import Settings

log = logging.getLogger(__name__)

ENV_PREFIX = "SIE_"


def _env_value(value: Any) -> str:
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


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


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
        return _http_ok(f"http://127.0.0.1:{self.settings.metrics_port}/readyz")

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until ready; raises with the log tail if it dies or times out."""
        self.process.wait_ready(self.ready, timeout)

    def stop(self, timeout: float = 40) -> None:
        """SIGTERM: it drains in-flight batches and commits before exiting."""
        self.process.stop(timeout)


def start_worker(settings: Settings, work_dir: Path, name: str) -> WorkerProcess:
    """Spawn ``python -m engine.cli worker`` configured by ``settings``; does not wait."""
    env = child_env(settings_env(settings) | {"PYTHONUNBUFFERED": "1"})
    process = ManagedProcess(
        name=name,
        argv=(sys.executable, "-m", "engine.cli", "worker"),
        env=env,
        log_path=Path(work_dir) / f"{name}.log",
    )
    return WorkerProcess(name, settings, process)


def worker_settings(base: Settings, index: int, work_dir: Path, metrics_port: int | None = None) -> Settings:
    """``base`` with this worker's own name, metrics port and Faust data dir."""
    name = f"{base.worker_name}-{index}"
    return base.model_copy(
        update={
            "worker_name": name,
            "metrics_port": metrics_port if metrics_port is not None else free_port(),
            "data_dir": Path(work_dir) / name,
        }
    )


@dataclass
class Stack:
    """The running local stack; :meth:`stop` takes it down in reverse order."""

    settings: Settings
    work_dir: Path
    broker: BrokerProcess | None = None
    triton: TritonProcess | None = None
    workers: list[WorkerProcess] = field(default_factory=list)

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
        return out

    def stop(self) -> None:
        """Stop workers (graceful drain), then Triton, then the broker."""
        for worker in reversed(self.workers):
            worker.stop()
        if self.triton is not None:
            self.triton.stop()
        if self.broker is not None:
            self.broker.stop()


def copy_model_repository(source: Path, work_dir: Path) -> Path:
    """A private copy, so Triton's ``__pycache__`` never lands in the checkout."""
    target = Path(work_dir) / "model_repository"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.py[co]"))
    return target


def start_stack(
    base: Settings,
    work_dir: Path,
    model_repository: Path,
    *,
    workers: int = 2,
    first_metrics_port: int | None = None,
    on_step: Any = None,
) -> Stack:
    """Start broker, create topics, start Triton and ``workers`` workers; wait for all.

    ``on_step(str)`` is called before each step (progress output).
    """
    step = on_step or (lambda _msg: None)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(base, work_dir)
    try:
        step("starting Kafka broker (tansu)")
        stack.broker = start_broker(free_port(), work_dir / "logs")
        topics = base.topics
        step(f"creating topics {topics.events}, {topics.predictions}, {topics.dlq}")
        create_topics(
            stack.broker.bootstrap,
            {t: topics.partitions for t in (topics.events, topics.predictions, topics.dlq)},
        )
        step("starting Triton Inference Server")
        stack.triton = start_triton(
            copy_model_repository(model_repository, work_dir),
            work_dir / "logs",
            http_port=free_port(),
            grpc_port=free_port(),
            metrics_port=free_port(),
            otlp_endpoint=None,
        )
        stack.settings = base.model_copy(
            update={
                "kafka": base.kafka.model_copy(update={"bootstrap_servers": stack.broker.bootstrap}),
                "triton": base.triton.model_copy(
                    update={"url": stack.triton.grpc_url, "http_url": stack.triton.http_url}
                ),
            }
        )
        for i in range(workers):
            port = first_metrics_port + i if first_metrics_port else None
            step(f"starting worker {i + 1}/{workers}")
            stack.add_worker(port, wait=False)
        step("waiting for workers to join the group and load model specs")
        for worker in stack.workers:
            worker.wait_ready(timeout=90)
    except BaseException:
        stack.stop()
        raise
    return stack
