"""The project's Faust transport driver on librdkafka (confluent-kafka): ``rdkafka://`` broker URLs.

Faust stays the application framework (app, worker lifecycle, sensors, signals); this driver
replaces its Kafka client. It is registered under the ``faust.transports`` entry point
(pyproject.toml), so ``faust.App(..., broker="rdkafka://host:9092")`` loads it the way Faust loads
its own drivers.

Records do not go through Faust's per-event streams: :class:`EngineConsumer` takes each fetched
batch from :class:`~streams.group_consumer.GroupConsumer` and hands it to the app's
``batch_handler`` (streams/app.py), which submits it to the pipeline in chunks. Each chunk is
noted in :class:`~engine.positions.Positions` before it is submitted; when all its records are
answered (prediction or dead letter acknowledged by the broker) its completion moves the
partition's committable position. Faust's own ack bookkeeping (``_acked``, ``_committed_offset``,
...) is not used: commits, revokes and the stop are this module's.

Faust's base consumer class is used for what Faust itself calls on a driver (its Service
lifecycle, the periodic ``commit`` task, the assignment callbacks); no private attribute of Faust
or of an aiokafka client is read or written here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, cast

import faust
from faust.transport import base
from faust.transport import consumer as faust_consumer
from faust.types import TP

from engine.positions import Positions
from engine.settings import KafkaSettings
from streams.consumer_types import Batch, TPKey
from streams.exactly_once import NO_TRANSACTION_METRICS, ExactlyOnce, TransactionMetrics
from streams.faust_producer import EngineProducer
from streams.group_consumer import GroupConsumer
from streams.kafka_config import group_consumer_config

log = logging.getLogger(__name__)

BatchHandler = Callable[[Batch], Awaitable[None]]
Completer = Callable[[], None]
WAIT_EMPTY_S = 30.0


class EngineApp(faust.App):
    """A Faust app whose input records reach ``batch_handler`` in batches (set before it starts)."""

    kafka: KafkaSettings = KafkaSettings()
    client_id: str = "sie-worker"
    batch_handler: BatchHandler | None = None
    on_failure: Callable[[str], None] | None = None
    on_fetch_restart: Callable[[TPKey], None] | None = None
    on_commit_failed: Callable[[str], None] | None = None
    # exactly-once: told of each transaction's end (set by the worker before it starts)
    transaction_metrics: TransactionMetrics | None = None


class EngineConsumer(faust_consumer.Consumer):
    """Faust's consumer interface on :class:`GroupConsumer` (see the module docstring)."""

    consumer_stopped_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.positions = Positions()
        self._group: GroupConsumer | None = None
        self._revoking: set[TPKey] = set()
        self._commit_sent: float | None = None
        self._commit_state: Any = None
        self._topics: list[str] = []
        self.exactly_once: ExactlyOnce | None = None
        if self._app.kafka.processing_guarantee == "exactly_once":
            self.exactly_once = ExactlyOnce(
                self.positions,
                lambda: self._group,
                self._app.transaction_metrics or NO_TRANSACTION_METRICS,
                self._app.on_failure or _log_failure,
                self._app.kafka.transaction_timeout_s,
            )

    @property
    def _app(self) -> EngineApp:
        return cast(EngineApp, self.app)

    # -- subscription and the fetch loop -------------------------------------------------

    async def subscribe(self, topics: Iterable[str]) -> None:
        """Join the group on ``topics`` (once: the engine's topics are fixed at start-up)."""
        wanted = sorted(set(topics))
        if self._group is not None:
            if wanted != self._topics:
                log.warning("subscription change to %s ignored: topics are fixed at start-up", wanted)
            return
        app = self._app
        self._topics = wanted
        self._group = GroupConsumer(
            group_consumer_config(app.kafka, app.client_id),
            wanted,
            _Listener(self),
            asyncio.get_running_loop(),
            reset=app.kafka.auto_offset_reset,
            max_buffered=app.kafka.max_buffered_records,
            batch_max=app.kafka.max_poll_records,
            revoke_timeout_s=app.kafka.revoke_timeout_s,
            stall_after_s=app.kafka.stall_after_s,
            on_commit=self._on_committed,
            on_stall=app.on_fetch_restart,
            on_failure=app.on_failure,
        )
        self._group.start()

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's fetcher runs this: fetched batches go to the app's batch handler until it stops."""
        handler = self._app.batch_handler
        group = self._group
        if handler is None or group is None:
            raise RuntimeError("EngineApp.batch_handler must be set before the app starts")
        try:
            while not self.should_stop:
                await handler(await group.take())  # a record fetched before a rewind: is_current
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the fetch loop failed")
            raise

    def hand_out(self, tp: TPKey, messages: Sequence[Any]) -> tuple[Completer, Sequence[Any]] | None:
        """``messages`` (of ``tp``, in offset order) go to the pipeline now: the callback to run when
        all are answered and the messages to submit, or None when ``tp`` is being revoked or is no
        longer ours (skip them). Offsets handed out before are never handed out again."""
        part = self.positions.get(tp)
        if part is None or tp in self._revoking:
            return None
        if self._group is not None and not self._group.is_current(tp):  # fetched before a rewind
            return None
        if messages[0].offset() < part.handed:  # librdkafka gave records again: answer them once
            log.warning("%s[%d]: records below %d fetched again; skipped", tp[0], tp[1], part.handed)
            messages = [m for m in messages if m.offset() >= part.handed]
            if not messages:
                return None
        stamp = messages[0].timestamp()[1]
        chunk = part.hand_out(
            messages[0].offset(), messages[-1].offset(), stamp / 1000 if stamp > 0 else None
        )
        return self.positions.finisher(tp, chunk), messages

    # -- commits -------------------------------------------------------------------------

    async def admit(self) -> None:
        """Wait while hand-outs are stopped (exactly-once: a transaction is being committed)."""
        if self.exactly_once is not None:
            await self.exactly_once.admit()

    async def commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        """Commit the positions answered since the last confirmed commit (one commit at a time);
        exactly-once: commit the open transaction with them."""
        group = self._group
        if group is None:
            return False
        if self.exactly_once is not None:  # a cycle may wait for the pipeline: never wait for it here
            self.exactly_once.schedule()
            return False
        now = time.monotonic()
        if self._commit_sent is not None and now - self._commit_sent < WAIT_EMPTY_S:
            return False  # the last one has not been answered yet
        offsets = {tp: o for tp, o in self.positions.to_commit().items() if tp not in self._revoking}
        if not offsets:
            return False
        self._commit_sent = now
        self._commit_state = self.app.sensors.on_commit_initiated(self)
        group.commit(cast(dict[TPKey, int], offsets))
        return True

    def _on_committed(self, confirmed: dict[TPKey, int], error: Any) -> None:
        self.positions.committed(cast(dict[Any, int], confirmed))
        if self._commit_sent is not None:
            self._commit_sent = None
            self.app.sensors.on_commit_completed(self, self._commit_state)
        if error is not None:
            log.warning("offset commit failed: %s (committed again at the next interval)", error)
            if self._app.on_commit_failed is not None:
                self._app.on_commit_failed(str(error))

    async def force_commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        """Same as :meth:`commit`."""
        return await self.commit(topics)

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        if self._group is None:
            return False
        self._group.commit(cast(dict[TPKey, int], offsets))
        return True

    async def wait_empty(self) -> None:
        """Wait (at most 30 s) until every record handed out is answered, then commit."""
        await self.positions.wait_until(lambda: self.positions.in_flight() == 0, WAIT_EMPTY_S)
        self._commit_sent = None
        if self.exactly_once is not None:
            await self.exactly_once.commit()
        else:
            await self.commit()

    async def on_stop(self) -> None:
        """Leave the group: the last revoke commits what was answered."""
        if self._group is not None:
            await self._group.close()

    # -- what Faust asks of a driver ------------------------------------------------------

    def assignment(self) -> set[TP]:
        """The partitions this worker owns."""
        return {TP(t, p) for t, p in self._group.assignment()} if self._group else set()

    def highwater(self, tp: tuple[str, int]) -> int:
        """The partition's last known end offset (-1 if unknown)."""
        return self._group.high_watermarks().get(tp, -1) if self._group else -1

    async def highwaters(self, *partitions: TP) -> Mapping[TP, int]:
        """Last known end offsets."""
        return {tp: self.highwater(tp) for tp in partitions}

    async def earliest_offsets(self, *partitions: TP) -> Mapping[TP, int]:
        """Not tracked (no tables): empty."""
        return {}

    async def position(self, tp: TP) -> int | None:
        """The offset after the last record handed to the pipeline."""
        part = self.positions.get(tp)
        return part.handed if part is not None else None

    def topic_partitions(self, topic: str) -> int | None:
        """Unknown to this driver (Faust tables would need it; the engine has none)."""
        return None

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Partitions start at their committed offsets when assigned: nothing to do."""
        return {}

    async def perform_seek(self) -> None:
        """Partitions start at their committed offsets when assigned: nothing to do."""

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        """Not supported: positions only move by answering records."""
        raise NotImplementedError("the rdkafka driver does not seek on request")

    async def _seek(self, partition: TP, offset: int) -> None:
        raise NotImplementedError("the rdkafka driver does not seek on request")

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        raise NotImplementedError("records are delivered in batches (_drain_messages)")

    def _new_topicpartition(self, topic: str, partition: int) -> TP:
        return TP(topic, partition)

    def _to_message(self, tp: TP, record: Any) -> Any:
        raise NotImplementedError("records are delivered in batches (_drain_messages)")

    async def create_topic(self, topic: str, *args: Any, **kwargs: Any) -> None:
        """Topics are created by ``sie up`` or the operator (streams/admin.py), not by the worker."""
        raise NotImplementedError("the worker does not create topics")

    def key_partition(self, topic: str, key: bytes | None, partition: int | None = None) -> int | None:
        """Partitioning is librdkafka's."""
        return None

    def close(self) -> None:
        """Closing happens in :meth:`on_stop`, where the last revoke can still run."""

    def verify_recovery_event_path(self, now: float, tp: TP) -> None:
        """No tables, no recovery."""


