"""streams/exactly_once.py and its parts without a broker: the cycle, aborts and rewinds, fencing.

The transactional producer is a scripted stand-in for confluent_kafka.Producer's transaction
calls; positions are the real engine.positions.Positions.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

import streams.producer as producer_module
from engine.positions import Positions
from engine.records import OutRecord
from engine.settings import KafkaSettings
from streams.consumer_types import TPKey
from streams.exactly_once import ExactlyOnce
from streams.kafka_config import reader_config, transactional_id, transactional_producer_config
from streams.sink import KafkaSink
from streams.transactions import (
    TransactionAborted,
    TransactionalProducer,
    TransactionBroken,
    TransactionFenced,
    classify,
)

TP0, TP1 = ("events", 0), ("events", 1)


def error(*, retriable: bool = False, abort: bool = False, fatal: bool = False) -> KafkaException:
    code = KafkaError._FENCED if fatal else KafkaError._TIMED_OUT
    return KafkaException(
        KafkaError(code, "scripted", fatal=fatal, retriable=retriable, txn_requires_abort=abort)
    )


class TxnProducer:
    """The transaction calls of a producer; ``failures[call]`` lists errors to raise first."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.offsets: list[dict[TPKey, int]] = []
        self.failures: dict[str, list[KafkaException | None]] = {}

    def _call(self, name: str) -> None:
        self.calls.append(name)
        pending = self.failures.get(name)
        if pending:
            failure = pending.pop(0)
            if failure is None:  # blocks for good (librdkafka issues #5456, #5511)
                threading.Event().wait()
            raise failure

    def init_transactions(self, timeout: float) -> None:
        self._call("init")

    def begin_transaction(self) -> None:
        self._call("begin")

    def send_offsets_to_transaction(self, parts: list[Any], metadata: Any, timeout: float) -> None:
        self._call("send_offsets")
        self.offsets.append({(p.topic, p.partition): p.offset for p in parts})

    def commit_transaction(self, timeout: float) -> None:
        self._call("commit")

    def abort_transaction(self, timeout: float) -> None:
        self._call("abort")


class Group:
    """The group consumer as a cycle sees it."""

    def __init__(self, owned: set[TPKey]) -> None:
        self.owned = owned
        self.rewinds: list[dict[TPKey, int]] = []

    def group_metadata(self) -> str:
        return "generation-7"

    def rewind(self, offsets: Mapping[TPKey, int]) -> asyncio.Future[None]:
        self.rewinds.append(dict(offsets))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def assignment(self) -> set[TPKey]:
        return set(self.owned)


class Outputs:
    discarding = False
    produced = 0
    held = False
    holds = 0

    def hold(self) -> None:
        self.held = True
        self.holds += 1

    def release(self) -> None:
        self.held = False


class Metrics:
    def __init__(self) -> None:
        self.committed_records: list[int] = []
        self.aborts: list[str] = []

    def committed(self, seconds: float, records: int) -> None:
        self.committed_records.append(records)

    def aborted(self, reason: str) -> None:
        self.aborts.append(reason)


class Setup:
    def __init__(self, timeout_s: float = 60.0) -> None:
        self.positions = Positions()
        self.positions.assign(TP0, 100)
        self.positions.assign(TP1, 200)
        self.group = Group({TP0, TP1})
        self.metrics = Metrics()
        self.fenced: list[str] = []
        self.producer = TxnProducer()
        self.outputs = Outputs()
        self.eos = ExactlyOnce(
            self.positions, lambda: self.group, self.metrics, self.fenced.append, timeout_s
        )

    async def start(self) -> None:
        txn = TransactionalProducer(self.renew, producer=self.producer, stuck_after_s=0.2)
        await self.eos.attach(txn, self.outputs)

    def renew(self) -> TxnProducer:
        self.producer = TxnProducer()
        return self.producer

    def hand_out(self, tp: TPKey, first: int, last: int) -> Callable[[], None]:
        part = self.positions.get(tp)
        assert part is not None
        return self.positions.finisher(tp, part.hand_out(first, last))


