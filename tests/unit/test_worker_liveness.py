"""A worker that cannot go on says so: /healthz 503 with the reason, not ready, a non-zero exit."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from prometheus_client import CollectorRegistry

import ops.worker as worker_module
from engine.health import FAILED_EXIT_CODE, Liveness
from engine.settings import Settings
from engine.testing import ScriptedBackend
from observability.server import make_app, with_liveness
from ops.process_stop import ProcessStopper
from tests.unit.poison_support import MODELS


def _healthz(liveness: Liveness, path: str = "/healthz") -> tuple[int, dict[str, Any]]:
    app = with_liveness(make_app(CollectorRegistry(), lambda: (True, {})), liveness)
    code, body = _call(app, path)
    return code, json.loads(body) if body.startswith(b"{") else {}


def _call(app: Any, path: str) -> tuple[int, bytes]:
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        captured["status"], captured["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return int(captured["status"].split()[0]), body


def test_healthz_answers_503_with_the_reason_once_the_worker_failed() -> None:
    liveness = Liveness()
    assert _healthz(liveness) == (200, {"status": "alive"})
    liveness.fail("task pipeline-emitter ended: RuntimeError: boom")
    assert _healthz(liveness) == (
        503,
        {"status": "failed", "reason": "task pipeline-emitter ended: RuntimeError: boom"},
    )
    assert _healthz(liveness, "/readyz")[0] == 200, "other paths are the wrapped app's"
    assert _healthz(liveness, "/metrics")[0] == 200


def test_only_the_first_failure_is_kept_and_the_process_is_stopped_once() -> None:
    stops: list[str] = []
    liveness = Liveness(on_fail=stops.append)
    liveness.fail("first")
    liveness.fail("second")
    assert liveness.failure == "first" and stops == ["first"] and not liveness.alive


def test_a_failed_worker_exits_non_zero_and_a_healthy_one_as_it_was_told() -> None:
    liveness = Liveness()
    assert liveness.exit_code(0) == 0 and liveness.exit_code(None) is None
    liveness.fail("producer gave up")
    assert liveness.exit_code(0) == FAILED_EXIT_CODE != 0


def test_stopping_a_failed_worker_sends_sigterm_then_exits_hard_if_the_stop_hangs() -> None:
    kills: list[tuple[int, int]] = []
    exited = threading.Event()
    codes: list[int] = []

    def hard_exit(code: int) -> None:
        codes.append(code)
        exited.set()

    stopper = ProcessStopper(
        grace_s=0.05, kill=lambda pid, sig: kills.append((pid, sig)), hard_exit=hard_exit
    )
    stopper("boom")
    stopper("again")
    assert kills == [(os.getpid(), signal.SIGTERM)]
    assert exited.wait(5) and codes == [FAILED_EXIT_CODE]


class _FakeTriton(ScriptedBackend):
    def __init__(self, settings: Any) -> None:
        super().__init__(models=MODELS)


class _RecordingSink:
    created: list[dict[str, Any]] = []

    def __init__(self, config: Any, **kwargs: Any) -> None:
        _RecordingSink.created.append(kwargs)

    async def send(self, records: Any) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def close(self, timeout: float = 10.0) -> None:
        return None


async def test_a_dead_pipeline_task_or_a_refused_output_makes_the_worker_unhealthy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "TritonBackend", _FakeTriton)
    monkeypatch.setattr(worker_module, "KafkaSink", _RecordingSink)
    _RecordingSink.created = []
    stops: list[str] = []
    worker = worker_module.Worker(
        Settings(data_dir=tmp_path, triton={"default_model": "m"}), stop_process=stops.append
    )
    pipeline = await worker._build()

    sink_options = _RecordingSink.created[0]
    sink_options["on_rejected"]("events.dlq", "MSG_SIZE_TOO_LARGE")
    sample = worker.registry.get_sample_value(
        "sie_producer_permanent_errors_total", {"topic": "events.dlq", "code": "MSG_SIZE_TOO_LARGE"}
    )
    assert sample == 1.0
    assert worker.liveness.alive and worker.readiness()[1].get("failure") is None

    async def broken_get() -> Any:
        raise RuntimeError("queue broke")

    emitter = pipeline._emitter
    assert emitter is not None and not emitter.done()
    pipeline._fifo.get = broken_get  # type: ignore[method-assign]  # before the emitter first runs
    await asyncio.sleep(0.05)
    assert emitter.done() and not worker.liveness.alive
    assert stops == [worker.liveness.failure] and "pipeline-emitter" in stops[0]
    ready, details = worker.readiness()
    assert not ready and "queue broke" in details["failure"]

    sink_options["on_fatal"]("Kafka refused 1 outputs for good")
    assert stops == [worker.liveness.failure], "the first failure wins; the process is stopped once"
    await pipeline.stop(timeout=0)
