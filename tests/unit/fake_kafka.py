"""In-memory stand-ins for confluent_kafka's Consumer and Producer (what ops/replay.py uses).

Install them with :func:`install`; each counts what it handed out or was given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

Headers = list[tuple[str, bytes]]


@dataclass
class FakeMessage:
    """One record as a confluent_kafka Message shows it."""

    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None = b"k"
    _value: bytes | None = b"{}"
    _headers: list[tuple[str, bytes | None]] | None = None
    _timestamp: tuple[int, int] = (1, 1_700_000_000_000)  # (TIMESTAMP_CREATE_TIME, ms)

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return self._timestamp


@dataclass
class FakeBroker:
    """Topics (one partition each) and what clients did with them."""

    topics: dict[str, list[FakeMessage]] = field(default_factory=dict)
    handed_out: int = 0  # messages consumers returned to the application
    produced: list[tuple[str, bytes | None, bytes | None, Headers]] = field(default_factory=list)

    def append(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers) -> None:
        log = self.topics.setdefault(topic, [])
        log.append(FakeMessage(topic, 0, len(log), key, value, headers))


class FakeConsumer:
    """Reads the broker's topics from the start of what it is assigned."""

    def __init__(self, broker: FakeBroker, config: dict[str, Any]) -> None:
        self.broker = broker
        self.config = config
        self.queue: list[FakeMessage] = []

    def list_topics(self, topic: str, timeout: float = -1) -> Any:
        if topic not in self.broker.topics:
            return SimpleNamespace(topics={})
        return SimpleNamespace(topics={topic: SimpleNamespace(partitions={0: None}, error=None)})

    def get_watermark_offsets(self, tp: Any, timeout: float = -1, cached: bool = False) -> tuple[int, int]:
        return 0, len(self.broker.topics[tp.topic])

    def assign(self, partitions: list[Any]) -> None:
        self.queue = [m for tp in partitions for m in self.broker.topics.get(tp.topic, [])]

    def _take(self, n: int) -> list[FakeMessage]:
        taken, self.queue = self.queue[:n], self.queue[n:]
        self.broker.handed_out += len(taken)
        return taken

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        return self._take(num_messages)

    def poll(self, timeout: float = -1) -> FakeMessage | None:
        taken = self._take(1)
        return taken[0] if taken else None

    def pause(self, partitions: list[Any]) -> None:
        paused = {(tp.topic, tp.partition) for tp in partitions}
        self.queue = [m for m in self.queue if (m.topic(), m.partition()) not in paused]

    def consumer_group_metadata(self) -> str:
        return "group-metadata"

    def close(self) -> None:
        self.queue = []


class FakeProducer:
    """Appends to the broker's topics; every delivery succeeds at flush."""

    def __init__(self, broker: FakeBroker, config: dict[str, Any]) -> None:
        self.broker = broker
        self.pending: list[Callable[[Any, Any], None]] = []

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: Any = None,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        self.broker.produced.append((topic, key, value, list(headers or [])))
        self.broker.append(topic, key, value, list(headers or []))
        if on_delivery is not None:
            self.pending.append(on_delivery)

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = -1) -> int:
        for callback in self.pending:
            callback(None, None)
        self.pending = []
        return 0


def install(monkeypatch: pytest.MonkeyPatch, broker: FakeBroker) -> None:
    """Make ops.replay use ``broker`` instead of a real one."""
    import ops.replay
    import streams.producer

    monkeypatch.setattr(ops.replay, "Consumer", lambda config: FakeConsumer(broker, config))
    monkeypatch.setattr(streams.producer, "Producer", lambda config: FakeProducer(broker, config))