async def admitted(eos: ExactlyOnce) -> bool:
    """Whether hand-outs go on now."""
    try:
        await asyncio.wait_for(eos.admit(), 0.05)
        return True
    except TimeoutError:
        return False


async def test_a_cycle_stops_hand_outs_until_every_record_is_answered_then_commits_their_positions() -> None:
    s = Setup()
    await s.start()
    done0, done1 = s.hand_out(TP0, 100, 149), s.hand_out(TP1, 200, 209)
    s.outputs.produced = 60
    done1()
    cycle = asyncio.ensure_future(s.eos.commit())
    await asyncio.sleep(0.02)
    assert not await admitted(s.eos), "records are handed out while a transaction is being committed"
    assert "send_offsets" not in s.producer.calls, "committed before every output was written"
    done0()
    assert await asyncio.wait_for(cycle, 1.0)
    assert s.producer.offsets == [{TP0: 150, TP1: 210}]
    assert s.producer.calls == ["init", "begin", "send_offsets", "commit", "begin"]
    assert s.positions.get(TP0).committed == 150  # type: ignore[union-attr]
    assert s.metrics.committed_records == [60]
    assert await admitted(s.eos)


async def test_a_cycle_with_nothing_answered_or_written_commits_nothing() -> None:
    s = Setup()
    await s.start()
    assert not await s.eos.commit()
    assert s.producer.calls == ["init", "begin"]


async def test_a_retriable_error_is_asked_again_and_the_transaction_commits() -> None:
    s = Setup()
    await s.start()
    s.hand_out(TP0, 100, 109)()
    s.producer.failures["commit"] = [error(retriable=True)]
    assert await s.eos.commit()
    assert s.producer.calls.count("commit") == 2
    assert s.metrics.aborts == []


async def test_an_abortable_commit_aborts_and_rewinds_every_owned_partition_to_its_committed_position() -> (
    None
):
    s = Setup()
    await s.start()
    s.hand_out(TP0, 100, 119)()
    s.hand_out(TP1, 200, 204)()
    s.producer.failures["commit"] = [error(abort=True)]
    assert not await s.eos.commit()
    await asyncio.sleep(0.01)  # the rewind runs once the pipeline is empty (it is)
    assert s.metrics.aborts == ["commit_failed"]
    assert s.group.rewinds == [{TP0: 100, TP1: 200}]
    assert s.positions.get(TP0).handed == 100  # type: ignore[union-attr]  # read again from there
    assert not s.outputs.discarding and await admitted(s.eos)
    assert s.producer.calls[-2:] == ["abort", "begin"]


async def test_outputs_written_while_an_abort_waits_for_the_pipeline_are_discarded() -> None:
    s = Setup()
    await s.start()
    late = s.hand_out(TP0, 100, 109)  # still in the pipeline when the transaction fails
    s.eos.must_abort("delivery_failed")
    await asyncio.sleep(0.02)
    assert s.outputs.discarding and not await admitted(s.eos)
    assert s.group.rewinds == [], "rewound before the records in flight were answered"
    late()
    await asyncio.sleep(0.02)
    assert s.group.rewinds == [{TP0: 100, TP1: 200}]
    assert not s.outputs.discarding and await admitted(s.eos)
    assert s.metrics.aborts == ["delivery_failed"]


async def test_a_pipeline_that_does_not_empty_within_a_third_of_the_timeout_aborts_its_transaction() -> None:
    s = Setup(timeout_s=0.15)
    await s.start()
    stuck = s.hand_out(TP0, 100, 109)  # Triton down
    s.outputs.produced = 40  # what went before it is in the open transaction
    assert not await s.eos.commit()
    assert s.metrics.aborts == ["pipeline_stalled"]
    assert s.outputs.discarding, "outputs of the aborted transaction must not be written"
    stuck()
    await asyncio.sleep(0.02)
    assert s.group.rewinds == [{TP0: 100, TP1: 200}]


