"""engine/positions.py: the committable position is the offset after the longest run of answered
chunks from the start; a commit counts only once confirmed."""

from __future__ import annotations

import random

import pytest

from engine.positions import PartitionPositions, Positions


def test_a_position_moves_only_past_chunks_answered_from_the_start() -> None:
    part = PartitionPositions(100)
    a, b, c = part.hand_out(100, 109), part.hand_out(110, 119), part.hand_out(120, 129)
    assert part.committable == 100 and part.in_flight == 30
    part.finish(b)
    assert part.committable == 100  # the chunk before it is still in flight
    part.finish(a)
    assert part.committable == 120  # a and b together
    part.finish(c)
    assert part.committable == 130 and part.in_flight == 0


def test_offsets_the_broker_skipped_are_passed_without_bookkeeping() -> None:
    part = PartitionPositions(0)
    a = part.hand_out(0, 4)
    b = part.hand_out(9, 12)  # 5..8: compacted away, or transaction markers
    part.finish(a)
    assert part.committable == 5
    part.finish(b)
    assert part.committable == 13


def test_a_failed_commit_leaves_the_committed_position_where_it_was() -> None:
    positions = Positions()
    positions.assign(("events", 0), 0)
    part = positions.get(("events", 0))
    assert part is not None
    part.finish(part.hand_out(0, 9))
    assert positions.to_commit() == {("events", 0): 10}
    # the commit failed: nothing is confirmed, so the same position is offered again
    assert positions.to_commit() == {("events", 0): 10}
    positions.committed({("events", 0): 10})
    assert positions.to_commit() == {} and part.committed == 10


def test_an_old_chunk_finished_after_a_reassignment_changes_nothing_of_the_new_one() -> None:
    positions = Positions()
    tp = ("events", 0)
    positions.assign(tp, 0)
    part = positions.get(tp)
    assert part is not None
    old = positions.finisher(tp, part.hand_out(0, 9))
    positions.revoke(tp)
    positions.assign(tp, 0)  # assigned again, from the committed offset
    old()
    assert positions.to_commit() == {} and positions.in_flight() == 0


def test_the_oldest_uncommitted_record_gives_its_timestamp_until_committed() -> None:
    part = PartitionPositions(0)
    part.finish(part.hand_out(0, 9, timestamp_s=1000.0))
    part.hand_out(10, 19, timestamp_s=1001.0)
    assert part.oldest_uncommitted_s() == 1000.0
    part.committed_to(10)
    assert part.oldest_uncommitted_s() == 1001.0


def test_handing_out_an_offset_twice_is_refused() -> None:
    part = PartitionPositions(0)
    part.hand_out(0, 9)
    with pytest.raises(ValueError, match="handed out again"):
        part.hand_out(5, 12)


async def test_waiters_are_called_once_the_condition_holds() -> None:
    positions = Positions()
    tp = ("events", 0)
    positions.assign(tp, 0)
    part = positions.get(tp)
    assert part is not None
    done = positions.finisher(tp, part.hand_out(0, 4))
    called: list[int] = []
    positions.when(lambda: positions.in_flight([tp]) == 0, lambda: called.append(1))
    assert called == []
    done()
    assert called == [1]


def test_chunks_answered_in_any_order_commit_exactly_the_answered_prefix() -> None:
    rng = random.Random(5)
    part = PartitionPositions(0)
    chunks, start = [], 0
    for _ in range(200):
        size = rng.randint(1, 20)
        start += rng.choice([0, 0, 0, 3])  # some holes
        chunks.append(part.hand_out(start, start + size - 1))
        start += size
    order = list(range(len(chunks)))
    rng.shuffle(order)
    finished: set[int] = set()
    for i in order:
        part.finish(chunks[i])
        finished.add(i)
        prefix = 0
        while prefix in finished:
            prefix += 1
        expected = chunks[prefix - 1].last + 1 if prefix else 0
        assert part.committable == expected


def test_records_of_a_partition_given_up_count_as_in_flight_until_they_are_answered() -> None:
    """Exactly-once waits for every record in the pipeline before it commits or rewinds: one of a
    partition lost meanwhile would otherwise be written into a later transaction, unaccounted."""
    positions = Positions()
    tp = ("events", 0)
    positions.assign(tp, 0)
    part = positions.get(tp)
    assert part is not None
    old = positions.finisher(tp, part.hand_out(0, 9))
    positions.revoke(tp)
    positions.assign(tp, 0)
    assert positions.in_flight([tp]) == 0  # the partition's new record owes nothing
    assert positions.in_flight() == 10  # but ten records are still in the pipeline
    old()
    old()  # a second call changes nothing
    assert positions.in_flight() == 0
