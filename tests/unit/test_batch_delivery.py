"""Batch delivery from Faust's consumer to the pipeline (streams/app.py), without a broker: a fake
consumer (streams.transport.DeliveryConsumer) instead of Faust's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from engine.records import RawRecord
from streams.app import batch_handler, chunked, to_raw
from streams.transport import note_gaps


@dataclass
class Rec:
    """The fields of an aiokafka ConsumerRecord that delivery reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = b"k"
    value: bytes | None = b"{}"
    timestamp: int = 1_700_000_000_000
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass
class FakeConsumer:
    """A streams.transport.DeliveryConsumer that records what is handed out and acked."""

    acked: list[tuple[TP, list[int]]] = field(default_factory=list)
    in_hand: int = 0

    def hand_out(self, n: int) -> None:
        self.in_hand += n

    def ack_offsets(self, tp: TP, offsets: Iterable[int]) -> None:
        done = list(offsets)
        self.acked.append((tp, done))
        self.in_hand -= len(done)


def recs(tp: TP, start: int, n: int) -> list[Rec]:
    return [Rec(tp.topic, tp.partition, o) for o in range(start, start + n)]


async def test_a_fetched_batch_reaches_the_pipeline_in_chunks_of_the_batch_size() -> None:
    chunks: list[list[RawRecord]] = []

    async def submit(records: Sequence[RawRecord]) -> None:
        chunks.append(list(records))

    async def get_submit() -> Any:
        return submit

    consumer = FakeConsumer()
    a, b = TP("events", 0), TP("events", 1)
    handle = batch_handler(lambda: consumer, get_submit, chunk=4)
    await handle([(a, recs(a, 10, 6)), (b, recs(b, 0, 3))])
    assert [len(c) for c in chunks] == [4, 4, 1]
    flat = [r.source for c in chunks for r in c]
    assert [(s.partition, s.offset) for s in flat] == [(0, o) for o in range(10, 16)] + [
        (1, 0),
        (1, 1),
        (1, 2),
    ]


async def test_a_partitions_offsets_are_acked_only_when_all_its_records_are_done() -> None:
    chunks: list[RawRecord] = []

    async def submit(records: Sequence[RawRecord]) -> None:
        chunks.extend(records)

    async def get_submit() -> Any:
        return submit

    consumer = FakeConsumer()
    a, b = TP("events", 0), TP("events", 1)
    await batch_handler(lambda: consumer, get_submit, chunk=100)([(a, recs(a, 5, 3)), (b, recs(b, 7, 2))])
    by_partition = {p: [r for r in chunks if r.source.partition == p] for p in (0, 1)}
    for r in by_partition[0][:2] + by_partition[1]:
        r.completion.done()
    assert consumer.acked == [(b, [7, 8])]  # partition 0 still has a record in flight
    by_partition[0][2].completion.done()
    assert consumer.acked == [(b, [7, 8]), (a, [5, 6, 7])]


def test_to_raw_keeps_key_value_headers_and_timestamp() -> None:
    done: list[int] = []
    from engine.records import Completion

    completion = Completion(2, lambda: done.append(1))
    records = [
        Rec("events", 3, 42, key=None, headers=[("traceparent", b"00-abc"), ("empty", None)]),  # type: ignore[list-item]
        Rec("events", 3, 43, timestamp=-1),
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

    consumer = FakeConsumer()
    a = TP("events", 0)
    asyncio.run(batch_handler(lambda: consumer, get_submit, chunk=8)([(a, recs(a, 0, 1))]))  # type: ignore[arg-type]  # a coroutine, typed Awaitable
    assert order == ["built", "submit"]


async def test_offsets_the_broker_skipped_are_noted_as_gaps_so_commits_can_pass_them() -> None:
    calls: list[tuple[int, int]] = []

    async def add_gap(tp: TP, first: int, last: int) -> None:
        calls.append((first, last))

    tp = TP("events", 0)
    batch = [Rec("events", 0, o) for o in (10, 11, 14, 15, 17)]
    await note_gaps(add_gap, tp, 8, batch)
    assert calls == [(9, 9), (12, 13), (16, 16)]  # only the missing offsets, both ends included
    calls.clear()
    await note_gaps(add_gap, tp, None, batch[:2])
    assert calls == []  # nothing read yet on this partition: no gap before the first record
    consecutive = [Rec("events", 0, o) for o in range(20, 25)]
    await note_gaps(add_gap, tp, 19, consecutive)
    assert calls == []  # right after the last offset read, no hole: the usual case
    await note_gaps(add_gap, tp, 17, consecutive)
    assert calls == [(18, 19)]  # consecutive records, but a hole before the first


def test_chunks_keep_offset_order_and_split_a_partition_across_chunks() -> None:
    a, b = TP("events", 0), TP("events", 1)
    parts = list(chunked([(a, recs(a, 0, 5)), (b, recs(b, 0, 4))], 4))
    shape = [[(tp.partition, [r.offset for r in rs]) for tp, rs in part] for part in parts]
    assert shape == [[(0, [0, 1, 2, 3])], [(0, [4]), (1, [0, 1, 2])], [(1, [3])]]
    assert list(chunked([], 4)) == []


async def test_a_handler_cancelled_mid_batch_hands_out_whole_chunks_and_acks_all_it_handed_out() -> None:
    """A rebalance or stop cancels the fetch task while the pipeline is full: the chunk being
    submitted still arrives whole, later chunks are never handed out, so the records in hand
    (what a revoke waits for) all complete. Before, the whole batch was counted up front and a
    worker stopped under load waited for records that never reached the pipeline."""
    accepted: list[RawRecord] = []
    capacity = asyncio.Event()

    async def submit(records: Sequence[RawRecord]) -> None:
        accepted.extend(records)  # the pipeline takes the chunk, then waits for room
        await capacity.wait()

    async def get_submit() -> Any:
        return submit

    consumer = FakeConsumer()
    a, b = TP("events", 0), TP("events", 1)
    handle = batch_handler(lambda: consumer, get_submit, chunk=4)
    task = asyncio.ensure_future(handle([(a, recs(a, 0, 6)), (b, recs(b, 0, 6))]))
    await asyncio.sleep(0.01)  # the first chunk is in, waiting for capacity
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert [r.source.offset for r in accepted] == [0, 1, 2, 3]
    assert consumer.in_hand == 4  # only what reached the pipeline
    for r in accepted:
        r.completion.done()
    assert consumer.acked == [(a, [0, 1, 2, 3])] and consumer.in_hand == 0
    capacity.set()
    await asyncio.sleep(0)
    assert len(accepted) == 4  # nothing more was handed out after the cancel