async def test_lost_partitions_abort_the_open_transaction() -> None:
    s = Setup()
    await s.start()
    s.hand_out(TP1, 200, 209)()
    s.positions.revoke(TP0)
    s.group.owned = {TP1}
    s.eos.lost([TP0])
    await asyncio.sleep(0.05)
    assert s.metrics.aborts == ["partitions_lost"]
    assert s.group.rewinds == [{TP1: 200}]
    assert "send_offsets" not in s.producer.calls


async def test_a_fenced_producer_stops_the_worker_once_and_hands_out_nothing_more() -> None:
    s = Setup()
    await s.start()
    s.hand_out(TP0, 100, 109)()
    s.producer.failures["send_offsets"] = [error(fatal=True)]
    assert not await s.eos.commit()
    s.eos.output_failed(KafkaError(KafkaError._FENCED, "fenced", fatal=True))
    assert len(s.fenced) == 1 and "fenced, stopping" in s.fenced[0]
    assert not await admitted(s.eos)
    assert not await s.eos.commit()


async def test_a_stuck_transaction_call_replaces_the_producer_which_aborts_and_rewinds() -> None:
    s = Setup()
    await s.start()
    stuck = s.producer
    s.hand_out(TP0, 100, 119)()
    stuck.failures["send_offsets"] = [None]
    assert not await s.eos.commit()
    await asyncio.sleep(0.02)
    assert s.producer is not stuck, "the stuck producer was kept"
    assert s.producer.calls == ["init", "begin"]  # the new one fenced the stuck one
    assert s.metrics.aborts == ["commit_stuck"]
    assert s.group.rewinds == [{TP0: 100, TP1: 200}]
    assert await admitted(s.eos) and s.fenced == []


def test_errors_are_classified_by_librdkafka_flags_never_by_text() -> None:
    assert isinstance(
        classify(KafkaError(KafkaError._TIMED_OUT, "fenced", txn_requires_abort=True)), TransactionAborted
    )
    broken = classify(KafkaError(KafkaError.INVALID_TXN_STATE, "fenced by a newer instance", fatal=True))
    assert isinstance(broken, TransactionBroken), "fatal but not fenced: the producer is replaced"
    assert isinstance(classify(KafkaError(KafkaError.PRODUCER_FENCED, "x")), TransactionFenced)


def test_the_transactional_id_is_stable_per_worker_and_outputs_time_out_within_the_transaction() -> None:
    kafka = KafkaSettings(group_id="g", processing_guarantee="exactly_once", transaction_timeout_s=30)
    config = transactional_producer_config(kafka, 2_000_000, "worker-1")
    assert config["transactional.id"] == transactional_id(kafka, "worker-1") == "g.worker-1"
    assert config["enable.idempotence"] == "true" and config["acks"] == "all"
    assert int(config["message.timeout.ms"]) <= int(config["transaction.timeout.ms"]) == 30_000
    assert reader_config(kafka)["isolation.level"] == "read_uncommitted"
    assert reader_config(kafka, committed=True)["isolation.level"] == "read_committed"


class _Message:
    def __init__(self, topic: str) -> None:
        self._topic = topic

    def topic(self) -> str:
        return self._topic

    def key(self) -> None:
        return None

    def value(self) -> bytes:
        return b""

    def headers(self) -> None:
        return None


def _message(topic: str) -> _Message:
    return _Message(topic)


class FailingProducer:
    """A producer whose deliveries all fail with ``code`` (served on poll)."""

    def __init__(self, conf: dict[str, Any], code: int = KafkaError._MSG_TIMED_OUT) -> None:
        self.code = code
        self.produced = 0
        self._pending: list[Any] = []

    def produce(self, topic: str, value: Any = None, key: Any = None, **kw: Any) -> None:
        self.produced += 1
        self._pending.append((topic, kw["on_delivery"]))

    def poll(self, timeout: float) -> int:
        pending, self._pending = self._pending, []
        for topic, on_delivery in pending:
            msg = _message(topic)
            on_delivery(KafkaError(self.code), msg)
        return len(pending)

    def flush(self, timeout: float) -> int:
        return 0


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch) -> list[FailingProducer]:
    made: list[FailingProducer] = []

    def make(conf: dict[str, Any]) -> FailingProducer:
        made.append(FailingProducer(conf))
        return made[-1]

    monkeypatch.setattr(producer_module, "Producer", make)
    return made