def _log_failure(reason: str) -> None:
    log.error("%s", reason)


class _Listener:
    """The group consumer's rebalance callbacks, run on the event loop for :class:`EngineConsumer`."""

    def __init__(self, consumer: EngineConsumer) -> None:
        self._c = consumer
        self._tasks: set[asyncio.Future[None]] = set()

    async def assigned(self, starts: Mapping[TPKey, int]) -> None:
        c = self._c
        for tp, start in starts.items():
            c.positions.assign(TP(*tp), start)
            c._revoking.discard(tp)
        # Faust's own assignment handling (sensors, agents, its fetcher's start) runs as a task:
        # the consumer thread waits for this coroutine and must never wait for Faust.
        self._notify(self._faust_assigned(), "on_partitions_assigned")

    async def _faust_assigned(self) -> None:
        c = self._c
        c.app.on_rebalance_start()
        await c.on_partitions_assigned(c.assignment())
        log.info("Faust's assignment handling done")

    def _notify(self, coro: Awaitable[None], what: str) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(t, what))

    def _done(self, task: asyncio.Future[None], what: str) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("Faust's %s failed", what, exc_info=task.exception())

    async def revoking(self, tps: list[TPKey]) -> dict[TPKey, int]:
        c = self._c
        if c.exactly_once is not None:  # committed in the transaction, or aborted
            await c.exactly_once.revoking(tps, c._app.kafka.revoke_timeout_s)
            c._revoking.update(tps)
            return {}
        c._revoking.update(tps)
        keys = [TP(*tp) for tp in tps]
        if not await c.positions.wait_until(
            lambda: c.positions.in_flight(keys) == 0, c._app.kafka.revoke_timeout_s
        ):
            state = {
                tp: (p.in_flight, p.handed, p.committable) for tp, p in c.positions.items() if tp in keys
            }
            log.warning("revoke: still in flight (records, handed, committable): %s", state)
        return cast(dict[TPKey, int], c.positions.to_commit(keys))

    async def revoked(self, tps: list[TPKey], committed: Mapping[TPKey, int]) -> None:
        c = self._c
        c.positions.committed(cast(dict[Any, int], dict(committed)))
        self._forget(tps)
        self._notify(c.app.on_partitions_revoked.send(set(TP(*tp) for tp in tps)), "on_partitions_revoked")

    async def lost(self, tps: list[TPKey]) -> None:
        self._forget(tps)
        if self._c.exactly_once is not None:
            self._c.exactly_once.lost(tps)

    def _forget(self, tps: Sequence[TPKey]) -> None:
        for tp in tps:
            self._c.positions.revoke(TP(*tp))
            self._c._revoking.discard(tp)


class Transport(base.Transport):
    """The ``rdkafka://`` transport: :class:`EngineConsumer` and :class:`EngineProducer`."""

    Consumer: ClassVar[Any] = EngineConsumer
    Producer: ClassVar[Any] = EngineProducer
    driver_version = "sie-rdkafka"
