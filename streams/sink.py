"""Producing output records, with delivery acknowledged by the broker.

``send`` returns a future that resolves once every record of the call is acknowledged. A record
whose delivery fails with a transient error (broker down past the message timeout, a leader
moving) is produced again after a pause, without limit: the caller sees a late record, never a
lost one, and commits no offset past it meanwhile. A record Kafka refuses for good - decided by
librdkafka's error code, never its text (:func:`is_permanent`) - is counted (``on_rejected``) and
produced again at most ``permanent_retries`` times; then the call's future fails with
:class:`~engine.errors.OutputRejected` and ``on_fatal`` is told, so the worker stops loudly. A
record ``produce`` refuses synchronously is a failed delivery like any other.

Exactly-once (``transactional=True``, :mod:`streams.exactly_once` runs the transactions): a
failed delivery is never produced again; ``on_transaction_error`` is told (the transaction is
aborted, its records processed again) and the call's future resolves. While ``discarding``,
``send`` produces nothing; while held (a transaction commits), it waits.

A broker outage is logged once when it starts (every broker down, or no answer for ``stall_s``:
a frozen broker keeps its connections open) and once when deliveries succeed again. The producer
is polled from the event loop while deliveries are outstanding, not from a thread of its own: a
poll thread competing for the GIL measurably slowed the worker (see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from engine.errors import OutputRejected
from engine.records import OutRecord
from streams.producer import Headers, new_producer, produce_waiting_async

log = logging.getLogger(__name__)

# librdkafka error codes after which producing the same record again cannot succeed.
PERMANENT_CODES = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
        KafkaError.INVALID_REQUIRED_ACKS,
        KafkaError.POLICY_VIOLATION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError._INVALID_ARG,
        KafkaError._FATAL,
    }
)
PERMANENT_RETRIES = 3
# How often deliveries are served while outputs are outstanding. Only acknowledgements (offset
# commits, the delivered metrics) wait for it, not the outputs themselves: 2 ms halves the
# wake-ups of 1 ms at no cost to throughput or to the outputs' latency.
POLL_INTERVAL_S = 0.002


def is_permanent(err: KafkaError) -> bool:
    """Whether producing the record again cannot fix ``err`` (by its code and fatal flag)."""
    return bool(err.fatal()) or err.code() in PERMANENT_CODES


class _Delivery:
    """Tracks one ``send`` call's records; its callbacks run inside ``Producer.poll``."""

    __slots__ = ("sink", "future", "remaining", "failed", "rejections")

    def __init__(self, sink: KafkaSink, future: asyncio.Future[None], count: int) -> None:
        self.sink = sink
        self.future = future
        self.remaining = count
        self.failed: list[tuple[OutRecord, KafkaError]] = []
        self.rejections = 0  # attempts that ended with a permanent error

    def on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        """The producer's delivery callback for each of this call's records."""
        if err is None:
            self.answer(None, None)
            return
        headers = tuple((k, bytes(v or b"")) for k, v in msg.headers() or ())
        self.answer(err, OutRecord(msg.topic(), msg.key(), msg.value(), headers))

    def answer(self, err: KafkaError | None, record: OutRecord | None) -> None:
        """One record of this call was delivered (``err`` None) or failed."""
        if err is not None and record is not None:
            self.failed.append((record, err))
            self.sink.last_error = str(err)
        self.sink.answered(1)
        self.remaining -= 1
        if self.remaining == 0:
            self.sink.finished(self)


