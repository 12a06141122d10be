"""Real servers for integration tests: one Apache Kafka broker and one tritonserver per session.

Each test gets fresh topics and a fresh consumer group (``stack_settings``),
and starts the workers it needs with ``workers``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.settings import Settings
from ops.embedded import KafkaBroker, TritonProcess, create_topics, free_port, start_broker, start_triton
from ops.stack import WorkerProcess, copy_model_repository, start_worker, worker_settings

REPO = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = REPO / "model_repository"


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def broker(work_dir: Path) -> Iterator[KafkaBroker]:
    process = start_broker(free_port(), work_dir)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def model_repository(work_dir: Path) -> Path:
    return copy_model_repository(MODEL_REPOSITORY, work_dir)


@pytest.fixture(scope="session")
def triton(work_dir: Path, model_repository: Path) -> Iterator[TritonProcess]:
    process = start_triton(
        model_repository,
        work_dir,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
    )
    yield process
    process.stop()


@pytest.fixture
def stack_settings(broker: KafkaBroker, triton: TritonProcess, tmp_path: Path) -> Settings:
    """Settings naming fresh topics (created, 4 partitions) and a fresh group."""
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka={
            "bootstrap_servers": broker.bootstrap,
            "group_id": f"it-{tag}",
            "session_timeout_s": 6.0,
            "heartbeat_interval_s": 0.5,
        },
        topics={"events": f"ev-{tag}", "predictions": f"pred-{tag}", "dlq": f"dlq-{tag}", "partitions": 4},
        triton={"url": triton.grpc_url, "http_url": triton.http_url},
        drift={"reference_dir": MODEL_REPOSITORY},  # drift windows on, as in production
        worker_name=f"w-{tag}",
        data_dir=tmp_path / "data",
    )
    t = settings.topics
    create_topics(broker.bootstrap, {t.events: 4, t.predictions: 4, t.dlq: 4})
    return settings


StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[StartWorker]:
    """``start(settings) -> WorkerProcess``, ready; every worker is stopped after the test."""
    started: list[WorkerProcess] = []

    def start(settings: Settings, wait: bool = True) -> WorkerProcess:
        ws = worker_settings(settings, len(started) + 1, tmp_path)
        worker = start_worker(ws, tmp_path, ws.worker_name)
        started.append(worker)
        if wait:
            worker.wait_ready(timeout=180)
        return worker

    yield start
    for worker in started:
        worker.stop()
