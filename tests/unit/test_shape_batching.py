"""Micro-batches of a variable-length model hold events of one shape only, so every batch stacks."""

from __future__ import annotations

import numpy as np

from engine.batcher import MicroBatcher
from engine.records import Batch, Event
from engine.testing import ManualClock, raw_record


def _event(i: int, length: int, model: str = "seq") -> Event:
    inputs = {"sequence": np.full(length, i, np.float32)}
    return Event(id=str(i), model=model, inputs=inputs, record=raw_record(b"", i))


def _batcher(
    max_size: int = 3, shaped: tuple[str, ...] = ("seq",)
) -> tuple[MicroBatcher, ManualClock, list[Batch]]:
    clock = ManualClock()
    out: list[Batch] = []
    b = MicroBatcher(max_size=max_size, max_delay=0.01, clock=clock, emit=out.append, shaped_models=shaped)
    return b, clock, out


def _ids(batch: Batch) -> list[str]:
    return [e.id for e in batch.events]


def test_events_of_a_variable_length_model_are_batched_by_length() -> None:
    b, clock, out = _batcher(max_size=3)
    lengths = [3, 5, 3, 5, 3, 7]
    b.add_all(_event(i, n) for i, n in enumerate(lengths))
    assert [_ids(x) for x in out] == [["0", "2", "4"]], "the length-3 batch filled first"
    clock.advance(0.01)
    assert [_ids(x) for x in out[1:]] == [["1", "3"], ["5"]]
    for batch in out:
        stacked = batch.stacked_inputs()["sequence"]
        assert stacked.shape == (len(batch), len(batch.events[0].inputs["sequence"]))


def test_lengths_batched_apart_still_flush_oldest_first() -> None:
    b, _, out = _batcher(max_size=10)
    b.add_all(_event(i, n) for i, n in enumerate([4, 2, 4, 2]))
    b.flush_all()
    assert [_ids(x) for x in out] == [["0", "2"], ["1", "3"]]


def test_pinned_versions_and_lengths_both_split_batches() -> None:
    b, _, out = _batcher(max_size=10)
    events = [_event(0, 2), _event(1, 2), _event(2, 3)]
    pinned = Event(
        id="3",
        model="seq",
        inputs={"sequence": np.zeros(2, np.float32)},
        record=raw_record(b"", 3),
        version="2",
    )
    b.add_all([*events, pinned])
    b.flush_all()
    assert sorted(_ids(x) for x in out) == [["0", "1"], ["2"], ["3"]]
    assert [x.version for x in out if _ids(x) == ["3"]] == ["2"]


def test_fixed_size_models_are_not_split_by_shape() -> None:
    b, _, out = _batcher(max_size=10, shaped=())
    b.add_all(_event(i, 4, model="m") for i in range(5))
    b.flush_all()
    assert [_ids(x) for x in out] == [["0", "1", "2", "3", "4"]]
