"""KafkaSink over a fake producer: failed deliveries are produced again; nothing is acked early.

If the DLQ (or the predictions topic) cannot be written, the send's future
stays pending, so the records' completions never fire, Faust never acks the
consumed messages, and no offset is committed past them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry

import streams.producer as producer_module
from engine.contract.context import DecodeContext
from engine.pipeline import Pipeline
from engine.ports import PipelineParts
from engine.records import Completion, OutRecord
from engine.retry import CircuitBreaker, Retrier
from engine.settings import BatchSettings, LimitSettings, RetrySettings, TopicSettings
from engine.testing import ScriptedBackend, model_spec, raw_record
from observability.metrics import create_metrics
from streams.sink import KafkaSink

TOPICS = TopicSettings(events="in", predictions="out", dlq="dlq")
PAUSE_S = 0.01


class FakeMessage:
    """What confluent-kafka hands a delivery callback: the produced record."""

    def __init__(self, topic: str, value: bytes | None, key: Any, headers: Any) -> None:
        self._topic, self._value, self._key, self._headers = topic, value, key, headers

    def topic(self) -> str:
        return self._topic

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> Any:
        return self._key

    def headers(self) -> Any:
        return self._headers


class FakeProducer:
    """Delivers on ``poll`` (the sink's poll thread); fails topics listed in ``failing``."""

    instances: list[FakeProducer] = []

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        self.failing: set[str] = set()
        self.attempts: Counter[str] = Counter()
        self.delivered: list[tuple[str, bytes | None]] = []
        self._queue: list[tuple[FakeMessage, Callable[..., None]]] = []
        self._lock = threading.Lock()
        FakeProducer.instances.append(self)

    def produce(self, topic: str, value: bytes | None = None, key: Any = None, **kw: Any) -> None:
        with self._lock:
            self.attempts[topic] += 1
            msg = FakeMessage(topic, value, key, kw.get("headers"))
            self._queue.append((msg, kw["on_delivery"]))

    def poll(self, timeout: float) -> int:
        with self._lock:
            queue, self._queue = self._queue, []
            failing = set(self.failing)
        for msg, on_delivery in queue:
            if msg.topic() in failing:
                on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), msg)
            else:
                self.delivered.append((msg.topic(), msg.value()))
                on_delivery(None, msg)
        if not queue:
            time.sleep(min(timeout, 0.002))
        return len(queue)

    def flush(self, timeout: float) -> int:
        self.poll(0)
        return len(self._queue)


@pytest.fixture
def producer(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeProducer]]:
    FakeProducer.instances = []
    monkeypatch.setattr(producer_module, "Producer", FakeProducer)
    yield FakeProducer


def _record(topic: str, n: int) -> OutRecord:
    return OutRecord(topic=topic, key=b"k", value=f"v{n}".encode(), headers=())


async def _eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def test_failed_deliveries_are_produced_again_until_acknowledged(
    producer: type[FakeProducer],
) -> None:
    sink = KafkaSink({}, retry_pause_s=PAUSE_S)
    fake = producer.instances[0]
    fake.failing.add("dlq")
    future = await sink.send([_record("out", 1), _record("dlq", 2), _record("out", 3)])
    await _eventually(lambda: fake.attempts["dlq"] >= 3)
    assert not future.done()

    fake.failing.clear()
    await asyncio.wait_for(future, 5)
    assert sorted(v for _, v in fake.delivered) == [b"v1", b"v2", b"v3"]
    assert fake.attempts["out"] == 2, "delivered records are not produced again"
    await sink.close()


async def test_future_of_a_permanently_failing_dlq_never_resolves(producer: type[FakeProducer]) -> None:
    sink = KafkaSink({}, retry_pause_s=PAUSE_S)
    fake = producer.instances[0]
    fake.failing.add("dlq")
    future = await sink.send([_record("dlq", 1)])
    await _eventually(lambda: fake.attempts["dlq"] >= 10)
    assert not future.done()
    assert sink.last_error is not None and "timed out" in sink.last_error.lower()
    await sink.close(timeout=0.1)
    assert not future.done()


def _pipeline(sink: KafkaSink) -> Pipeline:
    retry = RetrySettings()
    loop_clock = _LoopClock()
    parts = PipelineParts(
        decode_ctx=DecodeContext({"m": model_spec("m", 3, max_batch=64)}, "m", LimitSettings()),
        backend=ScriptedBackend(),
        retrier=Retrier(retry, loop_clock, CircuitBreaker(retry, loop_clock)),
        sink=sink,
        topics=TOPICS,
        batch=BatchSettings(max_size=8, max_delay_ms=1, max_in_flight=2),
        metrics=create_metrics(CollectorRegistry()),
    )
    return Pipeline(parts, loop_clock)


class _LoopClock:
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        return asyncio.get_running_loop().call_later(delay, callback)

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(delay)


async def test_chunk_with_an_undeliverable_dead_letter_is_never_acknowledged(
    producer: type[FakeProducer],
) -> None:
    sink = KafkaSink({}, retry_pause_s=PAUSE_S)
    fake = producer.instances[0]
    fake.failing.add("dlq")
    pipeline = _pipeline(sink)
    await pipeline.start()
    acked: list[str] = []
    first = Completion(3, lambda: acked.append("first"))
    later = Completion(2, lambda: acked.append("later"))
    good = [orjson.dumps({"id": f"e{i}", "features": [i, 1, 0]}) for i in range(4)]
    await pipeline.submit(
        [raw_record(good[0], 0, completion=first), raw_record(b"{bad", 1, completion=first)]
    )
    await pipeline.submit([raw_record(good[1], 2, completion=first)])
    await pipeline.submit(
        [raw_record(good[2], 3, completion=later), raw_record(good[3], 4, completion=later)]
    )

    await _eventually(lambda: len([t for t, _ in fake.delivered if t == "out"]) == 4)
    await _eventually(lambda: fake.attempts["dlq"] >= 5)
    # The predictions are out, but the chunk holding the dead letter is not
    # acknowledged: Faust commits only below its lowest unacknowledged offset.
    assert acked == ["later"]
    assert first.remaining == 1
    assert pipeline.undelivered == 1

    fake.failing.clear()
    await _eventually(lambda: acked == ["later", "first"])
    assert [v for t, v in fake.delivered if t == "dlq"] == [b"{bad"]
    await pipeline.stop(timeout=1)
    await sink.close()
