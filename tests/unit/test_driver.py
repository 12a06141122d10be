"""streams/driver.py without a broker: the Faust consumer's bookkeeping around the group consumer.

A revoke waits for the revoked partitions' records in flight and offers their answered positions
for the synchronous commit; records handed out are never handed out again; a commit counts only
once confirmed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from engine.settings import Settings
from streams.app import create_app
from streams.driver import EngineConsumer, _Listener
from tests.unit.fake_kafka import FakeMessage

TP0, TP1 = ("events", 0), ("events", 1)


def msg(offset: int) -> FakeMessage:
    return FakeMessage("events", 0, offset, _timestamp=(1, 1_700_000_000_000 + offset))


@pytest.fixture
def consumer() -> Iterator[EngineConsumer]:
    app = create_app(Settings(kafka={"revoke_timeout_s": 2.0}))
    c = app.consumer
    assert isinstance(c, EngineConsumer)
    c.positions.assign(TP0, 100)
    c.positions.assign(TP1, 0)
    yield c


async def test_a_revoke_waits_for_the_partitions_records_in_flight_then_offers_their_positions(
    consumer: EngineConsumer,
) -> None:
    listener = _Listener(consumer)
    handed = consumer.hand_out(TP0, [msg(o) for o in range(100, 110)])
    other = consumer.hand_out(TP1, [msg(0)])
    assert handed is not None and other is not None
    revoking = asyncio.ensure_future(listener.revoking([TP0]))
    await asyncio.sleep(0.05)
    assert not revoking.done()  # TP0's records are still in flight (TP1's do not matter)
    assert consumer.hand_out(TP0, [msg(110)]) is None  # nothing more of TP0 is handed out
    handed[0]()
    assert await asyncio.wait_for(revoking, 1) == {TP0: 110}
    await listener.revoked([TP0], {TP0: 110})
    assert TP0 not in consumer.positions and consumer.positions.in_flight([TP1]) == 1


async def test_records_handed_out_before_are_not_handed_out_again(consumer: EngineConsumer) -> None:
    first = consumer.hand_out(TP0, [msg(o) for o in range(100, 105)])
    assert first is not None
    again = consumer.hand_out(TP0, [msg(o) for o in range(103, 108)])
    assert again is not None
    assert [m.offset() for m in again[1]] == [105, 106, 107]
    assert (
        consumer.hand_out(
            TP0,
            [
                msg(101),
                msg(102),
            ],
        )
        is None
    )


async def test_a_commit_counts_only_once_confirmed(consumer: EngineConsumer) -> None:
    done = consumer.hand_out(TP0, [msg(o) for o in range(100, 110)])
    assert done is not None
    done[0]()
    consumer._on_committed({}, "REBALANCE_IN_PROGRESS")  # a failed commit: nothing confirmed
    assert consumer.positions.to_commit() == {TP0: 110}
    consumer._on_committed({TP0: 110}, None)
    assert consumer.positions.to_commit() == {}


async def test_a_partition_not_ours_is_never_handed_out(consumer: EngineConsumer) -> None:
    assert consumer.hand_out(("events", 7), [msg(0)]) is None


def test_the_app_loads_the_rdkafka_driver_through_fausts_entry_point() -> None:
    app = create_app(Settings(kafka={"bootstrap_servers": "a:1,b:2"}))
    assert [str(u) for u in app.conf.broker] == ["rdkafka://a:1", "rdkafka://b:2"]
    assert type(app.transport).__module__ == "streams.driver"
