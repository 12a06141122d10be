"""The broker is unreachable when the worker starts: it logs a clear line, retries, then processes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ops.embedded import free_port, start_broker
from tests.chaos.conftest import StartTriton, chaos_settings, create_chaos_topics
from tests.chaos.harness import SteadyProducer, account, write_report
from tests.integration.conftest import StartWorker

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

WAITING_LINE = "unreachable (attempt"


def wait_for_log(read: callable, needle: str, timeout: float) -> bool:  # type: ignore[valid-type]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in read():
            return True
        time.sleep(0.2)
    return False


def test_worker_started_before_the_broker_waits_then_processes_everything(
    own_triton: StartTriton, workers: StartWorker, tmp_path: Path
) -> None:
    port = free_port()
    settings = chaos_settings(f"127.0.0.1:{port}", own_triton(), tmp_path)
    worker = workers(settings, wait=False)
    started_at = time.time()

    assert wait_for_log(worker.process.log_tail, WAITING_LINE, timeout=60), worker.process.log_tail()
    time.sleep(3.0)  # a few more failed attempts
    assert worker.process.alive, worker.process.log_tail()
    broker = start_broker(port, tmp_path / "kafka")
    try:
        broker_up_at = time.time()
        create_chaos_topics(broker.bootstrap, settings)
        worker.wait_ready(timeout=120)
        ready_at = time.time()
        log_text = worker.process.log_path.read_text(errors="replace")
        producer = SteadyProducer(broker.bootstrap, settings.topics.events, prefix="late")
        producer.start()
        producer.finish()
        t = settings.topics
        acc = account(broker.bootstrap, t.predictions, t.dlq, producer.ids)
    finally:
        worker.stop()
        broker.stop()

    waiting = [line for line in log_text.splitlines() if WAITING_LINE in line]
    figures = acc.figures() | {
        "rate_per_s": producer.rate,
        "broker_absent_s": round(broker_up_at - started_at, 3),
        "failed_attempts_logged": len(waiting),
        "ready_after_broker_up_s": round(ready_at - broker_up_at, 3),
        "first_waiting_line": waiting[0][:300] if waiting else None,
    }
    write_report("broker_late", figures)

    assert waiting and f"127.0.0.1:{port}" in waiting[0]
    assert "reachable after" in log_text
    assert acc.lost == 0, acc.missing_sample
    assert acc.dead_lettered == 0, acc.dlq_reasons
    assert acc.duplicates == 0
