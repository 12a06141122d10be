"""Batch delivery from the librdkafka driver to the pipeline (streams/app.py), without a broker: a
fake consumer (streams.app.DeliveryConsumer) that notes chunks in real engine.positions.Positions."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.positions import Positions
from engine.records import Completion, RawRecord
from streams.app import batch_handler, chunked, to_raw
from tests.unit.fake_kafka import FakeMessage

TP0, TP1 = ("events", 0), ("events", 1)


@dataclass
class FakeConsumer:
    """A DeliveryConsumer on real Positions; ``revoking`` partitions are skipped."""

    positions: Positions = field(default_factory=Positions)
    revoking: set[tuple[str, int]] = field(default_factory=set)

    def hand_out(self, tp: tuple[str, int], messages: Sequence[FakeMessage]) -> Any:
        part = self.positions.get(tp)
        if part is None or tp in self.revoking:
            return None
        chunk = part.hand_out(messages[0].offset(), messages[-1].offset())
        return self.positions.finisher(tp, chunk), messages

    async def admit(self) -> None:
        """Hand-outs are never stopped here."""


def msgs(tp: tuple[str, int], start: int, n: int) -> list[FakeMessage]:
    return [FakeMessage(tp[0], tp[1], o) for o in range(start, start + n)]


def consumer_at(**starts: int) -> FakeConsumer:
    consumer = FakeConsumer()
    for name, start in starts.items():
        consumer.positions.assign(("events", int(name[1:])), start)
    return consumer


def submit_into(sink: list[list[RawRecord]]) -> Any:
    async def submit(records: Sequence[RawRecord]) -> None:
        sink.append(list(records))

    async def get_submit() -> Any:
        return submit

    return get_submit


async def test_a_fetched_batch_reaches_the_pipeline_in_chunks_of_the_batch_size() -> None:
    chunks: list[list[RawRecord]] = []
    consumer = consumer_at(p0=10, p1=0)
    handle = batch_handler(lambda: consumer, submit_into(chunks), chunk=4)
    await handle([(TP0, msgs(TP0, 10, 6)), (TP1, msgs(TP1, 0, 3))])
    assert [len(c) for c in chunks] == [4, 4, 1]
    flat = [r.source for c in chunks for r in c]
    assert [(s.partition, s.offset) for s in flat] == [(0, o) for o in range(10, 16)] + [
        (1, 0),
        (1, 1),
        (1, 2),
    ]


async def test_a_partitions_position_moves_only_when_all_its_records_are_answered() -> None:
    chunks: list[list[RawRecord]] = []
    consumer = consumer_at(p0=5, p1=7)
    await batch_handler(lambda: consumer, submit_into(chunks), chunk=100)(
        [(TP0, msgs(TP0, 5, 3)), (TP1, msgs(TP1, 7, 2))]
    )
    records = [r for c in chunks for r in c]
    by_partition = {p: [r for r in records if r.source.partition == p] for p in (0, 1)}
    for r in by_partition[0][:2] + by_partition[1]:
        r.completion.done()
    assert consumer.positions.to_commit() == {TP1: 9}  # partition 0 still has a record in flight
    by_partition[0][2].completion.done()
    assert consumer.positions.to_commit() == {TP0: 8, TP1: 9}


async def test_records_of_a_partition_being_revoked_are_not_handed_out() -> None:
    chunks: list[list[RawRecord]] = []
    consumer = consumer_at(p0=0, p1=0)
    consumer.revoking.add(TP1)
    await batch_handler(lambda: consumer, submit_into(chunks), chunk=100)(
        [(TP0, msgs(TP0, 0, 2)), (TP1, msgs(TP1, 0, 2))]
    )
    assert [(r.source.partition, r.source.offset) for c in chunks for r in c] == [(0, 0), (0, 1)]
    assert consumer.positions.in_flight([TP1]) == 0 and consumer.positions.in_flight([TP0]) == 2


def test_to_raw_keeps_key_value_headers_and_timestamp() -> None:
    done: list[int] = []
    completion = Completion(2, lambda: done.append(1))
    records = [
        FakeMessage("events", 3, 42, _key=None, _headers=[("traceparent", b"00-abc"), ("empty", None)]),
        FakeMessage("events", 3, 43, _timestamp=(0, -1)),  # TIMESTAMP_NOT_AVAILABLE
    ]
    raw = to_raw(records, completion, now=12.5)
    assert raw[0].key is None and raw[0].value == b"{}" and raw[0].received_at == 12.5
    assert raw[0].headers == (("traceparent", b"00-abc"), ("empty", b""))
    assert raw[0].source.timestamp_ms == 1_700_000_000_000 and raw[1].source.timestamp_ms is None
    assert (raw[1].source.topic, raw[1].source.partition, raw[1].source.offset) == ("events", 3, 43)
    assert raw[0].completion is raw[1].completion is completion


def test_handler_waits_for_the_pipeline_before_the_first_chunk() -> None:
    order: list[str] = []

    async def submit(records: Sequence[RawRecord]) -> None:
        order.append("submit")

    async def get_submit() -> Any:
        await asyncio.sleep(0.01)
        order.append("built")
        return submit

    consumer = consumer_at(p0=0)
    asyncio.run(batch_handler(lambda: consumer, get_submit, chunk=8)([(TP0, msgs(TP0, 0, 1))]))  # type: ignore[arg-type]
    assert order == ["built", "submit"]


def test_chunks_keep_offset_order_and_split_a_partition_across_chunks() -> None:
    parts = list(chunked([(TP0, msgs(TP0, 0, 5)), (TP1, msgs(TP1, 0, 4))], 4))
    shape = [[(tp[1], [m.offset() for m in ms]) for tp, ms in part] for part in parts]
    assert shape == [[(0, [0, 1, 2, 3])], [(0, [4]), (1, [0, 1, 2])], [(1, [3])]]
    assert list(chunked([], 4)) == []


async def test_a_handler_cancelled_mid_batch_hands_out_whole_chunks_and_commits_only_those() -> None:
    """A stop cancels the fetch task while the pipeline is full: the chunk being submitted still
    arrives whole, later chunks are never handed out, so the records in flight (what the stop
    waits for) all complete and nothing past them is committed."""
    accepted: list[RawRecord] = []
    capacity = asyncio.Event()

    async def submit(records: Sequence[RawRecord]) -> None:
        accepted.extend(records)  # the pipeline takes the chunk, then waits for room
        await capacity.wait()

    async def get_submit() -> Any:
        return submit

    consumer = consumer_at(p0=0, p1=0)
    handle = batch_handler(lambda: consumer, get_submit, chunk=4)
    task = asyncio.ensure_future(handle([(TP0, msgs(TP0, 0, 6)), (TP1, msgs(TP1, 0, 6))]))
    await asyncio.sleep(0.01)  # the first chunk is in, waiting for capacity
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert [r.source.offset for r in accepted] == [0, 1, 2, 3]
    assert consumer.positions.in_flight() == 4  # only what reached the pipeline
    for r in accepted:
        r.completion.done()
    assert consumer.positions.to_commit() == {TP0: 4} and consumer.positions.in_flight() == 0
    capacity.set()
    await asyncio.sleep(0)
    assert len(accepted) == 4  # nothing more was handed out after the cancel
