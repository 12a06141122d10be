"""librdkafka's consumer in a thread of its own, handing fetched records to the event loop.

One thread owns the ``confluent_kafka.Consumer``: every call on it (consume, assign, commit,
seek, pause, close) is made there, and librdkafka serves its rebalance and commit callbacks there.
The event loop takes what was fetched with :meth:`GroupConsumer.take` and tells the thread what to
commit with :meth:`GroupConsumer.commit`. The thread may wait for the loop (a revoke waits for the
records in flight); the loop never waits for the thread.

**Latency.** ``consume(n, timeout)`` waits out its whole timeout unless ``n`` records arrive;
at low rates that is pure latency. The thread takes what is already fetched with
``consume(n, 0)`` and, when there is nothing, waits in ``poll(timeout)``, which returns as soon as
one record arrives; the records right behind it are taken by the next ``consume(n, 0)``.

**Backpressure.** While ``max_buffered`` records wait for the loop, the thread stops taking
records and waits for the loop to take them (librdkafka's own prefetch is bounded by
``queued.max.messages.kbytes``). If the buffer stays full for ``PAUSE_AFTER_S`` (Triton down, a
slow model), it pauses its partitions and goes on polling, so rebalances are served meanwhile;
it resumes them once the loop has taken half. Pausing at every full buffer cost a third of the
drain rate: librdkafka drops what it prefetched on a pause and fetches it again on resume.

**Committed positions** (see ``shared/notes/broker-freeze.md`` for why each rule is there):

* An assignment never lets librdkafka look up committed offsets by itself: an OffsetFetch
  answered with a request-level error (NOT_COORDINATOR after a broker freeze) would leave the
  partition never fetched (librdkafka issue #5586). The thread asks with ``committed()``, retries
  an error until the coordinator answers, and assigns explicit offsets; "nothing committed" is
  only ever a per-partition answer, and then reading starts at ``auto.offset.reset``.
* A revoke stops handing out the partitions' records, waits for those in flight, commits their
  acknowledged positions synchronously and only then releases them.
* A commit counts only once librdkafka reports it succeeded for that partition.
* A rewind (exactly-once, after an aborted transaction: :mod:`streams.exactly_once`) seeks
  partitions back to their committed positions and drops what was fetched for them before; each
  partition's *generation* counts its rewinds, so records fetched before one are recognised
  (:meth:`GroupConsumer.is_current`) and never handed out.
* A watchdog finds an assigned, unpaused partition whose position has not moved for
  ``stall_after_s`` while the broker holds records past it, and restarts its fetch at the
  position (``on_stall`` is told).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from engine.backoff import next_delay

log = logging.getLogger(__name__)

TPKey = tuple[str, int]  # (topic, partition)
Batch = list[tuple[TPKey, list[Any]]]  # per partition, confluent Messages in offset order

IDLE_POLL_S = 0.05  # longest a poll waits for a record (commands wait at most this long)
PAUSE_AFTER_S = 1.0  # a buffer full this long pauses the partitions (see Backpressure)
ROOM_WAIT_S = 0.01  # how long the thread waits for room at a time while the buffer is full
WATCH_EVERY_S = 1.0
ASSIGN_RETRY_MAX_S = 2.0
CLOSE_TIMEOUT_S = 10.0
# Lost every partition and not assigned again for this long: the client joins with a new consumer.
REJOIN_AFTER_S = 30.0


class _Rejoin(Exception):
    """Raised in the consumer thread to replace a client that does not join its group again."""


class RebalanceListener(Protocol):
    """What the event loop does when partitions come and go (coroutines run on the loop)."""

    def assigned(self, starts: Mapping[TPKey, int]) -> Awaitable[None]:
        """``starts``: the partitions added and the offset reading starts at."""

    def revoking(self, tps: list[TPKey]) -> Awaitable[dict[TPKey, int]]:
        """Stop handing out ``tps``, wait for their records in flight; the positions to commit."""

    def revoked(self, tps: list[TPKey], committed: Mapping[TPKey, int]) -> Awaitable[None]:
        """``tps`` are released (``committed``: what the broker confirmed for them)."""

    def lost(self, tps: list[TPKey]) -> Awaitable[None]:
        """``tps`` were taken away without a revoke (the session expired): nothing to commit."""


@dataclass
class _Watch:
    position: int = -1
    since: float = field(default_factory=time.monotonic)


class GroupConsumer:
    """A subscribed librdkafka consumer run by one thread (see the module docstring)."""

    def __init__(
        self,
        config: Mapping[str, Any],
        topics: list[str],
        listener: RebalanceListener,
        loop: asyncio.AbstractEventLoop,
        *,
        reset: str = "earliest",
        max_buffered: int = 20_000,
        batch_max: int = 1_000,
        revoke_timeout_s: float = 30.0,
        stall_after_s: float = 10.0,
        on_commit: Callable[[dict[TPKey, int], KafkaError | None], None] | None = None,
        on_stall: Callable[[TPKey], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
        rejoin_after_s: float = REJOIN_AFTER_S,
        new_consumer: Callable[[dict[str, Any]], Consumer] = Consumer,
    ) -> None:
        self._config = dict(config) | {"on_commit": self._committed_cb}
        self._topics = topics
        self._listener = listener
        self._loop = loop
        self._reset = OFFSET_BEGINNING if reset == "earliest" else OFFSET_END
        self._max_buffered = max_buffered
        self._batch_max = batch_max
        self._revoke_timeout_s = revoke_timeout_s
        self._stall_after_s = stall_after_s
        self._on_commit = on_commit
        self._on_stall = on_stall
        self._on_failure = on_failure
        self._rejoin_after_s = rejoin_after_s
        self._new_consumer = new_consumer
        self._lost_at: float | None = None  # when the last partition was lost (no revoke)
        self._lock = threading.Lock()
        self._buffer: deque[tuple[Batch, dict[TPKey, int]]] = deque()  # with the generations then
        self._generation: dict[TPKey, int] = {}  # rewinds per partition: replaced whole, never changed
        self._taken: dict[TPKey, int] = {}  # the generations of the last batch taken
        self._metadata: Any = None  # the consumer's group metadata, refreshed by the thread
        self._buffered = 0
        self._arrived = asyncio.Event()
        self._wake_pending = False
        self._commands: deque[Callable[[Consumer], None]] = deque()
        self._closing = threading.Event()
        self._closed: asyncio.Future[None] = loop.create_future()
        self._assignment: frozenset[TPKey] = frozenset()  # replaced, never changed: read by the loop
        self._paused = False
        self._full_since: float | None = None
        self._room = threading.Event()  # set by the loop when it takes the buffer
        self._watch: dict[TPKey, _Watch] = {}
        self._high: dict[TPKey, int] = {}
        self._thread = threading.Thread(target=self._run, name="kafka-consumer", daemon=True)

    # -- the event loop's side -------------------------------------------------------------

    def start(self) -> None:
        """Create the consumer, subscribe and start the thread."""
        self._thread.start()

    def assignment(self) -> set[TPKey]:
        """The partitions assigned now (a copy)."""
        return set(self._assignment)  # a frozenset replaced whole by the thread: safe to copy

    def high_watermarks(self) -> dict[TPKey, int]:
        """The last known end offset of each assigned partition (refreshed by the watchdog)."""
        return dict(self._high)

    async def take(self) -> Batch:
        """Wait for fetched records and take them all (several polls' worth, in order)."""
        while True:
            with self._lock:
                entries, self._buffer = self._buffer, deque()
                self._taken = current = self._generation
                batches = [b if g is current else _current_parts(b, g, current) for b, g in entries]
                batches = [b for b in batches if b]
                self._buffered = 0
                # Under the lock, so the thread's next append sees it and wakes us: a wake-up
                # scheduled for records taken already may still set the event; clearing it here,
                # before every wait, keeps that stale wake-up from turning the wait into a spin.
                self._wake_pending = False
                self._arrived.clear()
            if batches:
                self._room.set()
                break
            await self._arrived.wait()
        if len(batches) == 1:
            return batches[0]
        return [part for batch in batches for part in batch]

    def is_current(self, tp: TPKey) -> bool:
        """Whether the last batch taken holds records of ``tp`` fetched since its last rewind."""
        return self._taken.get(tp, 0) == self._generation.get(tp, 0)

    def group_metadata(self) -> Any:
        """The consumer's group metadata (generation, member id), for a transaction's offsets.

        Read by the thread (a call on the consumer from another thread blocks while it polls)
        at each rebalance callback - a new generation comes with one - and every second."""
        if self._metadata is None:
            raise RuntimeError("the Kafka consumer has not joined its group yet")
        return self._metadata

    def rewind(self, offsets: Mapping[TPKey, int]) -> asyncio.Future[None]:
        """Read the partitions of ``offsets`` still assigned again from those offsets; records
        fetched for them before are never handed out. The future resolves once it is done."""
        done: asyncio.Future[None] = self._loop.create_future()

        def command(consumer: Consumer) -> None:
            try:
                keys = {tp for tp in offsets if tp in self._assignment}
                for key in keys:
                    self._seek(consumer, key, offsets[key])
                    self._watch[key] = _Watch(offsets[key])
                generation = dict(self._generation)
                for key in keys:
                    generation[key] = generation.get(key, 0) + 1
                with self._lock:
                    self._generation = generation
                self._drop_buffered(keys)
                log.info("rewound %s", _describe({k: offsets[k] for k in keys}) or "nothing")
            finally:
                self._loop.call_soon_threadsafe(_resolve, done)

        self._commands.append(command)
        return done

    def commit(self, offsets: Mapping[TPKey, int]) -> None:
        """Commit ``offsets`` asynchronously (the result reaches ``on_commit`` on the loop)."""
        parts = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        self._commands.append(lambda c: c.commit(offsets=parts, asynchronous=True))

    async def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Leave the group (a last revoke commits what is done) and stop the thread.

        librdkafka's close can block long after that revoke (seen for 40 s and more after a
        broker restart); what matters is committed by then, so the stop goes on after
        ``timeout`` and the daemon thread ends with the process.
        """
        if not self._thread.is_alive():
            return
        self._closing.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), timeout)
        except TimeoutError:
            log.warning("the Kafka consumer did not close within %.0fs; stopping without waiting", timeout)

    # -- the thread's side -----------------------------------------------------------------

    def _run(self) -> None:
        consumer = None
        try:
            while True:
                consumer = self._subscribed()
                try:
                    self._loop_until_closed(consumer)
                    break
                except _Rejoin:
                    # The group coordinator connection of this client is wedged (seen after a
                    # broker freeze: a request waits in its out-queue for good, the member never
                    # joins again). A new client joins; the old one leaves the group in the
                    # background, since its close may block as long.
                    old, consumer = consumer, None
                    threading.Thread(
                        target=self._close, args=(old,), name="kafka-consumer-close", daemon=True
                    ).start()
        except Exception as err:
            log.exception("the Kafka consumer thread failed")
            if self._on_failure is not None and not self._closing.is_set():
                self._loop.call_soon_threadsafe(self._on_failure, f"Kafka consumer failed: {err}")
        finally:
            if consumer is not None:
                self._close(consumer)
            self._loop.call_soon_threadsafe(_resolve, self._closed)

    def _subscribed(self) -> Consumer:
        consumer = self._new_consumer(self._config)
        consumer.subscribe(
            self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        self._lost_at = None
        return consumer

    def _close(self, consumer: Consumer) -> None:
        try:
            consumer.close()  # serves the last revoke: in-flight records finish, positions commit
        except Exception as err:  # already closed, or the broker is gone
            log.warning("closing the Kafka consumer: %s", err)

    def _loop_until_closed(self, consumer: Consumer) -> None:
        next_watch = time.monotonic() + WATCH_EVERY_S
        while not self._closing.is_set():
            while self._commands:
                self._command(consumer, self._commands.popleft())
            if not self._flow(consumer):
                self._room.wait(ROOM_WAIT_S)  # full: wait for the loop to take the buffer
                continue
            messages = consumer.consume(self._batch_max, 0)
            if not messages:
                first = consumer.poll(IDLE_POLL_S)
                if first is not None:
                    messages = [first, *consumer.consume(self._batch_max - 1, 0)]
            if messages:
                self._accept(messages)
            now = time.monotonic()
            if now >= next_watch:
                next_watch = now + WATCH_EVERY_S
                self._metadata = consumer.consumer_group_metadata()
                self._watchdog(consumer, now)

    def _command(self, consumer: Consumer, command: Callable[[Consumer], None]) -> None:
        try:
            command(consumer)
        except KafkaException as err:  # e.g. a commit while the group rebalances
            log.warning("Kafka consumer: %s", err.args[0])
            if self._on_commit is not None:
                self._loop.call_soon_threadsafe(self._on_commit, {}, err.args[0])

    def _accept(self, messages: list[Any]) -> None:
        parts: dict[TPKey, list[Any]] = {}
        for m in messages:
            err = m.error()
            if err is not None:
                self._consumer_error(err)
                continue
            key = (m.topic(), m.partition())
            part = parts.get(key)
            if part is None:
                parts[key] = [m]
            else:
                part.append(m)
        batch = [(k, v) for k, v in parts.items() if k in self._assignment]
        if not batch:
            return
        with self._lock:
            self._buffer.append((batch, self._generation))
            self._buffered += sum(len(v) for _, v in batch)
            wake, self._wake_pending = not self._wake_pending, True
        if wake:
            self._loop.call_soon_threadsafe(self._arrived.set)

    def _consumer_error(self, err: KafkaError) -> None:
        if err.fatal():
            raise KafkaException(err)
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("Kafka consumer: %s", err)

    def _flow(self, consumer: Consumer) -> bool:
        """Whether to take records now; pauses or resumes the partitions (see Backpressure)."""
        with self._lock:
            buffered = self._buffered
            if buffered >= self._max_buffered:
                self._room.clear()
        if buffered < self._max_buffered:
            self._full_since = None
            if self._paused and buffered <= self._max_buffered // 2:
                consumer.resume([TopicPartition(t, p) for t, p in self._assignment])
                self._paused = False
                now = time.monotonic()
                for watch in self._watch.values():  # paused is not stalled: the watchdog starts over
                    watch.since = now
            return True
        now = time.monotonic()
        if self._full_since is None:
            self._full_since = now
        if not self._paused and now - self._full_since >= PAUSE_AFTER_S:
            consumer.pause([TopicPartition(t, p) for t, p in self._assignment])
            self._paused = True
        return self._paused  # paused: polls serve callbacks (no records come); else wait for room

    def _call(self, coro: Awaitable[Any], timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    def _drop_buffered(self, tps: set[TPKey]) -> None:
        with self._lock:
            kept: deque[tuple[Batch, dict[TPKey, int]]] = deque()
            for batch, generation in self._buffer:
                part = [(k, v) for k, v in batch if k not in tps]
                if part:
                    kept.append((part, generation))
            self._buffer = kept
            self._buffered = sum(len(v) for b, _ in kept for _, v in b)

    # -- rebalances (served inside poll/consume/close, on this thread) ------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._metadata = consumer.consumer_group_metadata()
        if not partitions:
            return
        starts = self._starts(consumer, partitions)
        consumer.incremental_assign([TopicPartition(t, p, o) for (t, p), o in starts.items()])
        if self._paused:
            consumer.pause([TopicPartition(t, p) for t, p in starts])
        self._assignment = self._assignment | set(starts)
        self._lost_at = None
        for key, offset in starts.items():
            self._watch[key] = _Watch(offset)
        log.info("assigned %s", _describe(starts))
        self._call(self._listener.assigned(starts))

    def _starts(self, consumer: Consumer, partitions: list[TopicPartition]) -> dict[TPKey, int]:
        """The committed offset of each partition, asked until the coordinator answers for all."""
        delay = 0.1
        while True:
            try:
                answers = consumer.committed(partitions, timeout=10)
                errors = [a for a in answers if a.error is not None]
                if not errors:
                    return {(a.topic, a.partition): self._start_of(consumer, a) for a in answers}
                log.warning("committed offsets not known yet (%s); asking again", errors[0].error)
            except KafkaException as err:  # request-level errors: NOT_COORDINATOR, timeouts
                log.warning("committed offsets not known yet (%s); asking again", err.args[0])
            if self._closing.is_set():
                raise KafkaException(KafkaError(KafkaError._DESTROY, "closing while assigning"))
            time.sleep(delay)
            delay = next_delay(delay, 2.0, ASSIGN_RETRY_MAX_S)

    def _start_of(self, consumer: Consumer, answer: TopicPartition) -> int:
        if answer.offset >= 0:
            return int(answer.offset)
        low, high = consumer.get_watermark_offsets(TopicPartition(answer.topic, answer.partition), timeout=10)
        return int(low if self._reset == OFFSET_BEGINNING else high)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._metadata = consumer.consumer_group_metadata()
        tps = [(tp.topic, tp.partition) for tp in partitions]
        if not tps:
            return
        self._drop_buffered(set(tps))
        try:
            offsets = self._call(self._listener.revoking(tps), self._revoke_timeout_s + 10)
        except TimeoutError:
            log.warning(
                "records of %s still in flight after %.0fs; releasing them", tps, self._revoke_timeout_s
            )
            offsets = {}
        confirmed = self._commit_now(consumer, offsets) if offsets else {}
        consumer.incremental_unassign(partitions)
        self._release(tps)
        log.info("revoked %s (committed %s)", tps, _describe(confirmed) or "nothing new")
        self._call(self._listener.revoked(tps, confirmed))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        self._drop_buffered(set(tps))
        self._release(tps)
        if not self._assignment:
            self._lost_at = time.monotonic()
        log.warning("partitions lost (session expired): %s", tps)
        self._call(self._listener.lost(tps))

    def _release(self, tps: list[TPKey]) -> None:
        self._assignment = self._assignment - set(tps)
        self._high = {k: v for k, v in self._high.items() if k not in tps}
        for key in tps:
            self._watch.pop(key, None)

    def _commit_now(self, consumer: Consumer, offsets: Mapping[TPKey, int]) -> dict[TPKey, int]:
        parts = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            answers = consumer.commit(offsets=parts, asynchronous=False)
        except KafkaException as err:
            log.warning("commit of %s failed: %s", _describe(offsets), err.args[0])
            return {}
        return {(a.topic, a.partition): a.offset for a in answers or [] if a.error is None}

    def _committed_cb(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        confirmed = {
            (p.topic, p.partition): p.offset for p in partitions if p.error is None and p.offset >= 0
        }
        failed = err if err is not None else next((p.error for p in partitions if p.error is not None), None)
        if self._on_commit is not None:
            self._loop.call_soon_threadsafe(self._on_commit, confirmed, failed)

    # -- the stall watchdog ---------------------------------------------------------------

    def _watchdog(self, consumer: Consumer, now: float) -> None:
        if not self._assignment:
            if self._lost_at is not None and now - self._lost_at >= self._rejoin_after_s:
                log.warning(
                    "no partition assigned %.0fs after the group session was lost; joining with a new client",
                    now - self._lost_at,
                )
                raise _Rejoin
            return
        tps = [TopicPartition(t, p) for t, p in self._assignment]
        for tp in consumer.position(tps):
            key = (tp.topic, tp.partition)
            watch = self._watch.setdefault(key, _Watch(tp.offset))
            high = consumer.get_watermark_offsets(tp, cached=True)[1]
            if high >= 0 and self._high.get(key) != high:
                self._high = self._high | {key: high}  # replaced whole: the loop reads it
            if tp.offset >= 0 and tp.offset != watch.position:
                watch.position, watch.since = tp.offset, now
            elif not self._paused and now - watch.since >= self._stall_after_s:
                self._maybe_restart(consumer, key, watch, now)

    def _maybe_restart(self, consumer: Consumer, key: TPKey, watch: _Watch, now: float) -> None:
        tp = TopicPartition(*key)
        try:
            high = consumer.get_watermark_offsets(tp, timeout=2)[1]
        except KafkaException:
            return  # the broker is away: nothing can be fetched now anyway
        self._high = self._high | {key: high}
        if high <= watch.position:
            watch.since = now  # nothing waits: an idle partition, not a stalled one
            return
        log.warning(
            "partition %s[%d] has not moved from %d for %.0fs while records wait (end %d); "
            "restarting its fetch",
            key[0],
            key[1],
            watch.position,
            now - watch.since,
            high,
        )
        self._seek(consumer, key, watch.position)
        watch.since = now
        if self._on_stall is not None:
            self._loop.call_soon_threadsafe(self._on_stall, key)

    def _seek(self, consumer: Consumer, key: TPKey, offset: int) -> None:
        try:
            consumer.seek(TopicPartition(key[0], key[1], offset))
        except KafkaException:  # no fetch state to seek in: assign the partition again
            consumer.incremental_unassign([TopicPartition(*key)])
            consumer.incremental_assign([TopicPartition(key[0], key[1], offset)])
            if self._paused:
                consumer.pause([TopicPartition(*key)])


def _current_parts(batch: Batch, fetched: dict[TPKey, int], current: dict[TPKey, int]) -> Batch:
    """The parts of ``batch`` (fetched at generations ``fetched``) not rewound since."""
    return [(k, v) for k, v in batch if fetched.get(k, 0) == current.get(k, 0)]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _describe(offsets: Mapping[TPKey, int]) -> str:
    return ", ".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(offsets.items()))
