"""Micro-batching by size and deadline, per model, in order."""

from __future__ import annotations

import numpy as np
import pytest

from engine.batcher import MicroBatcher
from engine.records import Batch, Event
from engine.testing import ManualClock, raw_record


def _event(i: int, model: str = "m") -> Event:
    return Event(
        id=str(i), model=model, inputs={"features": np.zeros(3, np.float32)}, record=raw_record(b"", i)
    )


def _batcher(max_size: int = 4, max_delay: float = 0.01, caps: dict[str, int] | None = None):
    clock = ManualClock()
    out: list[Batch] = []
    b = MicroBatcher(
        max_size=max_size, max_delay=max_delay, clock=clock, emit=out.append, model_max_sizes=caps
    )
    return b, clock, out


def _ids(batch: Batch) -> list[str]:
    return [e.id for e in batch.events]


def test_batcher_flushes_when_full() -> None:
    b, _, out = _batcher(max_size=3)
    b.add_all(_event(i) for i in range(7))
    assert [_ids(x) for x in out] == [["0", "1", "2"], ["3", "4", "5"]]
    assert b.pending == 1


def test_batcher_flushes_when_deadline_passes() -> None:
    b, clock, out = _batcher(max_size=100, max_delay=0.01)
    b.add(_event(0))
    clock.advance(0.005)
    b.add(_event(1))
    assert out == []
    clock.advance(0.005)
    assert [_ids(x) for x in out] == [["0", "1"]]
    assert out[0].opened_at == 0.0


def test_batcher_deadline_counts_from_first_event_of_each_batch() -> None:
    b, clock, out = _batcher(max_size=2, max_delay=0.01)
    b.add_all([_event(0), _event(1)])  # full: flushed, its timer cancelled
    clock.advance(0.006)
    b.add(_event(2))
    clock.advance(0.006)  # the first batch's old deadline has passed; not this one's
    assert [_ids(x) for x in out] == [["0", "1"]]
    clock.advance(0.004)
    assert [_ids(x) for x in out] == [["0", "1"], ["2"]]


def test_batcher_keeps_models_apart() -> None:
    b, clock, out = _batcher(max_size=2)
    b.add_all([_event(0, "a"), _event(1, "b"), _event(2, "a"), _event(3, "b")])
    assert [(x.model, _ids(x)) for x in out] == [("a", ["0", "2"]), ("b", ["1", "3"])]


def test_batcher_keeps_arrival_order_across_batches() -> None:
    b, clock, out = _batcher(max_size=5)
    b.add_all(_event(i) for i in range(12))
    clock.advance(1)
    assert [e for x in out for e in _ids(x)] == [str(i) for i in range(12)]


def test_batcher_caps_size_at_models_max_batch() -> None:
    b, _, out = _batcher(max_size=10, caps={"small": 2})
    b.add_all([_event(0, "small"), _event(1, "small"), _event(2, "big")])
    assert [(x.model, len(x)) for x in out] == [("small", 2)]
    assert b.limit_for("big") == 10


def test_flush_all_emits_oldest_first() -> None:
    b, clock, out = _batcher(max_size=10)
    b.add(_event(0, "late"))
    clock.advance(0.001)
    b.add(_event(1, "later"))
    b.flush_all()
    assert [x.model for x in out] == ["late", "later"]
    assert b.pending == 0


def test_zero_delay_sends_each_event_alone() -> None:
    b, _, out = _batcher(max_size=10, max_delay=0)
    b.add_all([_event(0), _event(1)])
    assert [len(x) for x in out] == [1, 1]


def test_batch_stacks_inputs_on_a_batch_axis() -> None:
    b, _, out = _batcher(max_size=2)
    b.add_all([_event(0), _event(1)])
    assert out[0].stacked_inputs()["features"].shape == (2, 3)


def test_batcher_rejects_bad_size() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(max_size=0, max_delay=1, clock=ManualClock(), emit=lambda b: None)
