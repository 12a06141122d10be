"""Micro-batching of valid events per model, by size and by deadline.

A model's batch opens with its first event and is flushed when it holds
``max_size`` events or ``max_delay`` seconds after it opened, whichever comes
first. Events keep their arrival order inside and across a model's batches,
and flushed batches are handed to ``emit`` in the order they were closed.

Events share a batch only when they can be stacked into one request: same
model, same pinned version and, for a model with a variable dimension (``-1``
in its config), the same input shapes - events of lengths 3 and 5 go to
the backend in two requests, never through one ``np.stack`` that would fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from engine.clock import Cancellable, Clock
from engine.records import Batch, Event

BatchKey = tuple[str, str, tuple[tuple[int, ...], ...]]


def batch_key(event: Event, by_shape: bool = False) -> BatchKey:
    """Events share a batch when they go to the same model and pinned version (and, ``by_shape``,
    have the same input shapes)."""
    shapes = tuple(a.shape for a in event.inputs.values()) if by_shape else ()
    return event.model, event.version, shapes


class _Open:
    __slots__ = ("events", "opened_at", "timer")

    def __init__(self, opened_at: float) -> None:
        self.events: list[Event] = []
        self.opened_at = opened_at
        self.timer: Cancellable | None = None


class MicroBatcher:
    """Collects events into per-model batches; see the module docstring."""

    def __init__(
        self,
        *,
        max_size: int,
        max_delay: float,
        clock: Clock,
        emit: Callable[[Batch], None],
        model_max_sizes: Mapping[str, int] | None = None,
        shaped_models: Iterable[str] = (),
    ) -> None:
        if max_size <= 0:
            raise ValueError("max_size must be positive")
        self._max_size = max_size
        self._max_delay = max_delay
        self._clock = clock
        self._emit = emit
        self._model_max = dict(model_max_sizes or {})
        self._shaped = frozenset(shaped_models)  # models with a variable dimension: batched by shape
        self._open: dict[BatchKey, _Open] = {}

    @property
    def max_delay(self) -> float:
        """The current deadline, seconds."""
        return self._max_delay

    def set_max_delay(self, seconds: float) -> None:
        """Change the deadline of batches opened from now on (adaptive batching)."""
        self._max_delay = max(seconds, 0.0)

    def limit_for(self, model: str) -> int:
        """The batch size limit for ``model``: ours, capped by the model's own."""
        cap = self._model_max.get(model, 0)
        return min(self._max_size, cap) if cap > 0 else self._max_size

    @property
    def pending(self) -> int:
        """Events held in open batches."""
        return sum(len(o.events) for o in self._open.values())

    def add(self, event: Event) -> None:
        """Add one event; flushes its model's batch if that fills it."""
        key = batch_key(event, event.model in self._shaped)
        batch = self._open.get(key)
        if batch is None:
            batch = self._open[key] = _Open(self._clock.now())
            if self._max_delay > 0:
                batch.timer = self._clock.call_later(self._max_delay, lambda: self._expire(key, batch))
        batch.events.append(event)
        if len(batch.events) >= self.limit_for(event.model) or self._max_delay <= 0:
            self.flush_batch(key)

    def add_all(self, events: Iterable[Event]) -> None:
        """Add events in order."""
        for event in events:
            self.add(event)

    def flush_batch(self, key: BatchKey) -> None:
        """Close and emit the open batch of ``key`` (a :func:`batch_key`), if any."""
        batch = self._open.pop(key, None)
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
        first = batch.events[0]
        events, opened = tuple(batch.events), batch.opened_at
        self._emit(Batch(model=first.model, events=events, opened_at=opened, version=first.version))

    def flush_all(self) -> None:
        """Emit every open batch, oldest first."""
        for key in sorted(self._open, key=lambda k: self._open[k].opened_at):
            self.flush_batch(key)

    def _expire(self, key: BatchKey, batch: _Open) -> None:
        if self._open.get(key) is batch:
            self.flush_batch(key)
