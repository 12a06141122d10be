"""Which offsets of a partition may be committed: the positions every record before was answered.

A worker hands consumed records to the pipeline in chunks (consecutive records of one partition,
in offset order). A chunk is *done* when each of its records has its prediction or dead letter
acknowledged by the broker; chunks finish in any order. The position that may be committed is
the offset after the last record of the longest run of done chunks from the start: committing
it says "everything before this was answered", never more.

Offsets the broker skipped (compaction, transaction markers) need no bookkeeping: a position is
"the first offset not answered yet", so a hole between two chunks is passed as soon as the chunk
before it is done.

A position counts as committed only once the broker confirmed the commit
(:meth:`PartitionPositions.committed_to`): a failed commit leaves it where it was, and the same
position is committed again later.

Pure logic, no Kafka: ``streams/`` feeds it from the consumer, the unit tests from lists.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class Chunk:
    """Consecutive records of one partition handed out together."""

    first: int  # offset of the first record
    last: int  # offset of the last record
    timestamp_s: float | None  # broker timestamp of the first record, seconds since the epoch
    done: bool = False

    @property
    def size(self) -> int:
        """Offsets the chunk spans (records, when the partition has no holes there)."""
        return self.last - self.first + 1


class PartitionPositions:
    """Chunks of one partition from its committed position on, and the positions they give."""

    __slots__ = ("committed", "_chunks", "_counted", "_handed", "_done_to", "_in_flight")

    def __init__(self, start: int) -> None:
        #: The last position the broker confirmed as committed; until the first commit, ``start``
        #: (where the partition was assigned: the group's committed offset or the reset).
        self.committed = start
        self._chunks: deque[Chunk] = deque()  # from the committed position on, in offset order
        self._counted = 0  # chunks at the front of ``_chunks`` that are done and in ``_done_to``
        self._handed = start  # the position after the last record handed out
        self._done_to = start  # the position after the longest done run from the start
        self._in_flight = 0  # records handed out and not done

    @property
    def handed(self) -> int:
        """The offset after the last record handed out (where reading goes on)."""
        return self._handed

    @property
    def committable(self) -> int:
        """The offset after the last record of the longest done run: what a commit may say."""
        return self._done_to

    @property
    def in_flight(self) -> int:
        """Records handed out and not yet done."""
        return self._in_flight

    def hand_out(self, first: int, last: int, timestamp_s: float | None = None) -> Chunk:
        """Note records ``first``..``last`` (both included) handed to the pipeline; returns the
        chunk to pass to :meth:`finish` when all of them are done."""
        if first < self._handed:
            raise ValueError(f"offset {first} handed out again (next expected >= {self._handed})")
        chunk = Chunk(first, last, timestamp_s)
        self._chunks.append(chunk)
        self._handed = last + 1
        self._in_flight += chunk.size
        return chunk

    def finish(self, chunk: Chunk) -> None:
        """Every record of ``chunk`` is answered: move the committable position past what is done."""
        if chunk.done:
            return
        chunk.done = True
        self._in_flight -= chunk.size
        chunks, counted = self._chunks, self._counted
        if counted < len(chunks) and chunks[counted] is chunk:  # the first chunk not yet counted
            while counted < len(chunks) and chunks[counted].done:
                self._done_to = chunks[counted].last + 1
                counted += 1
            self._counted = counted

    def committed_to(self, position: int) -> None:
        """The broker confirmed a commit of ``position``: forget the chunks before it."""
        if position <= self.committed:
            return
        self.committed = position
        chunks = self._chunks
        while chunks and chunks[0].last < position and self._counted > 0:
            chunks.popleft()
            self._counted -= 1

    def oldest_uncommitted_s(self) -> float | None:
        """Broker timestamp of the first record after the committed position, if it was read."""
        for c in self._chunks:
            if c.last >= self.committed:
                return c.timestamp_s
        return None


TP = tuple[str, int]  # (topic, partition); Faust's TP named tuple is one


class Positions:
    """:class:`PartitionPositions` of every partition a worker owns, keyed by partition.

    An assignment replaces a partition's record (``assign``); a chunk of a partition revoked
    meanwhile is finished on its old record and changes nothing of the new one.
    """

    def __init__(self) -> None:
        self._parts: dict[TP, PartitionPositions] = {}
        self._waiters: list[tuple[Callable[[], bool], Callable[[], None]]] = []
        # Offsets handed out and not yet done, of every chunk: those of partitions revoked, lost
        # or assigned again since included (their records may still be in the pipeline).
        self._outstanding = 0

    def assign(self, tp: TP, start: int) -> PartitionPositions:
        """``tp`` is ours from ``start`` on (its committed offset, or where reading was reset to)."""
        part = self._parts[tp] = PartitionPositions(start)
        return part

    def revoke(self, tp: TP) -> PartitionPositions | None:
        """``tp`` is no longer ours; returns its record, if it had one."""
        return self._parts.pop(tp, None)

    def get(self, tp: TP) -> PartitionPositions | None:
        """The record of ``tp``, or None if it is not assigned."""
        return self._parts.get(tp)

    def __contains__(self, tp: TP) -> bool:
        return tp in self._parts

    def items(self) -> list[tuple[TP, PartitionPositions]]:
        """The partitions and their records (a copy: safe to change while iterating)."""
        return list(self._parts.items())

    def finisher(self, tp: TP, chunk: Chunk) -> Callable[[], None]:
        """A callback that finishes ``chunk`` of ``tp``'s current record, then wakes waiters."""
        part = self._parts[tp]
        self._outstanding += chunk.size

        def finished() -> None:
            if not chunk.done:
                self._outstanding -= chunk.size
            part.finish(chunk)
            if self._waiters:
                self._wake()

        return finished

    def to_commit(self, tps: Sequence[TP] | None = None) -> dict[TP, int]:
        """Positions worth committing: past what the broker confirmed (of ``tps``, default all)."""
        parts = self._parts
        keys = list(parts) if tps is None else [tp for tp in tps if tp in parts]
        return {tp: parts[tp].committable for tp in keys if parts[tp].committable > parts[tp].committed}

    def committed(self, offsets: dict[TP, int]) -> None:
        """The broker confirmed these commits (partitions no longer ours are ignored)."""
        for tp, position in offsets.items():
            part = self._parts.get(tp)
            if part is not None:
                part.committed_to(position)

    def in_flight(self, tps: Sequence[TP] | None = None) -> int:
        """Records handed out and not yet done: of the partitions ``tps`` own now, or, by default,
        of every chunk handed out (records of partitions given up since included)."""
        if tps is None:
            return self._outstanding
        parts = self._parts
        return sum(parts[tp].in_flight for tp in tps if tp in parts)

    def when(self, condition: Callable[[], bool], then: Callable[[], None]) -> None:
        """Call ``then`` once ``condition()`` holds (checked now and after each finished chunk)."""
        if condition():
            then()
        else:
            self._waiters.append((condition, then))

    async def wait_until(self, condition: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``condition()`` holds (checked now and after each finished chunk); False if
        ``timeout`` seconds passed first (None: no limit)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not done.done():
                done.set_result(None)

        self.when(condition, wake)
        try:
            await asyncio.wait_for(done, timeout)
            return True
        except TimeoutError:
            return False

    def _wake(self) -> None:
        waiting, self._waiters = self._waiters, []
        for condition, then in waiting:
            self.when(condition, then)
