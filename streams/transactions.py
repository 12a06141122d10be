"""A transactional producer's calls, run off the event loop, with their errors classified.

librdkafka's transaction calls block (they wait for the transaction coordinator), so each runs in
a worker thread. Their errors are classified by librdkafka's flags on the error, never by its
text, into the engine's hierarchy:

* ``retriable()``: the call may be made again (a timeout, the coordinator moving): retried here
  with backoff, for as long as the transaction may still succeed;
* ``txn_requires_abort()``: :class:`TransactionAborted` - the transaction must be aborted and its
  input records processed again from the last committed positions;
* ``fatal()`` (a newer producer with the same ``transactional.id`` fenced this one, or the
  producer's epoch is gone): :class:`TransactionFenced` - the worker must stop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from engine.backoff import next_delay
from engine.errors import FatalError, RetryableError

log = logging.getLogger(__name__)
T = TypeVar("T")

CALL_TIMEOUT_S = 10.0  # one attempt of a transaction call
STUCK_GRACE_S = 10.0  # past its timeout, a call that has not returned is stuck
RETRY_MAX_S = 2.0


class TransactionAborted(RetryableError):
    """The open transaction cannot be committed; abort it and process its records again."""

    code = "transaction_aborted"


class TransactionFenced(FatalError):
    """This producer may not write transactions any more (a newer one with its id took over)."""

    code = "transaction_fenced"


# Error codes that mean another producer with this transactional.id took over.
FENCED_CODES = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED})


def is_fenced(err: KafkaError) -> bool:
    """Whether ``err`` says a newer producer with the same ``transactional.id`` took over."""
    return err.code() in FENCED_CODES


def classify(err: KafkaError) -> Exception:
    """The engine error for a transaction call's ``err`` (by librdkafka's code and flags)."""
    if is_fenced(err):
        return TransactionFenced(f"transactional producer fenced: {err.str()}")
    if err.fatal():
        return TransactionBroken(f"transactional producer failed for good: {err.str()}")
    return TransactionAborted(f"transaction must be aborted: {err.str()}")


class TransactionBroken(TransactionAborted):
    """The producer failed for good without being fenced (seen after a broker freeze: the
    coordinator answered an abort with INVALID_TXN_STATE). It is replaced by a new one with the
    same ``transactional.id``, which aborts whatever its transaction left open."""

    code = "transaction_broken"


class TransactionStuck(TransactionAborted):
    """A transaction call did not return long after its timeout (librdkafka issues #5456 and
    #5511: ``send_offsets_to_transaction`` can block for good after the group coordinator's
    broker went away). The producer is replaced by a new one with the same ``transactional.id``,
    which fences the stuck one and aborts its transaction."""

    code = "transaction_stuck"


class TransactionalProducer:
    """The transaction calls of one transactional confluent-kafka producer: ``producer``, or one
    made by ``new_producer``, which is called again for a new one when a call is stuck."""

    def __init__(
        self,
        new_producer: Callable[[], Any],
        *,
        on_retry: Callable[[str], None] | None = None,
        stuck_after_s: float = CALL_TIMEOUT_S + STUCK_GRACE_S,
        producer: Any = None,
    ) -> None:
        self._new_producer = new_producer
        self.producer = producer if producer is not None else new_producer()
        self._on_retry = on_retry
        self._stuck_after_s = stuck_after_s
        self._stuck = False  # the producer must be replaced: a call is stuck, or it failed for good
        self._abandoned: list[Any] = []  # stuck producers: destroying one could block as well

    async def start(self) -> None:
        """Register the ``transactional.id`` (fencing an older producer with the same id and
        aborting its open transaction), then begin the first transaction."""
        await self._call("init_transactions", CALL_TIMEOUT_S)
        self.producer.begin_transaction()

    async def commit(self, offsets: Mapping[tuple[str, int], int], group_metadata: Any) -> None:
        """Add ``offsets`` (the consumer group's next positions) to the open transaction, commit
        it and begin the next one. Raises :class:`TransactionAborted` (:class:`TransactionStuck`
        included) or :class:`TransactionFenced`."""
        if offsets:
            parts = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            await self._call("send_offsets_to_transaction", parts, group_metadata, CALL_TIMEOUT_S)
        await self._call("commit_transaction", CALL_TIMEOUT_S)
        self.producer.begin_transaction()

    async def abort(self) -> None:
        """Abort the open transaction (its records are never seen by a ``read_committed`` reader)
        and begin the next one; a stuck producer is replaced instead. Raises
        :class:`TransactionFenced` if neither is possible."""
        if not self._stuck:
            try:
                await self._call("abort_transaction", CALL_TIMEOUT_S)
                self.producer.begin_transaction()
                return
            except (TransactionStuck, TransactionBroken):
                pass
            except TransactionAborted as err:  # aborting cannot itself need an abort
                raise TransactionFenced(str(err)) from err
        await self._replace()

    async def _replace(self) -> None:
        log.warning("exactly-once: a transaction call is stuck in librdkafka; replacing the producer")
        self._abandoned.append(self.producer)
        self.producer = self._new_producer()
        self._stuck = False
        try:
            await self._call("init_transactions", CALL_TIMEOUT_S)  # fences the stuck one
        except TransactionAborted as err:
            raise TransactionFenced(f"the replacement producer could not start: {err}") from err
        self.producer.begin_transaction()

    def broken(self) -> None:
        """The producer failed for good (seen by its user): replace it at the next abort."""
        self._stuck = True

    async def _call(self, what: str, *args: Any) -> Any:
        delay = 0.05
        while True:
            try:
                return await self._in_thread(what, getattr(self.producer, what), *args)
            except KafkaException as exc:
                err = exc.args[0]
                if not isinstance(err, KafkaError):
                    raise TransactionFenced(f"{what}: {exc}") from exc
                if not err.retriable() or err.txn_requires_abort() or err.fatal():
                    failure = classify(err)
                    if isinstance(failure, TransactionBroken):
                        self._stuck = True
                    raise failure from exc
                log.warning("%s: %s; trying again", what, err.str())
                if self._on_retry is not None:
                    self._on_retry(what)
            await asyncio.sleep(delay)
            delay = next_delay(delay, 2.0, RETRY_MAX_S)

    async def _in_thread(self, what: str, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` in a thread of its own (one stuck in librdkafka holds only itself);
        :class:`TransactionStuck` if it has not returned after ``stuck_after_s``."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def run() -> None:
            try:
                result = call(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the loop
                loop.call_soon_threadsafe(_settle, done, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, done, result, None)

        threading.Thread(target=run, name=f"txn-{what}", daemon=True).start()
        try:
            return await asyncio.wait_for(asyncio.shield(done), self._stuck_after_s)
        except TimeoutError:
            self._stuck = True
            raise TransactionStuck(f"{what} has not returned after {self._stuck_after_s:.0f}s") from None


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
