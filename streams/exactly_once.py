"""Exactly-once: a worker's outputs, dead letters and consumed positions in one Kafka transaction.

Opt-in (``SIE_KAFKA__PROCESSING_GUARANTEE=exactly_once``). Each worker has one transactional
producer (:class:`~streams.sink.KafkaSink` on a ``transactional.id`` stable per worker, so a
restarted worker fences the process it replaces). Every transaction interval a *cycle* runs:

1. Hand-outs stop (:meth:`ExactlyOnce.admit` waits): no new record enters the pipeline.
2. It waits until every record handed out is answered: its prediction or dead letter is
   written, in the open transaction. The positions then cover exactly the records whose
   outputs the transaction holds.
3. The positions go into the transaction with the consumer's group metadata
   (``send_offsets_to_transaction``, Kafka's EOS v2) and the transaction is committed; the next
   one begins and hand-outs go on.

A transaction that cannot be committed (a failed delivery, partitions lost, the broker aborting
it after ``transaction_timeout_s``) is *aborted*: nothing it wrote is ever seen by a
``read_committed`` reader. Outputs produced meanwhile are discarded; once the pipeline is empty
every partition is rewound to its last committed position and its records are processed again.
A fenced producer (another process took over the ``transactional.id``) stops the worker.

The shadow outputs of a record are written by the same producer, after its prediction: they
are in the transaction of its position or in a later one, so a crash can lose a shadow output
(shadows are best effort) but never writes one twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from confluent_kafka import KafkaError

from engine.positions import Positions
from streams.consumer_types import TPKey
from streams.transactions import (
    TransactionAborted,
    TransactionalProducer,
    TransactionBroken,
    TransactionFenced,
    TransactionStuck,
    is_fenced,
)

log = logging.getLogger(__name__)


class Group(Protocol):
    """What a cycle needs of the group consumer (:class:`~streams.group_consumer.GroupConsumer`)."""

    def group_metadata(self) -> Any:
        """The consumer's group metadata for the transaction's offsets."""

    def rewind(self, offsets: Mapping[TPKey, int]) -> asyncio.Future[None]:
        """Read these partitions again from these offsets."""

    def assignment(self) -> set[TPKey]:
        """The partitions assigned now."""


class Outputs(Protocol):
    """What a cycle needs of the sink (:class:`~streams.sink.KafkaSink` built transactional)."""

    discarding: bool
    produced: int

    def hold(self) -> None:
        """Outputs wait before they are written (the transaction is being committed)."""

    def release(self) -> None:
        """Outputs are written again (into the next transaction)."""


class TransactionMetrics(Protocol):
    """Told of each transaction's end."""

    def committed(self, seconds: float, records: int) -> None:
        """A transaction with ``records`` outputs was committed after ``seconds`` open."""

    def aborted(self, reason: str) -> None:
        """A transaction was aborted (``reason``: a bounded label)."""


