"""engine/testing.py: the test doubles behave as their docstrings say (users' tests rely on them too)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from engine.errors import BackendUnavailable, InferenceFailed
from engine.records import OutRecord
from engine.testing import (
    InstantClock,
    ManualClock,
    RecordingSink,
    ScriptedBackend,
    json_event,
    raw_records,
    sums,
)

X = {"features": np.array([[1, 2, 3], [4, 5, 6]], np.float32)}


async def test_the_backend_plays_its_script_then_sums_and_records_each_call() -> None:
    backend = ScriptedBackend([lambda x: {"probabilities": x[:, :2]}], version="7")
    backend.fail_next(BackendUnavailable("down"))
    first = await backend.infer("m", X, version="2")
    assert first.model_version == "2" and first.outputs["probabilities"].tolist() == [[1, 2], [4, 5]]
    with pytest.raises(BackendUnavailable):
        await backend.infer("m", X, headers={"traceparent": "t"})
    third = await backend.infer("m", X)
    assert third.model_version == "7" and np.array_equal(
        third.outputs["probabilities"], sums(X["features"])["probabilities"]
    )
    assert [(c.model, c.version, c.rows) for c in backend.calls] == [
        ("m", "2", 2),
        ("m", "", 2),
        ("m", "", 2),
    ]
    assert backend.calls[1].headers == {"traceparent": "t"}
    assert await backend.model_versions() == {"m": ["7"]}


async def test_a_broken_model_fails_and_a_gate_holds_calls_until_it_opens() -> None:
    backend = ScriptedBackend(broken=frozenset({"bad"}))
    with pytest.raises(InferenceFailed):
        await backend.infer("bad", X)
    backend.gate = asyncio.Event()
    call = asyncio.ensure_future(backend.infer("m", X))
    await asyncio.sleep(0.01)
    assert not call.done() and len(backend.calls) == 2
    backend.gate.set()
    assert (await call).model == "m"


async def test_the_sink_acknowledges_at_once_or_on_release_while_holding() -> None:
    sink = RecordingSink()
    assert (await sink.send([OutRecord("out", b"k", b"v", ())])).done()
    sink.hold = True
    held = await sink.send([OutRecord("dlq", b"k", b"v", ())])
    assert not held.done() and [r.topic for r in sink.on("dlq")] == ["dlq"]
    sink.release()
    assert held.done() and len(sink.sent) == 2


async def test_clocks_move_when_told_or_skip_the_wait() -> None:
    clock, fired = ManualClock(), []
    clock.call_later(1.0, lambda: fired.append("a"))
    clock.call_later(2.0, lambda: fired.append("b")).cancel()
    await clock.sleep(5.0)
    assert clock.now() == 5.0 and fired == ["a"]
    instant, later = InstantClock(), []
    timer = instant.call_later(30.0, lambda: later.append("due"))
    await instant.sleep(60.0)
    assert later == [], "the sleep returned long before a 30 s timer on the loop was due"
    timer.cancel()


def test_record_builders_number_offsets_and_note_acknowledgements() -> None:
    acked: list[int] = []
    recs = raw_records([json_event(0), json_event(1, [2, 3, 4])], acked)
    assert [(r.source.offset, r.key) for r in recs] == [(0, b"k0"), (1, b"k1")]
    assert recs[1].value == b'{"id":"e1","model":"m","features":[2,3,4]}'
    recs[1].completion.done()
    assert acked == [1]
