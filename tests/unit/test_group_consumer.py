"""streams/group_consumer.py without a broker: a scripted stand-in for confluent_kafka.Consumer.

The rules that keep committed positions right (shared/notes/broker-freeze.md): an OffsetFetch
answered with a request-level error is asked again, never read as "nothing committed";
partitions are assigned at explicit offsets; a revoke commits the answered positions before it
releases the partitions; a failed commit is not counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streams import group_consumer
from streams.consumer_types import TPKey
from streams.group_consumer import GroupConsumer
from tests.unit.fake_kafka import FakeMessage


class ScriptedConsumer:
    """Answers ``committed()`` from a script; records assign/unassign/commit calls."""

    def __init__(self, committed: list[Any], watermarks: tuple[int, int] = (0, 0)) -> None:
        self.script = committed
        self.watermarks = watermarks
        self.calls: list[tuple[str, Any]] = []
        self.commit_answer: list[TopicPartition] | Exception | None = None

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        answer = self.script.pop(0)
        self.calls.append(("committed", [(p.topic, p.partition) for p in partitions]))
        if isinstance(answer, Exception):
            raise answer
        return [
            TopicPartition(p.topic, p.partition, answer.get((p.topic, p.partition), -1001))
            for p in partitions
        ]

    def consumer_group_metadata(self) -> str:
        return "group-metadata"

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float = 0, cached: bool = False
    ) -> tuple[int, int]:
        return self.watermarks

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("assign", {(p.topic, p.partition): p.offset for p in partitions}))

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("unassign", sorted((p.topic, p.partition) for p in partitions)))

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        self.calls.append(("commit", {(p.topic, p.partition): p.offset for p in offsets}))
        if isinstance(self.commit_answer, Exception):
            raise self.commit_answer
        return self.commit_answer if self.commit_answer is not None else offsets


class Listener:
    def __init__(self, to_commit: Mapping[TPKey, int] | None = None) -> None:
        self.events: list[tuple[str, Any]] = []
        self.to_commit = dict(to_commit or {})

    async def assigned(self, starts: Mapping[TPKey, int]) -> None:
        self.events.append(("assigned", dict(starts)))

    async def revoking(self, tps: list[TPKey]) -> dict[TPKey, int]:
        self.events.append(("revoking", list(tps)))
        return self.to_commit

    async def revoked(self, tps: list[TPKey], committed: Mapping[TPKey, int]) -> None:
        self.events.append(("revoked", dict(committed)))

    async def lost(self, tps: list[TPKey]) -> None:
        self.events.append(("lost", list(tps)))


def not_coordinator() -> KafkaException:
    return KafkaException(KafkaError(KafkaError.NOT_COORDINATOR))


async def in_thread(fn: Any, *args: Any) -> None:
    """Run a rebalance callback as librdkafka would: on the consumer's thread, the loop free."""
    await asyncio.get_running_loop().run_in_executor(None, fn, *args)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_consumer.time, "sleep", lambda s: None)


async def test_a_request_level_offset_fetch_error_is_asked_again_never_taken_as_nothing_committed() -> None:
    listener = Listener()
    group = GroupConsumer({}, ["events"], listener, asyncio.get_running_loop())
    fake = ScriptedConsumer([not_coordinator(), not_coordinator(), {("events", 0): 5120, ("events", 1): 77}])
    await in_thread(group._on_assign, fake, [TopicPartition("events", 0), TopicPartition("events", 1)])
    assert [c for c, _ in fake.calls].count("committed") == 3
    assert ("assign", {("events", 0): 5120, ("events", 1): 77}) in fake.calls  # explicit offsets
    assert listener.events == [("assigned", {("events", 0): 5120, ("events", 1): 77})]
    assert group.assignment() == {("events", 0), ("events", 1)}


async def test_nothing_committed_starts_at_the_reset_position_as_an_explicit_offset() -> None:
    listener = Listener()
    loop = asyncio.get_running_loop()
    earliest = GroupConsumer({}, ["events"], listener, loop, reset="earliest")
    fake = ScriptedConsumer([{}], watermarks=(40, 900))
    await in_thread(earliest._on_assign, fake, [TopicPartition("events", 3)])
    assert ("assign", {("events", 3): 40}) in fake.calls
    latest = GroupConsumer({}, ["events"], listener, loop, reset="latest")
    fake = ScriptedConsumer([{}], watermarks=(40, 900))
    await in_thread(latest._on_assign, fake, [TopicPartition("events", 3)])
    assert ("assign", {("events", 3): 900}) in fake.calls


async def test_a_revoke_commits_the_answered_positions_before_releasing_the_partitions() -> None:
    listener = Listener(to_commit={("events", 0): 300})
    group = GroupConsumer({}, ["events"], listener, asyncio.get_running_loop())
    fake = ScriptedConsumer([{("events", 0): 100, ("events", 1): 50}])
    await in_thread(group._on_assign, fake, [TopicPartition("events", 0), TopicPartition("events", 1)])
    await in_thread(group._on_revoke, fake, [TopicPartition("events", 0)])
    order = [c for c, _ in fake.calls]
    assert order[-2:] == ["commit", "unassign"]
    assert fake.calls[-2] == ("commit", {("events", 0): 300})
    assert listener.events[-2:] == [("revoking", [("events", 0)]), ("revoked", {("events", 0): 300})]
    assert group.assignment() == {("events", 1)}