class ExactlyOnce:
    """The transaction cycle of one worker (see the module docstring)."""

    def __init__(
        self,
        positions: Positions,
        group: Callable[[], Group | None],
        metrics: TransactionMetrics,
        on_fenced: Callable[[str], None],
        transaction_timeout_s: float = 60.0,
    ) -> None:
        self._positions = positions
        # Longest a cycle waits for the pipeline before it aborts: well within the broker's
        # transaction timeout, whose expiry would fence the producer.
        self._stall_s = transaction_timeout_s / 3
        self._group = group
        self._metrics = metrics
        self._on_fenced = on_fenced
        self._txn: TransactionalProducer | None = None
        self._outputs: Outputs | None = None
        self._open = asyncio.Event()  # hand-outs go on while set
        self._open.set()
        self._lock = asyncio.Lock()
        self._must_abort: str | None = None  # why the open transaction must be aborted
        self._recovery: asyncio.Task[None] | None = None
        self._cycle_task: asyncio.Future[bool] | None = None
        self._began = time.monotonic()
        self._fenced = False

    async def attach(self, txn: TransactionalProducer, outputs: Outputs) -> None:
        """Start the worker's transactions (fencing a previous process with its id) on the
        sink that writes its outputs; called before the pipeline produces anything."""
        await txn.start()
        self._txn, self._outputs = txn, outputs
        self._began = time.monotonic()
        log.info("exactly-once: transactional producer ready")

    async def admit(self) -> None:
        """Wait while hand-outs are stopped (a cycle or a recovery runs)."""
        if not self._open.is_set():
            await self._open.wait()

    def output_failed(self, err: KafkaError) -> None:
        """The sink's producer failed in the open transaction: fenced, failed for good (it is
        replaced at the abort), or the transaction must be aborted."""
        if is_fenced(err):
            self._fence(err.str())
        elif err.fatal():
            if self._txn is not None:
                self._txn.broken()
            self.must_abort("producer_failed")
        else:
            self.must_abort("delivery_failed")

    def must_abort(self, reason: str) -> None:
        """The open transaction cannot commit (``reason``: a bounded label): abort it soon."""
        if self._txn is None or self._fenced:
            return
        if self._must_abort is None:
            log.warning("exactly-once: the open transaction will be aborted (%s)", reason)
            self._must_abort = reason
        if self._outputs is not None:
            self._outputs.discarding = True
        self._open.clear()
        self.schedule()

    def schedule(self) -> None:
        """Start a cycle unless one runs (the periodic commit: never waits for a slow cycle)."""
        if self._cycle_task is None or self._cycle_task.done():
            self._cycle_task = asyncio.ensure_future(self.commit())

    async def commit(self, idle_timeout: float | None = None) -> bool:
        """Run one cycle; True if a transaction was committed. A cycle whose pipeline is not empty
        within ``idle_timeout`` (a revoke cannot wait longer) aborts its transaction."""
        if self._txn is None or self._fenced or self._recovering():
            return False
        async with self._lock:
            if self._recovering() or self._fenced:
                return False
            if self._must_abort is None and not self._pending():
                return False
            self._open.clear()
            try:
                return await self._cycle(idle_timeout)
            finally:
                if not self._recovering() and not self._fenced:
                    self._open.set()

    async def _cycle(self, idle_timeout: float | None) -> bool:
        wait = self._stall_s if idle_timeout is None else min(idle_timeout, self._stall_s)
        log.debug("cycle: waiting for %d records in flight", self._positions.in_flight())
        if not await self._idle(wait) and self._must_abort is None:
            # Triton down, a slow model: the transaction would outlive its timeout, and a
            # transaction the broker aborts fences its producer for good. Abort it now instead.
            self._must_abort = "pipeline_stalled" if idle_timeout is None else "revoke_timeout"
        if self._must_abort is not None:
            await self._abort(self._must_abort)
            return False
        assert self._txn is not None and self._outputs is not None
        offsets = self._positions.to_commit()
        group = self._group()
        records = self._outputs.produced
        log.debug("cycle: committing %d outputs and positions %s", records, offsets)
        # The cut is made: records handed out from now on are outside this transaction. A periodic
        # cycle lets them into the pipeline while it commits (their outputs wait for the next
        # transaction); a revoke does not (they would belong to partitions on their way out).
        overlap = idle_timeout is None
        if overlap:
            self._outputs.hold()
            self._open.set()
        try:
            await self._txn.commit(offsets, group.group_metadata() if group is not None and offsets else None)
        except TransactionAborted as err:
            log.warning("exactly-once: %s", err)
            await self._abort(_abort_reason(err))
            return False
        except TransactionFenced as err:
            self._fence(str(err))
            return False
        finally:
            if overlap:
                self._outputs.release()
        self._positions.committed(dict(offsets))
        now = time.monotonic()
        self._metrics.committed(now - self._began, records)
        self._began = now
        self._outputs.produced = 0
        return True

    def _pending(self) -> bool:
        """Whether a cycle has work: outputs written, positions to commit, or records in flight
        (a revoke must wait for those: their outputs would land in a later transaction without
        their positions, and the partitions' next owner would answer them again)."""
        if self._outputs is not None and self._outputs.produced:
            return True
        return self._positions.in_flight() > 0 or bool(self._positions.to_commit())

    async def _idle(self, timeout: float | None) -> bool:
        positions = self._positions
        return await positions.wait_until(lambda: positions.in_flight() == 0, timeout)

    async def _abort(self, reason: str) -> None:
        """Abort the open transaction now; the rewind follows once the pipeline is empty."""
        assert self._txn is not None and self._outputs is not None
        self._open.clear()
        self._outputs.discarding = True
        self._must_abort = None
        try:
            await self._txn.abort()
        except TransactionFenced as err:
            self._fence(str(err))
            return
        self._metrics.aborted(reason)
        self._began = time.monotonic()
        log.warning("exactly-once: transaction aborted (%s); its records are processed again", reason)
        self._recovery = asyncio.ensure_future(self._recover())

    async def _recover(self) -> None:
        """Once every record handed out is answered (their outputs discarded), read each partition
        again from its last committed position, then let hand-outs go on."""
        assert self._outputs is not None
        await self._idle(None)
        group = self._group()
        owned = group.assignment() if group is not None else set()
        committed = {tp: part.committed for tp, part in self._positions.items() if tp in owned}
        for tp, offset in committed.items():
            self._positions.assign(tp, offset)
        self._outputs.produced = 0
        self._outputs.discarding = False
        if group is not None and committed:
            await group.rewind(committed)
        self._recovery = None
        if self._must_abort is None:
            self._open.set()
        else:
            asyncio.ensure_future(self.commit())

    def _recovering(self) -> bool:
        return self._recovery is not None and not self._recovery.done()

    def _fence(self, reason: str) -> None:
        if self._fenced:
            return
        self._fenced = True
        self._open.clear()  # nothing more is handed out; the worker stops
        self._metrics.aborted("fenced")
        self._on_fenced(f"exactly-once: this worker's producer was fenced, stopping: {reason}")

    async def revoking(self, tps: Sequence[TPKey], timeout: float) -> None:
        """Partitions are being revoked: commit what was answered (or abort) before they go."""
        if self._txn is None:
            return
        if not await self.commit(idle_timeout=timeout) and self._recovering():
            log.info("exactly-once: %s released after an abort; their next owner reads them again", tps)

    def lost(self, tps: Sequence[TPKey]) -> None:
        """Partitions were lost: the open transaction holds their outputs and must not commit."""
        self.must_abort("partitions_lost")


class _NoMetrics:
    def committed(self, seconds: float, records: int) -> None:
        """Not measured."""

    def aborted(self, reason: str) -> None:
        """Not measured."""


NO_TRANSACTION_METRICS: TransactionMetrics = _NoMetrics()


def _abort_reason(err: TransactionAborted) -> str:
    """The bounded label of a failed commit."""
    if isinstance(err, TransactionStuck):
        return "commit_stuck"
    if isinstance(err, TransactionBroken):
        return "producer_failed"
    return "commit_failed"
