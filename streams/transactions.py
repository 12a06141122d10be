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
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from engine.backoff import next_delay
from engine.errors import FatalError, RetryableError

log = logging.getLogger(__name__)
T = TypeVar("T")

CALL_TIMEOUT_S = 10.0  # one attempt of a transaction call
RETRY_MAX_S = 2.0


class TransactionAborted(RetryableError):
    """The open transaction cannot be committed; abort it and process its records again."""

    code = "transaction_aborted"


class TransactionFenced(FatalError):
    """This producer may not write transactions any more (a newer one with its id took over)."""

    code = "transaction_fenced"


def classify(err: KafkaError) -> Exception:
    """The engine error for a transaction call's ``err`` (by librdkafka's flags)."""
    if err.fatal() or err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED):
        return TransactionFenced(f"transactional producer fenced or failed for good: {err.str()}")
    return TransactionAborted(f"transaction must be aborted: {err.str()}")


class TransactionalProducer:
    """The transaction calls of one transactional confluent-kafka producer."""

    def __init__(self, producer: Any, *, on_retry: Callable[[str], None] | None = None) -> None:
        self._producer = producer
        self._on_retry = on_retry

    async def start(self) -> None:
        """Register the ``transactional.id`` (fencing an older producer with the same id and
        aborting its open transaction), then begin the first transaction."""
        await self._call("init_transactions", self._producer.init_transactions, CALL_TIMEOUT_S)
        self._producer.begin_transaction()

    async def commit(self, offsets: Mapping[tuple[str, int], int], group_metadata: Any) -> None:
        """Add ``offsets`` (the consumer group's next positions) to the open transaction, commit
        it and begin the next one. Raises :class:`TransactionAborted` or :class:`TransactionFenced`."""
        if offsets:
            parts = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            send = self._producer.send_offsets_to_transaction
            await self._call("send_offsets_to_transaction", send, parts, group_metadata, CALL_TIMEOUT_S)
        await self._call("commit_transaction", self._producer.commit_transaction, CALL_TIMEOUT_S)
        self._producer.begin_transaction()

    async def abort(self) -> None:
        """Abort the open transaction (its records are never seen by a ``read_committed`` reader)
        and begin the next one. Raises :class:`TransactionFenced` if that is impossible."""
        try:
            await self._call("abort_transaction", self._producer.abort_transaction, CALL_TIMEOUT_S)
        except TransactionAborted as err:  # aborting cannot itself need an abort
            raise TransactionFenced(str(err)) from err
        self._producer.begin_transaction()

    async def _call(self, what: str, call: Callable[..., T], *args: Any) -> T:
        delay = 0.05
        while True:
            try:
                return await asyncio.to_thread(call, *args)
            except KafkaException as exc:
                err = exc.args[0]
                if not isinstance(err, KafkaError):
                    raise TransactionFenced(f"{what}: {exc}") from exc
                if not err.retriable() or err.txn_requires_abort() or err.fatal():
                    raise classify(err) from exc
                log.warning("%s: %s; trying again", what, err.str())
                if self._on_retry is not None:
                    self._on_retry(what)
            await asyncio.sleep(delay)
            delay = next_delay(delay, 2.0, RETRY_MAX_S)