async def test_a_failed_commit_at_revoke_is_not_counted_as_committed() -> None:
    listener = Listener(to_commit={("events", 0): 300})
    group = GroupConsumer({}, ["events"], listener, asyncio.get_running_loop())
    fake = ScriptedConsumer([{("events", 0): 100}])
    await in_thread(group._on_assign, fake, [TopicPartition("events", 0)])
    fake.commit_answer = KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS))
    await in_thread(group._on_revoke, fake, [TopicPartition("events", 0)])
    assert listener.events[-1] == ("revoked", {})
    failed = TopicPartition("events", 0, 300)
    failed_error = KafkaError(KafkaError.UNKNOWN_MEMBER_ID)
    fake2 = ScriptedConsumer([{("events", 0): 100}])
    await in_thread(group._on_assign, fake2, [TopicPartition("events", 0)])
    fake2.commit_answer = [_with_error(failed, failed_error)]
    await in_thread(group._on_revoke, fake2, [TopicPartition("events", 0)])
    assert listener.events[-1] == ("revoked", {})


async def test_fetched_records_of_revoked_partitions_are_dropped_not_handed_out() -> None:
    listener = Listener()
    group = GroupConsumer({}, ["events"], listener, asyncio.get_running_loop())
    fake = ScriptedConsumer([{("events", 0): 0, ("events", 1): 0}])
    await in_thread(group._on_assign, fake, [TopicPartition("events", 0), TopicPartition("events", 1)])
    group._accept([FakeMessage("events", 0, 0), FakeMessage("events", 1, 0), FakeMessage("events", 1, 1)])
    await in_thread(group._on_revoke, fake, [TopicPartition("events", 1)])
    batch = await asyncio.wait_for(group.take(), 1)
    assert [(tp, [m.offset() for m in ms]) for tp, ms in batch] == [(("events", 0), [0])]


def _with_error(tp: TopicPartition, error: KafkaError) -> Any:
    class Answer:
        topic, partition, offset = tp.topic, tp.partition, tp.offset

    answer = Answer()
    answer.error = error  # type: ignore[attr-defined]
    return answer


@pytest.mark.timeout(20)
async def test_a_stale_wake_up_after_the_records_were_taken_does_not_spin_the_event_loop() -> None:
    """The thread schedules a wake-up with each batch; the loop may take the batch before that
    wake-up runs. The next wait must then suspend until new records come, not return at once
    forever (which froze a worker's event loop in the worker-kill chaos test)."""
    group = GroupConsumer({}, ["events"], Listener(), asyncio.get_running_loop())
    group._assignment = frozenset({("events", 0)})
    group._accept([FakeMessage("events", 0, 0)])  # schedules the wake-up
    assert [m.offset() for _, ms in await group.take() for m in ms] == [0]  # taken before it ran
    await asyncio.sleep(0)  # the stale wake-up runs now
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    other = asyncio.ensure_future(ticker())
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(group.take(), 0.3)
    other.cancel()
    assert ticks >= 5  # the loop kept running other tasks while take() waited
    group._accept([FakeMessage("events", 0, 1)])
    batch = await asyncio.wait_for(group.take(), 1)
    assert [m.offset() for _, ms in batch for m in ms] == [1]


async def test_a_client_that_lost_its_partitions_and_is_not_assigned_again_joins_anew() -> None:
    """After a broker freeze a librdkafka client's coordinator connection was seen wedged: the
    member never joined again and its partitions sat unowned. Past rejoin_after_s the thread
    replaces the client (a new one subscribes; the old one closes in the background)."""
    listener = Listener()
    group = GroupConsumer({}, ["events"], listener, asyncio.get_running_loop(), rejoin_after_s=30.0)
    fake = ScriptedConsumer([{("events", 0): 5}])
    await in_thread(group._on_assign, fake, [TopicPartition("events", 0)])
    await in_thread(group._on_lost, fake, [TopicPartition("events", 0)])
    assert group._lost_at is not None
    group._watch(fake, group._lost_at + 29.0)  # within the limit: nothing happens
    with pytest.raises(group_consumer._Rejoin):
        group._watch(fake, group._lost_at + 30.0)
    fake2 = ScriptedConsumer([{("events", 0): 9}])
    await in_thread(group._on_assign, fake2, [TopicPartition("events", 0)])
    assert group._lost_at is None  # assigned again: no rejoin


async def test_the_thread_replaces_a_client_that_must_join_anew() -> None:
    made: list[Any] = []

    class Client:
        def __init__(self, config: dict[str, Any]) -> None:
            self.closed = False
            made.append(self)

        def subscribe(self, topics: list[str], **callbacks: Any) -> None:
            return None

        def close(self) -> None:
            self.closed = True

    group = GroupConsumer({}, ["events"], Listener(), asyncio.get_running_loop(), new_consumer=Client)  # type: ignore[arg-type]
    rounds = iter([group_consumer._Rejoin(), None])

    def loop_once(consumer: Any) -> None:
        step = next(rounds)
        if step is not None:
            raise step

    group._loop_until_closed = loop_once  # type: ignore[method-assign]
    await asyncio.get_running_loop().run_in_executor(None, group._run)
    await asyncio.sleep(0.1)
    assert len(made) == 2 and made[0].closed and made[1].closed
