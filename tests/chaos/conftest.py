"""Chaos fixtures: the session broker of the integration tests, and a tritonserver per test.

The broker (``broker``), its ``work_dir`` and the ``workers`` factory are the
integration suite's fixtures, imported so both suites share their names. Each
chaos test gets its OWN tritonserver on a private copy of the model
repository (``own_triton``), because the tests kill it or make a model slow.
"""

from __future__ import annotations

import os
import re
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.settings import Settings
from ops.embedded import KafkaBroker, TritonProcess, create_topics, free_port, start_broker, start_triton
from ops.stack import copy_model_repository
from tests.integration.conftest import MODEL_REPOSITORY, broker, work_dir, workers  # noqa: F401

StartTriton = Callable[..., TritonProcess]


def make_slow(model_dir: Path, sleep_ms: int) -> None:
    """Add the ``sleep_ms_per_batch`` parameter to a model's config.pbtxt (see mlp_backend.py)."""
    config = model_dir / "config.pbtxt"
    text = re.sub(r"\nparameters \{.*?\n\}\n", "\n", config.read_text(), flags=re.S)
    text += f'\nparameters {{\n  key: "sleep_ms_per_batch"\n  value: {{ string_value: "{sleep_ms}" }}\n}}\n'
    config.write_text(text)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    """A broker of the test's own (the tests that kill or freeze it)."""
    own = start_broker(free_port(), tmp_path / "kafka")
    yield own
    own.stop()


@pytest.fixture
def own_triton(tmp_path: Path) -> Iterator[StartTriton]:
    """``start(models=None, sleep_ms=None) -> TritonProcess`` on a private model repository.

    ``sleep_ms`` makes every given model sleep that long per batch. Every
    server started is stopped after the test (whatever the test did to it).
    """
    started: list[TritonProcess] = []

    def start(models: list[str] | None = None, sleep_ms: int | None = None) -> TritonProcess:
        repo = copy_model_repository(MODEL_REPOSITORY, tmp_path / f"triton-{len(started)}")
        if sleep_ms:
            for name in models or [p.parent.name for p in repo.glob("*/config.pbtxt")]:
                make_slow(repo / name, sleep_ms)
        triton = start_triton(
            repo,
            tmp_path / f"triton-{len(started)}",
            http_port=free_port(),
            grpc_port=free_port(),
            metrics_port=free_port(),
            models=models,
            timeout=180,
        )
        started.append(triton)
        return triton

    yield start
    for triton in started:
        triton.stop()
    kill_leftovers(tmp_path)


def kill_leftovers(directory: Path) -> None:
    """SIGKILL processes running from ``directory``.

    After ``kill -9`` of tritonserver its python-backend stubs (started from
    the backend copy under this test's directory) can outlive it.
    """
    marker = str(directory).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def chaos_settings(bootstrap: str, server: TritonProcess, tmp_path: Path, /, **overrides: object) -> Settings:
    """Settings with fresh topics (4 partitions, created) and group; short session timeouts."""
    tag = uuid.uuid4().hex[:8]
    base: dict[str, object] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": f"chaos-{tag}",
            "session_timeout_s": 6.0,
            "heartbeat_interval_s": 0.5,
        },
        "topics": {"events": f"ev-{tag}", "predictions": f"pred-{tag}", "dlq": f"dlq-{tag}", "partitions": 4},
        "triton": {"url": server.grpc_url, "http_url": server.http_url, "request_timeout_s": 5.0},
        "retry": {"max_backoff_s": 1.0},
        # Chunks and batches of tens of events rather than a handful: the
        # per-batch cost dominates on two shared cores.
        "batch": {"max_delay_ms": 20.0},
        "worker_name": f"chaos-{tag}",
        "data_dir": tmp_path / "data",
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(base.get(section), dict):
            base[section] = {**base[section], **values}  # type: ignore[dict-item]
        else:
            base[section] = values
    return Settings.model_validate(base)


def create_chaos_topics(
    bootstrap: str, settings: Settings, client_config: dict[str, str] | None = None
) -> None:
    """Create the settings' three topics with 4 partitions each."""
    t = settings.topics
    create_topics(bootstrap, {t.events: 4, t.predictions: 4, t.dlq: 4}, client_config=client_config)


@pytest.fixture
def fresh_settings(broker: KafkaBroker, tmp_path: Path) -> Callable[..., Settings]:  # noqa: F811
    """``make(triton, **overrides) -> Settings`` naming fresh, created topics on the session broker."""

    def make(server: TritonProcess, /, **overrides: object) -> Settings:
        settings = chaos_settings(broker.bootstrap, server, tmp_path, **overrides)
        create_chaos_topics(broker.bootstrap, settings)
        return settings

    return make
