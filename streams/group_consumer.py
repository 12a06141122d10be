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

**Backpressure.** While ``max_buffered`` records wait for the loop (streams/fetch_buffer.py),
the thread waits for the loop to take them. If the buffer stays full for ``PAUSE_AFTER_S`` (Triton
down, a slow model), it pauses its partitions and goes on polling, so rebalances are served; it
resumes them once the loop has taken half. (Pausing at every full buffer cost a third of the drain
rate: librdkafka drops what it prefetched on a pause and fetches it again on resume.)

**Committed positions** (``shared/notes/broker-freeze.md`` says why each rule is there):

* An assignment starts at explicit offsets the thread asked the coordinator for
  (streams/start_offsets.py), never letting librdkafka look them up itself (issue #5586).
* A revoke stops handing out the partitions' records, waits for those in flight, commits their
  acknowledged positions synchronously and only then releases them.
* A commit counts only once librdkafka reports it succeeded for that partition.
* A rewind (exactly-once, after an aborted transaction) seeks partitions back to their committed
  positions; records fetched before it are never handed out (:meth:`GroupConsumer.is_current`).
* A watchdog restarts the fetch of a stalled partition (streams/stall_watchdog.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from streams.consumer_types import Batch, RebalanceListener, TPKey
from streams.fetch_buffer import FetchBuffer, by_partition
from streams.stall_watchdog import StallWatchdog
from streams.start_offsets import start_offsets

log = logging.getLogger(__name__)


IDLE_POLL_S = 0.05  # longest a poll waits for a record (commands wait at most this long)
PAUSE_AFTER_S = 1.0  # a buffer full this long pauses the partitions (see Backpressure)
ROOM_WAIT_S = 0.01  # how long the thread waits for room at a time while the buffer is full
WATCH_EVERY_S = 1.0
CLOSE_TIMEOUT_S = 10.0
# Lost every partition and not assigned again for this long: the client joins with a new consumer.
REJOIN_AFTER_S = 30.0


class _Rejoin(Exception):
    """Raised in the consumer thread to replace a client that does not join its group again."""


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
        self._on_commit = on_commit
        self._on_stall = on_stall
        self._on_failure = on_failure
        self._rejoin_after_s = rejoin_after_s
        self._new_consumer = new_consumer
        self._lost_at: float | None = None  # when the last partition was lost (no revoke)
        self._fetched = FetchBuffer(loop, max_buffered)
        self._metadata: Any = None  # the consumer's group metadata, refreshed by the thread
        self._commands: deque[Callable[[Consumer], None]] = deque()
        self._closing = threading.Event()
        self._closed: asyncio.Future[None] = loop.create_future()
        self._assignment: frozenset[TPKey] = frozenset()  # replaced, never changed: read by the loop
        self._paused = False
        self._full_since: float | None = None
        self._watchdog = StallWatchdog(stall_after_s)
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
        return dict(self._watchdog.high)

    async def take(self) -> Batch:
        """Wait for fetched records and take them all (several polls' worth, in order)."""
        return await self._fetched.take()

    def is_current(self, tp: TPKey) -> bool:
        """Whether the last batch taken holds records of ``tp`` fetched since its last rewind."""
        return self._fetched.is_current(tp)

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
                    self._watchdog.start(key, offsets[key])
                self._fetched.rewound(keys)
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
                self._fetched.wait_for_room(ROOM_WAIT_S)  # full: wait for the loop to take the buffer
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
                self._watch(consumer, now)

    def _command(self, consumer: Consumer, command: Callable[[Consumer], None]) -> None:
        try:
            command(consumer)
        except KafkaException as err:  # e.g. a commit while the group rebalances
            log.warning("Kafka consumer: %s", err.args[0])
            if self._on_commit is not None:
                self._loop.call_soon_threadsafe(self._on_commit, {}, err.args[0])

    def _accept(self, messages: list[Any]) -> None:
        batch = by_partition(messages, self._assignment)
        if batch:
            self._fetched.put(batch)

    def _flow(self, consumer: Consumer) -> bool:
        """Whether to take records now; pauses or resumes the partitions (see Backpressure)."""
        buffered = self._fetched.count()
        if buffered < self._max_buffered:
            self._full_since = None
            if self._paused and buffered <= self._max_buffered // 2:
                consumer.resume([TopicPartition(t, p) for t, p in self._assignment])
                self._paused = False
                self._watchdog.resumed(time.monotonic())
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

    # -- rebalances (served inside poll/consume/close, on this thread) ------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._metadata = consumer.consumer_group_metadata()
        if not partitions:
            return
        starts = start_offsets(consumer, partitions, self._reset, self._closing)
        consumer.incremental_assign([TopicPartition(t, p, o) for (t, p), o in starts.items()])
        if self._paused:
            consumer.pause([TopicPartition(t, p) for t, p in starts])
        self._assignment = self._assignment | set(starts)
        self._lost_at = None
        for key, offset in starts.items():
            self._watchdog.start(key, offset)
        log.info("assigned %s", _describe(starts))
        self._call(self._listener.assigned(starts))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._metadata = consumer.consumer_group_metadata()
        tps = [(tp.topic, tp.partition) for tp in partitions]
        if not tps:
            return
        self._fetched.drop(tps)
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
        self._fetched.drop(tps)
        self._release(tps)
        if not self._assignment:
            self._lost_at = time.monotonic()
        log.warning("partitions lost (session expired): %s", tps)
        self._call(self._listener.lost(tps))

    def _release(self, tps: list[TPKey]) -> None:
        self._assignment = self._assignment - set(tps)
        self._watchdog.forget(tps)

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

    def _watch(self, consumer: Consumer, now: float) -> None:
        if not self._assignment:
            if self._lost_at is not None and now - self._lost_at >= self._rejoin_after_s:
                log.warning(
                    "no partition assigned %.0fs after the group session was lost; joining with a new client",
                    now - self._lost_at,
                )
                raise _Rejoin
            return
        restart = None if self._paused else lambda key, at: self._restart(consumer, key, at)
        self._watchdog.check(consumer, self._assignment, now, restart)

    def _restart(self, consumer: Consumer, key: TPKey, offset: int) -> None:
        self._seek(consumer, key, offset)
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


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _describe(offsets: Mapping[TPKey, int]) -> str:
    return ", ".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(offsets.items()))
