"""Faust's aiokafka transport, tuned for the engine: batch delivery and a configurable fetch wait.

**Batch delivery.** Faust hands each consumed message to its streams one at a
time: ``Consumer._drain_messages`` awaits ``wait_first(callback(message), ...)``
per message (two asyncio tasks each), the conductor wraps it in an ``Event``
and queues it, the agent's stream takes it off the queue again, and every
message is tracked, sensed and acked on its own. On the local broker a bare
agent doing nothing but that topped out near 4,000 events/s on this machine
(docs/benchmarks.md). When an :class:`EngineApp` has a ``batch_handler``, its
consumer skips that machinery: each fetched batch (aiokafka's records, grouped
by partition) goes to the handler in one call, and the handler's records are
acknowledged in bulk with :meth:`EngineConsumer.ack_offsets`. Everything else
stays Faust's: the consumer group and rebalances, flow control, the periodic
commit of the highest offset below which every record is acknowledged, the
watchdogs, and waiting for outstanding records before partitions are revoked
or the worker stops (:meth:`EngineConsumer.wait_empty`).

**Fetch wait.** faust-streaming hard-codes ``fetch_max_wait_ms=1500``. Apache
Kafka answers a fetch as soon as ``fetch.min.bytes`` (1) is there, so that
value only matters on an idle topic; the consumer is built with
``EngineApp.fetch_max_wait_ms`` (``SIE_KAFKA__FETCH_MAX_WAIT_MS``) so the
settings hold the one value.
(aiokafka's per-partition prefetch backoff stays at its 100 ms: shorter
backoffs made fetches smaller and, on this machine, cost more throughput than
they saved latency.)
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from importlib.metadata import version
from typing import Any, ClassVar, Protocol, cast

import aiokafka
import faust
import mode
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, TransportT
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from engine.errors import ConfigError
from engine.settings import KafkaSettings

# One fetched batch: per partition, aiokafka's ConsumerRecords in offset order.
FetchedBatch = Sequence[tuple[TP, Sequence[Any]]]
BatchHandler = Callable[[FetchedBatch], Awaitable[None]]


class DeliveryConsumer(Protocol):
    """The consumer as batch delivery (streams/app.py) sees it: :class:`EngineConsumer`, or a fake
    in unit tests."""

    def hand_out(self, n: int) -> None:
        """``n`` records go to the batch handler now."""

    def ack_offsets(self, tp: TP, offsets: Iterable[int]) -> None:
        """Records handed out are done: their offsets may be committed."""


async def note_gaps(
    add_gap: Callable[[TP, int, int], Awaitable[None]], tp: TP, read: int | None, records: Sequence[Any]
) -> None:
    """Offsets the broker skipped (compaction, transaction markers) count as done, or the committed
    offset could never pass them: ``add_gap(tp, first, last)`` (both ends included) for each hole
    between ``read`` (the last offset read before, None: nothing yet) and ``records``."""
    if not records:
        return
    first = records[0].offset
    span = records[-1].offset - first
    if span == len(records) - 1 and (read is None or first == read + 1):
        return  # consecutive offsets right after the last one read: no hole (the usual case)
    previous = read
    for r in records:
        if previous is not None and r.offset - previous > 1:
            await add_gap(tp, previous + 1, r.offset - 1)
        previous = r.offset


# The private parts of faust-streaming and aiokafka this module relies on (pinned in pyproject.toml):
# methods looked up on the class, attributes found assigned (``self.<name> =``) in the class's source.
PRIVATE_METHODS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "faust.transport.drivers.aiokafka.Consumer": (
        faust_aiokafka.Consumer,
        ("_drain_messages", "_wait_next_records", "_add_gap", "_new_consumer_thread", "_wait_for_ack"),
    ),
    "faust.transport.drivers.aiokafka.AIOKafkaConsumerThread": (
        faust_aiokafka.AIOKafkaConsumerThread,
        ("_create_worker_consumer",),
    ),
    "faust.App": (faust.App, ("_new_transport",)),
}
PRIVATE_ATTRIBUTES: dict[str, tuple[Any, tuple[str, ...]]] = {
    "faust.transport.consumer.Consumer": (
        faust_aiokafka.Consumer,
        (
            "_commit_every",
            "_n_acked",
            "_buffered_partitions",
            "_read_offset",
            "_committed_offset",
            "_acked_index",
            "_acked",
            "_waiting_for_ack",
        ),
    ),
    "aiokafka.AIOKafkaConsumer": (aiokafka.AIOKafkaConsumer, ("_fetch_max_wait_ms",)),
    "mode.Service": (mode.Service, ("_stopped",)),  # the fetcher's
}


def _assigned_in(cls: type, name: str) -> bool:
    for klass in cls.__mro__:
        try:
            if f"self.{name} =" in inspect.getsource(klass) or f"self.{name}:" in inspect.getsource(klass):
                return True
        except (OSError, TypeError):
            continue
    return False


def missing_internals() -> list[str]:
    """The private names of faust-streaming and aiokafka this module needs and cannot find."""
    missing = [
        f"{where}.{name}"
        for where, (cls, names) in PRIVATE_METHODS.items()
        for name in names
        if not callable(getattr(cls, name, None))
    ]
    missing += [
        f"{where}.{name}"
        for where, (cls, names) in PRIVATE_ATTRIBUTES.items()
        for name in names
        if not _assigned_in(cls, name)
    ]
    return missing


def check_internals() -> None:
    """Raise one :class:`~engine.errors.ConfigError` naming the installed versions if a name is gone."""
    missing = missing_internals()
    if missing:
        raise ConfigError(
            f"faust-streaming {version('faust-streaming')} / aiokafka {version('aiokafka')} lack "
            f"{', '.join(missing)}, which streams/transport.py relies on; install the versions "
            "pinned in pyproject.toml"
        )


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this attribute when it builds its Fetcher in start().
        consumer._fetch_max_wait_ms = cast("EngineApp", self.consumer.app).fetch_max_wait_ms
        return consumer


class EngineConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with batch delivery (see the module docstring)."""

    _in_hand: int = 0  # records handed to the batch handler and not yet acknowledged

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - needs a broker
        handler: BatchHandler | None = getattr(self.app, "batch_handler", None)
        if handler is None:
            await super()._drain_messages(fetcher)
            return
        stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        try:
            while not (stopped() or fetcher_stopped()):
                records, active = await self._wait_next_records(1.0)
                await asyncio.sleep(0)
                if not records or self.should_stop:
                    continue
                if not self.flow_active:  # a rebalance began: those records will be read again
                    await self.perform_seek()
                    continue
                batch = await self._fresh(records, active)
                if batch:
                    await handler(batch)
                if self._commit_every is not None and self._n_acked >= self._commit_every:
                    self._n_acked = 0
                    await self.commit()
        except self.consumer_stopped_errors:
            if not self.transport.app.should_stop:
                raise
        except asyncio.CancelledError:
            if not self.transport.app.should_stop:
                raise

    async def _fresh(self, records: Any, active: set[TP] | None) -> list[tuple[TP, list[Any]]]:
        """Records of active partitions past the read offset; notes offsets, gaps and liveness."""
        batch: list[tuple[TP, list[Any]]] = []
        monitor = self.app.monitor
        now = time.monotonic()
        for tp, recs in records.items():
            if active is not None and tp not in active and tp not in self._buffered_partitions:
                continue
            read = self._read_offset[tp]
            if read is None or (recs and recs[0].offset >= read):  # offsets ascend within a partition
                fresh = list(recs)
            else:
                fresh = [r for r in recs if r.offset >= read]
            if not fresh:
                continue
            if self.app.topics.acks_enabled_for(tp.topic):
                await note_gaps(self._add_gap, tp, read, fresh)
            self._read_offset[tp] = fresh[-1].offset
            monitor.track_tp_end_offset(tp, self.highwater(tp))
            monitor.stream_inbound_time[tp] = now  # Faust's watchdog: this partition is processed
            batch.append((tp, fresh))
        return batch

    def hand_out(self, n: int) -> None:
        """``n`` records go to the batch handler now; each is acked by :meth:`ack_offsets` later."""
        self._in_hand += n

    def ack_offsets(self, tp: TP, offsets: Iterable[int]) -> None:
        """Mark records handed to the batch handler as done (their offsets may be committed)."""
        with ack_lock:
            committed = self._committed_offset[tp]
            index, acked = self._acked_index[tp], self._acked[tp]
            n = 0
            for offset in offsets:
                n += 1
                if (committed is None or offset >= committed) and offset not in index:
                    index.add(offset)
                    acked.append(offset)
                    self._n_acked += 1
            self._in_hand -= n
            notify(self._waiting_for_ack)

    async def wait_empty(self) -> None:
        """Wait until every record handed out is acknowledged, then commit (rebalance, stop)."""
        while not self.should_stop and self._in_hand > 0:
            await self.commit()
            await self._wait_for_ack(timeout=1)
        await super().wait_empty()


class _Transport(faust_aiokafka.Transport):
    Consumer: ClassVar[Any] = EngineConsumer


class EngineApp(faust.App):
    """A Faust app with batch delivery to ``batch_handler`` and a configurable fetch wait."""

    fetch_max_wait_ms: int = KafkaSettings().fetch_max_wait_ms  # one default: the settings'
    batch_handler: BatchHandler | None = None

    def _new_transport(self) -> TransportT:
        check_internals()  # at start-up: one clear error rather than an AttributeError mid-stream
        return _Transport(self.conf.broker_consumer, self)
