"""The Apache Kafka broker fails mid-stream: SIGKILL then restart on its data, or SIGSTOP for 20 s.

Each test runs its own broker (the session broker is shared), its own
tritonserver and two workers in one group, and sends 30,000 events at a steady
rate with an idempotent producer, so every input record exists exactly once.
After the broker comes back, every id must be answered (0 lost), nothing
dead-lettered, and duplicates stay within the in-flight window: only events
the workers had in hand around the outage - consumed but not committed when
the broker went away, or caught up from the backlog while the group
rebalanced - are answered twice (at-least-once); none of the steady stream
before or after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.settings import Settings
from ops.embedded import KafkaBroker
from tests.chaos.conftest import StartTriton, chaos_settings, create_chaos_topics
from tests.chaos.harness import (
    SteadyProducer,
    account,
    caught_up_at,
    first_output_after,
    longest_stall,
    positions_read_again,
    write_report,
)
from tests.chaos.test_triton_outage import pending_bound
from tests.integration.conftest import StartWorker

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

EVENTS = 30_000
RATE = 1_000  # events/s: the broker, Triton, two workers and this producer share two cores
WORKERS = 2
KILLED_FOR_S = 5.0
STOPPED_FOR_S = 20.0
OUTAGE_LINE = "Kafka unreachable"
BACK_LINE = "Kafka reachable again"


def in_flight_window(settings: Settings, down_at: float, caught_up_at: float) -> tuple[float, float]:
    """Times between which an event's first answer may be followed by a second one.

    From two commit intervals before the outage (acknowledged, not committed
    yet) to two commit intervals plus a session timeout after the backlog was
    caught up (the rebalance that follows the outage hands uncommitted
    partitions to the group again).
    """
    kafka = settings.kafka
    slack = 2 * kafka.commit_interval_s
    return down_at - slack, caught_up_at + slack + kafka.session_timeout_s


def _run(
    broker: KafkaBroker,
    own_triton: StartTriton,
    workers: StartWorker,
    tmp_path: Path,
    outage: Callable[[KafkaBroker], tuple[float, float]],
    name: str,
) -> None:
    settings = chaos_settings(broker.bootstrap, own_triton(), tmp_path)
    create_chaos_topics(broker.bootstrap, settings)
    group = [workers(settings) for _ in range(WORKERS)]
    t = settings.topics
    producer = SteadyProducer(
        broker.bootstrap,
        t.events,
        count=EVENTS,
        rate=RATE,
        prefix=name,
        client_config={"enable.idempotence": "true"},  # survives the broker's restart without duplicates
    )
    producer.start()
    producer.wait_sent(0.3)
    down_at, back_at = outage(broker)
    producer.finish(timeout=300)
    acc = account(broker.bootstrap, t.predictions, t.dlq, producer.ids, timeout=300)
    alive = [w.process.alive for w in group]
    logs = [w.process.log_path.read_text(errors="replace") for w in group]

    caught_up = caught_up_at(acc, producer.sent_at, back_at)
    start, end = in_flight_window(settings, down_at, back_at + (caught_up or 0.0))
    outside = [i for i in acc.duplicate_ids if not start <= acc.output_at[i] <= end]
    figures = acc.figures() | {
        "rate_per_s": RATE,
        "workers": WORKERS,
        "broker_down_s": round(back_at - down_at, 3),
        "first_output_after_back_s": first_output_after(acc, back_at),
        "caught_up_after_back_s": caught_up,
        "longest_stall_s": longest_stall(acc, down_at - 1.0),
        "in_flight_window_s": round(end - start, 3),
        "duplicates_outside_window": len(outside),
        "positions_read_again": positions_read_again(logs),
        "pending_bound_per_worker": pending_bound(settings, n_models=2),
        "workers_alive": alive,
        "workers_logging_outage": sum(OUTAGE_LINE in text for text in logs),
        "workers_logging_recovery": sum(BACK_LINE in text for text in logs),
    }
    write_report(name, figures)

    assert all(alive), [w.process.log_tail() for w in group]
    assert acc.lost == 0, acc.missing_sample
    assert acc.dead_lettered == 0, acc.dlq_reasons
    assert caught_up is not None, "the workers never caught up with the backlog"
    assert not outside, f"{len(outside)} duplicates outside the in-flight window, e.g. {outside[:3]}"
    assert not figures["positions_read_again"], figures["positions_read_again"]
    assert figures["workers_logging_outage"] >= 1, logs[0][-3000:]
    assert figures["workers_logging_recovery"] >= 1, logs[0][-3000:]


def kill_and_restart(broker: KafkaBroker) -> tuple[float, float]:
    """SIGKILL the broker, start it again on its data after KILLED_FOR_S; (down_at, back_at)."""
    down_at = time.time()
    broker.kill()
    time.sleep(KILLED_FOR_S)
    broker.start(timeout=120)  # same data directory: log recovery after the unclean stop
    return down_at, time.time()


def stop_and_continue(broker: KafkaBroker) -> tuple[float, float]:
    """SIGSTOP the broker for STOPPED_FOR_S, then SIGCONT; (down_at, back_at)."""
    down_at = time.time()
    broker.pause()
    time.sleep(STOPPED_FOR_S)
    broker.resume()
    return down_at, time.time()


def test_broker_killed_and_restarted_on_its_data_loses_no_event(
    own_broker: KafkaBroker, own_triton: StartTriton, workers: StartWorker, tmp_path: Path
) -> None:
    _run(own_broker, own_triton, workers, tmp_path, kill_and_restart, "broker_kill")


def test_broker_frozen_for_20_seconds_loses_no_event(
    own_broker: KafkaBroker, own_triton: StartTriton, workers: StartWorker, tmp_path: Path
) -> None:
    _run(own_broker, own_triton, workers, tmp_path, stop_and_continue, "broker_sigstop")
