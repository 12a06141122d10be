"""Property: whatever the records and whatever Triton answers, each record ends as exactly one output.

Hypothesis drives the whole pipeline (decoder, shape batching, retries,
encoding, dead letters) with a scripted fake Triton and a fake sink that
refuses what librdkafka would refuse (a record over the size limit). Records
are arbitrary bytes, keys and headers, valid events of a fixed-size and of a
variable-length model, and values around the size limit; Triton's answers are
drawn from: fine, unavailable (retried), a fatal error, an unexpected
exception, too few rows, rows that cannot be encoded, rows too large to
produce. Checked every time: every record is acknowledged exactly once, the
sink got exactly one output per record (one prediction or one dead letter),
each fits the limit, nothing retryable was dead-lettered, and the emitter is
alive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.dlq import record_size
from engine.errors import BackendUnavailable, InferenceFailed, Reason
from engine.records import OutRecord
from engine.settings import LimitSettings
from engine.testing import RecordingSink, ScriptedBackend, raw_records, sums
from tests.unit.poison_support import pipeline

LIMIT = 3000
LIMITS = LimitSettings(max_message_bytes=LIMIT, max_elements=64, max_id_length=40)
REASONS = {r.value for r in Reason}


def _behaviour(name: str) -> Any:
    def unavailable(x: np.ndarray) -> Any:
        raise BackendUnavailable("UNAVAILABLE: restarting")

    def fatal(x: np.ndarray) -> Any:
        raise InferenceFailed("INVALID_ARGUMENT: rejected")

    def crash(x: np.ndarray) -> Any:
        raise ValueError("client bug")

    def short(x: np.ndarray) -> Any:
        return {"probabilities": sums(x)["probabilities"][:-1]}

    def garbage(x: np.ndarray) -> Any:
        out = np.empty(len(x), dtype=object)
        out[:] = [object() if i % 2 else [0.5, 0.5] for i in range(len(x))]
        return {"probabilities": out}

    def huge(x: np.ndarray) -> Any:
        return {"probabilities": np.full((len(x), 1000), 0.123456, np.float32)}

    named = {"ok": sums, "unavailable": unavailable, "fatal": fatal, "crash": crash}
    return (named | {"short": short, "garbage": garbage, "huge": huge})[name]


class StrictSink(RecordingSink):
    """Refuses a record over the limit, as librdkafka's ``produce`` does (raising)."""

    async def send(self, records: Sequence[OutRecord]) -> asyncio.Future[None]:
        for r in records:
            assert record_size(r) <= LIMIT, f"an output of {record_size(r)} bytes would be refused"
        return await super().send(records)


floats = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32)
values = st.one_of(
    st.binary(max_size=120),
    st.binary(min_size=LIMIT - 200, max_size=LIMIT + 200),
    st.tuples(st.just("m"), st.lists(floats, min_size=3, max_size=3)),
    st.tuples(st.just("seq"), st.lists(floats, max_size=8)),
    st.tuples(st.just("seq"), st.lists(st.lists(floats, min_size=2, max_size=2), min_size=1, max_size=3)),
)
keys = st.one_of(st.none(), st.binary(max_size=40), st.binary(min_size=LIMIT - 100, max_size=LIMIT + 100))
headers = st.lists(
    st.tuples(st.text(max_size=12), st.binary(max_size=60) | st.binary(min_size=1000, max_size=2000)),
    max_size=3,
).map(tuple)
behaviours = st.lists(
    st.sampled_from(["ok", "unavailable", "fatal", "crash", "short", "garbage", "huge"]), max_size=12
)


def _value(offset: int, drawn: Any) -> bytes:
    if isinstance(drawn, bytes):
        return drawn
    model, features = drawn
    return orjson.dumps({"id": f"e{offset}", "model": model, "features": features})


async def _scenario(drawn: list[tuple[Any, Any, Any]], script: list[str], max_size: int, chunk: int) -> None:
    sink = StrictSink()
    backend = ScriptedBackend([_behaviour(name) for name in script])
    p = pipeline(backend, sink, max_size=max_size, in_flight=2, limits=LIMITS)
    acked: list[int] = []
    recs = raw_records(
        [_value(i, v) for i, (v, _, _) in enumerate(drawn)],
        acked,
        keys=[k for _, k, _ in drawn],
        header_sets=[h for _, _, h in drawn],
    )
    await p.start()
    for start in range(0, len(recs), chunk):
        await asyncio.wait_for(p.submit(recs[start : start + chunk]), 5)
    assert await p.drain(5), "records left unacknowledged"

    assert sorted(acked) == list(range(len(recs))), "each record acknowledged exactly once"
    assert len(sink.sent) == len(recs), "one output per record"
    dead = [dict(r.headers) for r in sink.on("dlq")]
    assert len({d["source.offset"] for d in dead}) == len(dead)
    assert {d["error.reason"].decode() for d in dead} <= REASONS
    assert not any(b"UNAVAILABLE" in d["error.message"] for d in dead), (
        "retryable errors are never dead letters"
    )
    predicted = [orjson.loads(r.value or b"{}") for r in sink.on("out")]
    dead_offsets = {int(d["source.offset"]) for d in dead}
    for doc in predicted:
        assert int(doc["id"][1:]) not in dead_offsets
    assert p._emitter is not None and not p._emitter.done() and p.failure is None
    await p.stop(timeout=1)


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    drawn=st.lists(st.tuples(values, keys, headers), min_size=1, max_size=24),
    script=behaviours,
    max_size=st.integers(1, 6),
    chunk=st.integers(1, 24),
)
def test_every_record_ends_as_exactly_one_prediction_or_dead_letter_and_the_emitter_lives(
    drawn: list[tuple[Any, Any, Any]], script: list[str], max_size: int, chunk: int
) -> None:
    asyncio.run(_scenario(drawn, script, max_size, chunk))