async def test_a_transactional_sink_never_produces_a_failed_output_again_it_asks_for_an_abort(
    failing: list[FailingProducer],
) -> None:
    errors: list[KafkaError] = []
    sink = KafkaSink({}, retry_pause_s=0.01, transactional=True, on_transaction_error=errors.append)
    future = await sink.send([OutRecord("out", b"k", b"v", ())])
    await asyncio.wait_for(future, 1.0)  # resolved: the abort discards it, the records go again
    await asyncio.sleep(0.05)
    assert [e.code() for e in errors] == [KafkaError._MSG_TIMED_OUT]
    assert failing[0].produced == 1 and sink.discarding
    discarded = await sink.send([OutRecord("out", b"k", b"v", ())])
    assert discarded.done() and failing[0].produced == 1, "outputs of an aborted transaction were produced"
    await sink.close(timeout=0.1)


async def test_a_revoke_with_records_in_flight_and_nothing_written_yet_waits_and_commits_them() -> None:
    s = Setup()
    await s.start()
    in_flight = s.hand_out(TP0, 100, 103)  # in the pipeline; no output written yet
    revoke = asyncio.ensure_future(s.eos.revoking([TP0], timeout=5.0))
    await asyncio.sleep(0.02)
    assert not revoke.done(), "the partition was released with its records in flight"
    s.outputs.produced = 4
    in_flight()
    await asyncio.wait_for(revoke, 1.0)
    assert s.producer.offsets == [{TP0: 104}]


async def test_hand_outs_go_on_while_a_periodic_transaction_commits_and_their_outputs_wait_for_the_next() -> (
    None
):
    s = Setup()
    await s.start()
    s.hand_out(TP0, 100, 109)()
    s.producer.failures["commit"] = [error(retriable=True)] * 3  # the commit takes four tries
    cycle = asyncio.ensure_future(s.eos.commit())
    await asyncio.sleep(0.01)
    assert await admitted(s.eos), "hand-outs waited for the commit itself"
    assert s.outputs.held, "an output could be written into the transaction being committed"
    assert await asyncio.wait_for(cycle, 1.0)
    assert not s.outputs.held and s.outputs.holds == 1


async def test_a_revoke_keeps_hand_outs_stopped_until_its_transaction_is_committed() -> None:
    s = Setup()
    await s.start()
    s.hand_out(TP0, 100, 109)()
    s.producer.failures["commit"] = [error(retriable=True)] * 3  # asked again after 0.05, 0.1, 0.2 s
    revoke = asyncio.ensure_future(s.eos.revoking([TP0], timeout=5.0))
    await asyncio.sleep(0.01)
    assert not await admitted(s.eos)
    await asyncio.wait_for(revoke, 1.0)
    assert s.outputs.holds == 0


async def test_a_producer_failed_for_good_without_being_fenced_is_replaced_and_its_records_go_again() -> None:
    """After a broker freeze the coordinator answered an abort with INVALID_TXN_STATE, which
    librdkafka makes fatal: the worker must not stop for it (nobody else has its id)."""
    s = Setup()
    await s.start()
    broken = s.producer
    s.hand_out(TP0, 100, 109)()
    invalid = KafkaError(KafkaError.INVALID_TXN_STATE, "invalid state", fatal=True)
    broken.failures["commit"] = [KafkaException(invalid)]
    assert not await s.eos.commit()
    await asyncio.sleep(0.02)
    assert s.producer is not broken and s.producer.calls == ["init", "begin"]
    assert s.metrics.aborts == ["producer_failed"] and s.fenced == []
    assert s.group.rewinds == [{TP0: 100, TP1: 200}]
    assert await admitted(s.eos)
