"""Fetched records on their way from the consumer thread to the event loop.

The consumer thread (:mod:`streams.group_consumer`) puts each fetched batch here; the loop takes
everything put so far at once (:meth:`FetchBuffer.take`). The thread waits for room
(:meth:`FetchBuffer.wait_for_room`) when ``limit`` records wait; the loop never waits for the
thread.

:func:`by_partition` groups what one poll fetched.

A partition *rewound* (exactly-once, after an aborted transaction) starts a new generation:
records fetched for it before are dropped here, and a batch the loop took before the rewind is
recognised by :meth:`FetchBuffer.is_current`, so none of them is handed out.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Container, Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from streams.consumer_types import Batch, TPKey

log = logging.getLogger(__name__)


class FetchBuffer:
    """A thread-safe queue of fetched batches with a record count and per-partition generations."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self._loop = loop
        self.limit = limit
        self._lock = threading.Lock()
        self._batches: deque[tuple[Batch, dict[TPKey, int]]] = deque()  # with the generations then
        self._count = 0
        self._generation: dict[TPKey, int] = {}  # rewinds per partition: replaced whole, never changed
        self._taken: dict[TPKey, int] = {}  # the generations of the last batch taken
        self._arrived = asyncio.Event()
        self._wake_pending = False
        self._room = threading.Event()  # set by the loop when it takes the buffer

    # -- the thread's side -------------------------------------------------------------------

    def put(self, batch: Batch) -> None:
        """Add a fetched batch and wake the loop (one wake-up per take, however many puts)."""
        with self._lock:
            self._batches.append((batch, self._generation))
            self._count += sum(len(v) for _, v in batch)
            wake, self._wake_pending = not self._wake_pending, True
        if wake:
            self._loop.call_soon_threadsafe(self._arrived.set)

    def count(self) -> int:
        """Records waiting; at the limit, the next :meth:`wait_for_room` waits."""
        with self._lock:
            if self._count >= self.limit:
                self._room.clear()
            return self._count

    def wait_for_room(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for the loop to take what waits."""
        self._room.wait(timeout)

    def drop(self, tps: Iterable[TPKey]) -> None:
        """Forget the records waiting for ``tps``."""
        gone = set(tps)
        with self._lock:
            kept: deque[tuple[Batch, dict[TPKey, int]]] = deque()
            for batch, generation in self._batches:
                part = [(k, v) for k, v in batch if k not in gone]
                if part:
                    kept.append((part, generation))
            self._batches = kept
            self._count = sum(len(v) for b, _ in kept for _, v in b)

    def rewound(self, tps: Iterable[TPKey]) -> None:
        """``tps`` are read again from an earlier offset: what was fetched for them before is stale."""
        keys = set(tps)
        generation = dict(self._generation)
        for key in keys:
            generation[key] = generation.get(key, 0) + 1
        with self._lock:
            self._generation = generation
        self.drop(keys)

    # -- the loop's side ---------------------------------------------------------------------

    async def take(self) -> Batch:
        """Wait for fetched records and take them all (several batches' worth, in order)."""
        while True:
            with self._lock:
                entries, self._batches = self._batches, deque()
                self._taken = current = self._generation
                batches = [b if g is current else _current_parts(b, g, current) for b, g in entries]
                batches = [b for b in batches if b]
                self._count = 0
                # Under the lock, so the thread's next put sees it and wakes us: a wake-up
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


def by_partition(messages: Iterable[Any], assigned: Container[TPKey]) -> Batch:
    """Fetched ``messages`` grouped by partition, in order, for the partitions still ``assigned``;
    an error event is logged (a fatal one raises)."""
    parts: dict[TPKey, list[Any]] = {}
    for m in messages:
        err = m.error()
        if err is not None:
            if err.fatal():
                raise KafkaException(err)
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("Kafka consumer: %s", err)
            continue
        key = (m.topic(), m.partition())
        part = parts.get(key)
        if part is None:
            parts[key] = [m]
        else:
            part.append(m)
    return [(k, v) for k, v in parts.items() if k in assigned]


def _current_parts(batch: Batch, fetched: dict[TPKey, int], current: dict[TPKey, int]) -> Batch:
    """The parts of ``batch`` (fetched at generations ``fetched``) not rewound since."""
    return [(k, v) for k, v in batch if fetched.get(k, 0) == current.get(k, 0)]
