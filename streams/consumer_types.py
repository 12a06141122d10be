"""What the group consumer's thread and the event loop exchange: partitions, batches and the
rebalance callbacks the loop serves (:mod:`streams.group_consumer`, :mod:`streams.driver`)."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

TPKey = tuple[str, int]  # (topic, partition)
Batch = list[tuple[TPKey, list[Any]]]  # per partition, confluent Messages in offset order


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
