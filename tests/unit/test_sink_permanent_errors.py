"""KafkaSink and errors retrying cannot fix: counted, retried a bounded number of times, then loud.

Transient errors (broker down, timeouts) keep being retried without limit
(tests/unit/test_sink.py, tests/chaos/test_broker_outage.py); permanent ones
(too large, not authorised, unknown topic) are decided by librdkafka's error
code, never by its text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

import streams.producer as producer_module
import streams.sink as sink_module
from engine.records import OutRecord
from streams.sink import KafkaSink
from tests.unit.test_sink import FakeProducer

PAUSE_S = 0.01


class RefusingProducer(FakeProducer):
    """Fails deliveries to ``codes``' topics with that code (``times`` times, or always); ``raising``' topics
    make ``produce`` itself raise, as librdkafka does for a message over ``message.max.bytes``."""

    def __init__(self, conf: dict[str, Any]) -> None:
        super().__init__(conf)
        self.codes: dict[str, int] = {}
        self.times: dict[str, int] = {}
        self.raising: dict[str, int] = {}
        self.poll_error: Exception | None = None

    def produce(self, topic: str, value: bytes | None = None, key: Any = None, **kw: Any) -> None:
        if topic in self.raising:
            self.attempts[topic] += 1
            raise KafkaException(KafkaError(self.raising[topic]))
        super().produce(topic, value, key, **kw)

    def poll(self, timeout: float) -> int:
        if self.poll_error is not None:
            raise self.poll_error
        with self._lock:
            queue, self._queue = self._queue, []
        for msg, on_delivery in queue:
            code = self._failure(msg.topic())
            if code is not None:
                on_delivery(KafkaError(code), msg)
            else:
                self.delivered.append((msg.topic(), msg.value()))
                on_delivery(None, msg)
        if not queue:
            time.sleep(min(timeout, 0.002))
        return len(queue)

    def _failure(self, topic: str) -> int | None:
        if topic not in self.codes:
            return None
        if topic in self.times:
            if self.times[topic] <= 0:
                return None
            self.times[topic] -= 1
        return self.codes[topic]


@pytest.fixture
def producer(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[RefusingProducer]]:
    FakeProducer.instances = []
    monkeypatch.setattr(producer_module, "Producer", RefusingProducer)
    yield RefusingProducer


def _record(topic: str, n: int) -> OutRecord:
    return OutRecord(topic=topic, key=b"k", value=f"v{n}".encode(), headers=(("h", b"x"),))


async def _eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def _fake(producer: type[RefusingProducer]) -> RefusingProducer:
    fake = producer.instances[-1]
    assert isinstance(fake, RefusingProducer)
    return fake


async def test_a_record_kafka_refuses_for_good_is_retried_a_bounded_number_of_times_then_given_up(
    producer: type[RefusingProducer],
) -> None:
    sink = KafkaSink({}, retry_pause_s=PAUSE_S)
    fake = _fake(producer)
    fake.codes["dlq"] = KafkaError.MSG_SIZE_TOO_LARGE
    future = await sink.send([_record("out", 1), _record("dlq", 2)])
    await _eventually(future.done, timeout=3)
    await asyncio.sleep(10 * PAUSE_S)
    assert fake.attempts["dlq"] == 4, "one attempt and 3 retries, then no more"
    assert isinstance(future.exception(), Exception) and "MSG_SIZE_TOO_LARGE" in str(future.exception())
    assert fake.attempts["out"] == 1 and fake.delivered == [("out", b"v1")]
    await sink.close(timeout=0.1)


async def test_giving_up_counts_every_refusal_and_tells_the_worker_once(
    producer: type[RefusingProducer],
) -> None:
    rejected: list[tuple[str, str]] = []
    fatal: list[str] = []
    sink = KafkaSink(
        {},
        retry_pause_s=PAUSE_S,
        permanent_retries=2,
        on_rejected=lambda *a: rejected.append(a),
        on_fatal=fatal.append,
    )
    fake = _fake(producer)
    fake.codes["preds"] = KafkaError.TOPIC_AUTHORIZATION_FAILED
    future = await sink.send([_record("preds", 1), _record("preds", 2)])
    await _eventually(lambda: bool(fatal))
    assert rejected == [("preds", "TOPIC_AUTHORIZATION_FAILED")] * 6, "2 records x 3 attempts"
    assert len(fatal) == 1 and "TOPIC_AUTHORIZATION_FAILED on preds" in fatal[0]
    assert future.done() and type(future.exception()).__name__ == "OutputRejected"
    await sink.close(timeout=0.1)


async def test_a_produce_call_that_raises_is_a_failed_delivery_not_an_exception(
    producer: type[RefusingProducer],
) -> None:
    fatal: list[str] = []
    sink = KafkaSink({}, retry_pause_s=PAUSE_S, on_fatal=fatal.append)
    fake = _fake(producer)
    fake.raising["dlq"] = KafkaError.MSG_SIZE_TOO_LARGE
    future = await sink.send([_record("out", 1), _record("dlq", 2), _record("out", 3)])
    await _eventually(future.done)
    assert fake.attempts["dlq"] == 4 and sorted(v for _, v in fake.delivered) == [b"v1", b"v3"]
    assert len(fatal) == 1 and "MSG_SIZE_TOO_LARGE" in fatal[0]
    await sink.close(timeout=0.1)


@pytest.mark.parametrize(
    "code",
    [
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError.NOT_ENOUGH_REPLICAS,
    ],
)
async def test_transient_errors_are_retried_without_limit_until_delivered(
    producer: type[RefusingProducer], code: int
) -> None:
    fatal: list[str] = []
    sink = KafkaSink({}, retry_pause_s=PAUSE_S / 5, on_fatal=fatal.append)
    fake = _fake(producer)
    fake.codes["dlq"] = code
    future = await sink.send([_record("dlq", 1)])
    await _eventually(lambda: fake.attempts["dlq"] >= 12)
    assert not future.done() and fatal == []
    fake.codes.clear()
    await asyncio.wait_for(future, 5)
    assert future.exception() is None
    await sink.close()


async def test_a_refusal_that_clears_on_retry_is_delivered_without_failing(
    producer: type[RefusingProducer],
) -> None:
    fatal: list[str] = []
    sink = KafkaSink({}, retry_pause_s=PAUSE_S, on_fatal=fatal.append)
    fake = _fake(producer)
    fake.codes["dlq"], fake.times["dlq"] = KafkaError.UNKNOWN_TOPIC_OR_PART, 2  # e.g. a topic being created
    future = await sink.send([_record("dlq", 1)])
    await asyncio.wait_for(future, 5)
    assert future.exception() is None and fake.attempts["dlq"] == 3 and fatal == []
    await sink.close()


@pytest.mark.parametrize(
    ("code", "permanent"),
    [
        (KafkaError.MSG_SIZE_TOO_LARGE, True),
        (KafkaError.RECORD_LIST_TOO_LARGE, True),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, True),
        (KafkaError.CLUSTER_AUTHORIZATION_FAILED, True),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, True),
        (KafkaError._UNKNOWN_TOPIC, True),
        (KafkaError._INVALID_ARG, True),
        (KafkaError._MSG_TIMED_OUT, False),
        (KafkaError._TRANSPORT, False),
        (KafkaError._ALL_BROKERS_DOWN, False),
        (KafkaError.REQUEST_TIMED_OUT, False),
        (KafkaError.NOT_LEADER_FOR_PARTITION, False),
        (KafkaError.LEADER_NOT_AVAILABLE, False),
    ],
)
def test_permanence_is_decided_by_the_error_code_never_its_text(code: int, permanent: bool) -> None:
    misleading = "Message size too large" if not permanent else "Local: Message timed out, retry later"
    assert sink_module.is_permanent(KafkaError(code, misleading)) is permanent


def test_a_fatal_producer_error_is_permanent_whatever_its_code() -> None:
    assert sink_module.is_permanent(KafkaError(KafkaError._MSG_TIMED_OUT, "fenced", fatal=True))


async def test_a_poll_loop_that_dies_is_reported_as_fatal(producer: type[RefusingProducer]) -> None:
    fatal: list[str] = []
    sink = KafkaSink({}, retry_pause_s=PAUSE_S, on_fatal=fatal.append)
    fake = _fake(producer)
    fake.poll_error = RuntimeError("librdkafka handle destroyed")
    await sink.send([_record("out", 1)])
    await _eventually(lambda: bool(fatal))
    assert "poll loop died" in fatal[0] and "handle destroyed" in fatal[0]
