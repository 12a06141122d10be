"""streams/producer.py: a full local queue is waited out, never a lost record."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streams.producer import produce_waiting, produce_waiting_async


class QueueFull:
    """A producer whose local queue is full for the first ``full`` calls of ``produce``."""

    def __init__(self, full: int, error: Exception | None = None) -> None:
        self.full, self.error = full, error
        self.produced: list[tuple[Any, ...]] = []
        self.polls: list[float] = []

    def produce(self, topic: str, **kw: Any) -> None:
        if self.error is not None:
            raise self.error
        if self.full > 0:
            self.full -= 1
            raise BufferError("Local: Queue full")
        self.produced.append((topic, kw["value"], kw["key"], kw["headers"], kw["on_delivery"]))

    def poll(self, timeout: float) -> int:
        self.polls.append(timeout)
        return 0


def test_produce_waiting_polls_while_the_queue_is_full_then_produces_once() -> None:
    producer = QueueFull(full=3)
    produce_waiting(producer, "t", b"v", b"k", [("h", b"1")], print, poll_s=0.01)  # type: ignore[arg-type]
    assert producer.produced == [("t", b"v", b"k", [("h", b"1")], print)]
    assert producer.polls == [0.01, 0.01, 0.01]


def test_produce_waiting_async_serves_deliveries_without_blocking() -> None:
    producer = QueueFull(full=2)
    asyncio.run(produce_waiting_async(producer, "t", b"v", pause_s=0.001))  # type: ignore[arg-type]
    assert producer.produced == [("t", b"v", None, None, None)]
    assert producer.polls == [0, 0]


@pytest.mark.parametrize("sync", [True, False])
def test_other_errors_reach_the_caller(sync: bool) -> None:
    producer = QueueFull(full=0, error=ValueError("bad header"))
    with pytest.raises(ValueError, match="bad header"):
        if sync:
            produce_waiting(producer, "t", b"v")  # type: ignore[arg-type]
        else:
            asyncio.run(produce_waiting_async(producer, "t", b"v"))  # type: ignore[arg-type]