class KafkaSink:
    """A confluent-kafka producer polled from the event loop, with asyncio delivery futures."""

    def __init__(
        self,
        config: Mapping[str, str],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        retry_pause_s: float = 1.0,
        stall_s: float = 5.0,
        permanent_retries: int = PERMANENT_RETRIES,
        on_rejected: Callable[[str, str], None] | None = None,
        on_fatal: Callable[[str], None] | None = None,
        transactional: bool = False,
        on_transaction_error: Callable[[KafkaError], None] | None = None,  # exactly-once: abort
    ) -> None:
        conf: dict[str, Any] = {
            "acks": "all",
            "linger.ms": 2,
            "enable.idempotence": False,
            "message.timeout.ms": 30000,
            "queue.buffering.max.messages": 1_000_000,
            "batch.num.messages": 10000,
        }
        conf.update(config)
        conf["error_cb"] = self._on_client_error
        self._conf = conf
        self._producer = new_producer(conf)
        self._pending: set[_Delivery] = set()  # exactly-once: calls not yet answered
        self._loop = loop or asyncio.get_running_loop()
        self._retry_pause_s = retry_pause_s
        self._permanent_retries = permanent_retries
        self._on_rejected = on_rejected  # (topic, error code name) per record refused for good
        self._on_fatal = on_fatal  # told when outputs are given up
        self.transactional = transactional
        self._on_transaction_error = on_transaction_error
        self.discarding = False  # exactly-once, after a failure: outputs of the aborted transaction
        self._released = asyncio.Event()  # exactly-once: cleared while a transaction commits
        self._released.set()
        self.produced = 0  # records handed to the producer (exactly-once: counted per transaction)
        self._running = True
        self.last_error: str | None = None
        self._stall_s = stall_s
        self._down_since: float | None = None  # monotonic start of an outage, while one lasts
        self._last_answer = time.monotonic()  # last delivery answer, or when outputs became outstanding
        self._retries: set[asyncio.Task[None]] = set()
        self._outstanding = 0  # produced, not yet answered by the broker
        self._wake = asyncio.Event()
        self._poller = self._loop.create_task(self._poll_loop(), name="sink-poll")
        self._poller.add_done_callback(self._poller_ended)

    async def send(self, records: Sequence[OutRecord]) -> asyncio.Future[None]:
        """Produce ``records`` in order; see the module docstring."""
        future: asyncio.Future[None] = self._loop.create_future()
        if not self._released.is_set():
            await self._released.wait()
        if not records or self.discarding:
            future.set_result(None)
            return future
        delivery = _Delivery(self, future, len(records))
        if self.transactional:
            self._pending.add(delivery)
        await self._produce_all(records, delivery)
        return future

    async def _produce_all(self, records: Sequence[OutRecord], delivery: _Delivery) -> None:
        if self._outstanding <= 0:  # idle time before this is no stall
            self._last_answer = time.monotonic()
        producer = self._producer
        produce = producer.produce
        on_delivery = delivery.on_delivery
        for record in records:
            headers: Headers = list(record.headers) if record.headers else None
            try:
                try:  # the hot path: no coroutine per record
                    produce(
                        record.topic,
                        value=record.value,
                        key=record.key,
                        headers=headers,
                        on_delivery=on_delivery,
                    )
                except BufferError:  # a full local queue is waited out (deliveries served meanwhile)
                    await produce_waiting_async(
                        producer, record.topic, record.value, record.key, headers, on_delivery
                    )
            except Exception as exc:  # refused before it was queued: a failed delivery
                self._outstanding += 1
                delivery.answer(_kafka_error(exc), record)
                continue
            self._outstanding += 1
        self.produced += len(records)
        self._wake.set()

    def answered(self, n: int) -> None:
        """``n`` records got the broker's answer (delivered or failed)."""
        self._outstanding -= n

    def finished(self, delivery: _Delivery) -> None:
        """Called from ``poll`` (loop or flush thread) when a ``send`` call's records all have an answer."""
        self._last_answer = now = time.monotonic()
        if self.transactional:
            self._pending.discard(delivery)
        if not delivery.failed:
            if self._down_since is not None:
                down, self._down_since = now - self._down_since, None
                log.warning("Kafka reachable again: outputs delivered after an outage of %.1fs", down)
            self._loop.call_soon_threadsafe(_resolve, delivery.future)
            return
        failed, delivery.failed = delivery.failed, []
        if self.transactional:  # the transaction is aborted; its records are processed again
            self._loop.call_soon_threadsafe(self._transaction_failed, failed, delivery.future)
            return
        delivery.remaining = len(failed)
        refused = [(r.topic, e.name()) for r, e in failed if is_permanent(e)]
        if refused:
            delivery.rejections += 1
            if self._on_rejected is not None:
                for topic, code in refused:
                    self._on_rejected(topic, code)
        if delivery.rejections > self._permanent_retries:
            self._loop.call_soon_threadsafe(self._give_up, delivery, refused)
            return
        log.warning(
            "%d records not delivered (%s); producing them again in %.1fs",
            len(failed),
            ", ".join(sorted({e.name() for _, e in failed})),
            self._retry_pause_s,
        )
        self._loop.call_soon_threadsafe(self._schedule_retry, [r for r, _ in failed], delivery)

    @property
    def producer(self) -> Any:
        """The confluent-kafka producer (exactly-once: its transactions are begun and committed by
        :mod:`streams.exactly_once`)."""
        return self._producer

    def hold(self) -> None:
        """Exactly-once: outputs wait before they are produced (a transaction is committing)."""
        self._released.clear()

    def release(self) -> None:
        """Exactly-once: outputs are produced again (into the transaction just begun)."""
        self._released.set()

    def renew_producer(self) -> Any:
        """Exactly-once: a new producer on the same configuration in place of one stuck in a
        transaction call. What waited on the old one belongs to the transaction the new one
        aborts: those calls are resolved (discarded, as after any abort)."""
        self.discarding = True
        self._producer = new_producer(self._conf)
        pending, self._pending = self._pending, set()
        for delivery in pending:
            self._loop.call_soon(_resolve, delivery.future)
        self._outstanding = 0
        return self._producer

    @property
    def outstanding(self) -> int:
        """Records produced and not yet answered by the broker."""
        return self._outstanding

    def _transaction_failed(
        self, failed: list[tuple[OutRecord, KafkaError]], future: asyncio.Future[None]
    ) -> None:
        """Exactly-once: outputs failed in the open transaction. A transient failure aborts it
        (its records are processed again); one Kafka refuses for good would fail again at every
        try, so the worker stops (nothing of the transaction is committed, nothing is lost)."""
        self.discarding = True
        refused = [(r.topic, e.name()) for r, e in failed if _refused(e)]
        if refused:
            for topic, code in refused:
                if self._on_rejected is not None:
                    self._on_rejected(topic, code)
            reasons = ", ".join(f"{code} on {topic}" for topic, code in sorted(set(refused)))
            log.error("Kafka refused %d outputs of a transaction for good: %s", len(refused), reasons)
            if self._on_fatal is not None:
                self._on_fatal(f"Kafka refused {len(refused)} outputs for good: {reasons}")
        elif self._on_transaction_error is not None:
            self._on_transaction_error(failed[0][1])
        _resolve(future)

    def _give_up(self, delivery: _Delivery, refused: list[tuple[str, str]]) -> None:
        """Kafka refused outputs ``permanent_retries + 1`` times: fail the call and tell the worker."""
        reasons = ", ".join(f"{code} on {topic}" for topic, code in sorted(set(refused)))
        reason = (
            f"Kafka refused {len(refused)} outputs for good after {delivery.rejections} attempts: {reasons}"
        )
        log.error("%s; giving up on them", reason)
        if not delivery.future.done():
            delivery.future.set_exception(OutputRejected(reason))
        if self._on_fatal is not None:
            self._on_fatal(reason)

    def _poller_ended(self, task: asyncio.Task[None]) -> None:
        """The poll loop must not die: without it nothing is ever acknowledged again."""
        if task.cancelled() or task.exception() is None:
            return
        reason = f"producer poll loop died: {task.exception()!r}"
        log.error("%s", reason)
        if self._on_fatal is not None:
            self._on_fatal(reason)

    def _on_client_error(self, err: KafkaError) -> None:
        """librdkafka's error callback (inside ``poll``): log the start of an outage once."""
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._outage_started(time.monotonic(), err.str())
        else:
            log.debug("Kafka client error: %s", err.str())

    def _outage_started(self, since: float, why: str) -> None:
        if self._down_since is None:
            self._down_since = since
            log.warning(
                "Kafka unreachable (%s): %d outputs wait in the producer and are retried; "
                "consumption pauses once the pipeline is full",
                why,
                self._outstanding,
            )

    def _schedule_retry(self, failed: list[OutRecord], delivery: _Delivery) -> None:
        async def retry() -> None:
            await asyncio.sleep(self._retry_pause_s)
            await self._produce_all(failed, delivery)

        if self._running:
            task = self._loop.create_task(retry())
            self._retries.add(task)  # the loop keeps only a weak reference
            task.add_done_callback(self._retries.discard)

    async def _poll_loop(self) -> None:
        """Serve delivery callbacks every ``POLL_INTERVAL_S`` while records are outstanding."""
        while self._running:
            if self._outstanding <= 0:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                self._producer.poll(0)
            except KafkaException as exc:  # a fatal producer error
                if not self.transactional or self._on_transaction_error is None:
                    raise
                # Exactly-once: the producer is replaced (renew_producer) or the worker stops.
                self.discarding = True
                self._on_transaction_error(_kafka_error(exc))
                await asyncio.sleep(POLL_INTERVAL_S)
                continue
            waited = time.monotonic() - self._last_answer
            if waited > self._stall_s and self._down_since is None and self._outstanding > 0:
                self._outage_started(self._last_answer, f"no delivery answer for {waited:.0f}s")
            await asyncio.sleep(POLL_INTERVAL_S)

    async def close(self, timeout: float = 10.0) -> None:
        """Wait for queued records to be delivered, then stop polling."""
        self._running = False
        self._wake.set()
        await asyncio.gather(self._poller, return_exceptions=True)
        remaining = await asyncio.to_thread(self._producer.flush, timeout)
        if remaining:
            log.warning("%d records still undelivered at close", remaining)


def _kafka_error(exc: Exception) -> KafkaError:
    """The librdkafka error of a ``produce`` that raised (an invalid argument if it has none)."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return KafkaError(KafkaError._INVALID_ARG, f"{type(exc).__name__}: {exc}")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class BorrowedSink:
    """Another user's view of a sink it does not own (exactly-once: the shadow outputs go through
    the worker's transactional sink): ``send`` passes through, ``close`` leaves it open."""

    def __init__(self, sink: KafkaSink) -> None:
        self._sink = sink

    async def send(self, records: Sequence[OutRecord]) -> asyncio.Future[None]:
        """:meth:`KafkaSink.send`."""
        return await self._sink.send(records)

    async def close(self) -> None:
        """The owner closes the sink."""


def _refused(err: KafkaError) -> bool:
    """Exactly-once: whether a failed output is refused for good (a fatal producer error is the
    transaction's to report: the producer was fenced)."""
    return is_permanent(err) and not err.fatal() and err.code() != KafkaError._FATAL
