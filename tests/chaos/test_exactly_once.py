"""Exactly-once workers (``processing_guarantee=exactly_once``) under the at-least-once faults.

The same faults as the at-least-once chaos tests - a worker killed (SIGKILL) and restarted, the
broker killed and restarted on its data, the broker frozen (SIGSTOP) for 20 s, Triton killed for
longer than the transaction timeout - with a ``read_committed`` reader counting: every id must be
answered exactly once (0 lost, 0 duplicates, 0 dead-lettered). What aborted transactions wrote
is in the topics, but a ``read_committed`` reader never sees it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.settings import Settings
from ops.embedded import KafkaBroker, TritonProcess
from tests.chaos.conftest import StartTriton, chaos_settings, create_chaos_topics
from tests.chaos.harness import (
    Accounting,
    SteadyProducer,
    account,
    caught_up_at,
    longest_stall,
    scrape,
    write_report,
)
from tests.chaos.test_broker_outage import kill_and_restart, stop_and_continue
from tests.integration.conftest import StartWorker, WorkerProcess

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

EVENTS = 20_000
RATE = 1_000  # events/s: the broker, Triton, two workers and this producer share two cores
EXACTLY_ONCE = {"processing_guarantee": "exactly_once"}


def _settings(bootstrap: str, triton: TritonProcess, tmp_path: Path, **kafka: object) -> Settings:
    settings = chaos_settings(bootstrap, triton, tmp_path, kafka=EXACTLY_ONCE | kafka)
    create_chaos_topics(bootstrap, settings)
    return settings


def _producer(bootstrap: str, settings: Settings, name: str) -> SteadyProducer:
    return SteadyProducer(
        bootstrap,
        settings.topics.events,
        count=EVENTS,
        rate=RATE,
        prefix=name,
        client_config={"enable.idempotence": "true"},  # every input record exists exactly once
    )


def _transactions(group: list[WorkerProcess]) -> dict[str, float]:
    """Transactions committed and aborted so far by the live workers (from their /metrics)."""
    samples = [scrape(w.metrics_url) for w in group if w.process.alive]
    return {
        key: sum(s.get(f"sie_{key}_total", 0.0) for s in samples)
        for key in ("transactions", "transaction_aborts")
    }


def _check(name: str, acc: Accounting, group: list[WorkerProcess], since: float, extra: dict) -> None:
    figures = (
        acc.figures()
        | {
            "rate_per_s": RATE,
            "reader": "read_committed",
            "longest_stall_s": longest_stall(acc, since - 1.0),
            "workers_alive": [w.process.alive for w in group],
        }
        | _transactions(group)
        | extra
    )
    write_report(f"exactly_once_{name}", figures)
    assert acc.lost == 0, acc.missing_sample
    assert acc.duplicates == 0, acc.duplicate_ids[:5]
    assert acc.dead_lettered == 0, acc.dlq_reasons
    assert all(w.process.alive for w in group), [w.process.log_tail() for w in group]


def test_exactly_once_worker_killed_then_restarted_answers_every_event_once(
    own_triton: StartTriton, broker: KafkaBroker, workers: StartWorker, tmp_path: Path
) -> None:
    settings = _settings(broker.bootstrap, own_triton(), tmp_path)
    group = [workers(settings), workers(settings)]
    producer = _producer(broker.bootstrap, settings, "eos_wk")
    producer.start()
    producer.wait_sent(0.3)
    killed_at = time.time()
    group[0].process.kill()
    producer.wait_sent(0.6)
    restarted_at = time.time()
    group[0].process.start()  # the same transactional.id: fences what the killed process left open
    group[0].wait_ready(timeout=120)
    producer.finish()
    acc = account(broker.bootstrap, settings.topics.predictions, settings.topics.dlq, producer.ids)
    extra = {
        "killed_to_restarted_s": round(restarted_at - killed_at, 3),
        "caught_up_after_kill_s": caught_up_at(acc, producer.sent_at, killed_at),
    }
    _check("worker_kill", acc, group, killed_at, extra)


def _broker_fault(
    broker: KafkaBroker,
    own_triton: StartTriton,
    workers: StartWorker,
    tmp_path: Path,
    fault: Callable[[KafkaBroker], object],
    name: str,
) -> None:
    settings = _settings(broker.bootstrap, own_triton(), tmp_path)
    group = [workers(settings), workers(settings)]
    producer = _producer(broker.bootstrap, settings, f"eos_{name}")
    producer.start()
    producer.wait_sent(0.3)
    down_at = time.time()
    fault(broker)
    back_at = time.time()
    producer.finish(timeout=300)
    acc = account(
        broker.bootstrap, settings.topics.predictions, settings.topics.dlq, producer.ids, timeout=300
    )
    extra = {
        "broker_down_s": round(back_at - down_at, 3),
        "caught_up_after_back_s": caught_up_at(acc, producer.sent_at, back_at),
    }
    _check(name, acc, group, down_at, extra)


def test_exactly_once_broker_killed_and_restarted_answers_every_event_once(
    own_broker: KafkaBroker, own_triton: StartTriton, workers: StartWorker, tmp_path: Path
) -> None:
    _broker_fault(own_broker, own_triton, workers, tmp_path, kill_and_restart, "broker_kill")


def test_exactly_once_broker_frozen_for_20_seconds_answers_every_event_once(
    own_broker: KafkaBroker, own_triton: StartTriton, workers: StartWorker, tmp_path: Path
) -> None:
    _broker_fault(own_broker, own_triton, workers, tmp_path, stop_and_continue, "broker_sigstop")


def test_exactly_once_triton_killed_past_the_transaction_timeout_answers_every_event_once(
    own_triton: StartTriton, broker: KafkaBroker, workers: StartWorker, tmp_path: Path
) -> None:
    """Triton down 15 s, longer than the 12 s transaction timeout: the worker aborts its open
    transaction after 4 s of a stalled pipeline (before the broker would, fencing it), and
    processes its records again once Triton is back."""
    triton = own_triton()
    settings = _settings(broker.bootstrap, triton, tmp_path, transaction_timeout_s=12.0)
    group = [workers(settings)]
    producer = _producer(broker.bootstrap, settings, "eos_tk")
    producer.start()
    producer.wait_sent(0.3)
    killed_at = time.time()
    triton.process.kill()
    time.sleep(15.0)
    triton.process.start()
    triton.process.wait_ready(triton.ready, timeout=180)
    back_at = time.time()
    producer.finish()
    acc = account(broker.bootstrap, settings.topics.predictions, settings.topics.dlq, producer.ids)
    extra = {
        "triton_down_s": round(back_at - killed_at, 3),
        "caught_up_after_back_s": caught_up_at(acc, producer.sent_at, back_at),
    }
    _check("triton_kill", acc, group, killed_at, extra)
    assert "transaction aborted (pipeline_stalled)" in group[0].process.log_path.read_text(errors="replace")
