"""Issue 13: whatever happens to a record or a batch, each record ends as one prediction or one dead letter.

An exception while decoding, batching, inferring, encoding or producing for a
record or a batch becomes dead letters for exactly those records; the emitter
stays alive and the records behind them are predicted. If the pipeline cannot
go on anyway, it says so (``failure``, ``on_failure``) instead of stalling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest

import engine.pipeline as pipeline_module
from engine.contract.decode import decode as real_decode
from engine.errors import BackendUnavailable
from engine.testing import RecordingSink, ScriptedBackend, json_event, raw_records, sums
from tests.unit.poison_support import LibrdkafkaSizedSink, outcome_by_offset, pipeline


@pytest.fixture
def sized_sink() -> Iterator[LibrdkafkaSizedSink]:
    sink = LibrdkafkaSizedSink()
    yield sink
    sink.close_producer()


async def _through(p: Any, values: list[bytes | None], acked: list[int] | None = None, **kw: Any) -> None:
    await p.start()
    try:
        await asyncio.wait_for(p.submit(raw_records(values, acked, **kw)), 3)
    except asyncio.TimeoutError:
        raise AssertionError("submit blocked for good: the emitter is dead, consumption stalled") from None
    assert await p.drain(3), "records left unacknowledged: the pipeline stalled"


def _alive(p: Any) -> bool:
    return p._emitter is not None and not p._emitter.done()


async def test_events_of_different_lengths_for_a_variable_length_model_are_each_predicted() -> None:
    lengths = [3, 5, 3, 8, 5, 3]
    backend, sink = ScriptedBackend(), RecordingSink()
    p = pipeline(backend, sink, max_size=8)
    values = [json_event(i, [float(i)] * n, model="seq") for i, n in enumerate(lengths)]
    await _through(p, values)

    assert outcome_by_offset(sink) == dict.fromkeys(range(6), "prediction")
    sums_out = {
        orjson.loads(r.value)["id"]: orjson.loads(r.value)["outputs"]["probabilities"][0] for r in sink.sent
    }
    assert sums_out == {f"e{i}": float(i * n) for i, n in enumerate(lengths)}
    assert sorted((c.model, c.shape) for c in backend.calls) == [
        ("seq", (1, 8)),
        ("seq", (2, 5)),
        ("seq", (3, 3)),
    ]
    assert _alive(p)
    await p.stop()


async def test_events_of_one_length_keep_their_order_across_lengths() -> None:
    sink = RecordingSink()
    p = pipeline(ScriptedBackend(), sink, max_size=2)
    lengths = [2, 4, 2, 4, 2, 4, 2]
    await _through(p, [json_event(i, [1.0] * n, model="seq") for i, n in enumerate(lengths)])
    ids = [orjson.loads(r.value)["id"] for r in sink.on("out")]
    assert [i for i in ids if lengths[int(i[1:])] == 2] == ["e0", "e2", "e4", "e6"]
    assert [i for i in ids if lengths[int(i[1:])] == 4] == ["e1", "e3", "e5"]
    await p.stop()


async def test_an_unexpected_backend_error_dead_letters_only_its_batch_and_the_emitter_lives_on() -> None:
    def crash(x: np.ndarray) -> dict[str, np.ndarray]:
        raise ValueError("the client library broke")

    sink = RecordingSink()
    p = pipeline(ScriptedBackend([crash]), sink, max_size=2, in_flight=1)
    await _through(p, [json_event(i) for i in range(6)])
    outcomes = outcome_by_offset(sink)
    assert outcomes == {0: "inference_error", 1: "inference_error"} | dict.fromkeys(range(2, 6), "prediction")
    message = dict(sink.on("dlq")[0].headers)["error.message"]
    assert b"ValueError" in message and b"the client library broke" in message
    assert _alive(p) and p.failure is None
    await p.stop()


async def test_an_answer_with_too_few_rows_dead_letters_its_batch() -> None:
    def short(x: np.ndarray) -> dict[str, np.ndarray]:
        return {"probabilities": sums(x)["probabilities"][:-1]}

    sink = RecordingSink()
    p = pipeline(ScriptedBackend([short]), sink, max_size=3, in_flight=1)
    await _through(p, [json_event(i) for i in range(5)])
    assert outcome_by_offset(sink) == dict.fromkeys(range(3), "inference_error") | {
        3: "prediction",
        4: "prediction",
    }
    assert b"2 rows" in dict(sink.on("dlq")[0].headers)["error.message"]
    assert _alive(p)
    await p.stop()


async def test_a_prediction_that_cannot_be_encoded_dead_letters_only_its_event() -> None:
    def odd_row(x: np.ndarray) -> dict[str, np.ndarray]:
        out = np.empty(len(x), dtype=object)
        out[:] = [[0.5, 0.5]] * len(x)
        out[1] = object()  # orjson cannot serialise it
        return {"probabilities": out}

    sink = RecordingSink()
    p = pipeline(ScriptedBackend([odd_row]), sink, max_size=3, in_flight=1)
    await _through(p, [json_event(i) for i in range(3)])
    assert outcome_by_offset(sink) == {0: "prediction", 1: "inference_error", 2: "prediction"}
    assert b"cannot be encoded" in dict(sink.on("dlq")[0].headers)["error.message"]
    await p.stop()


async def test_a_prediction_larger_than_the_broker_accepts_is_dead_lettered_too_large(
    sized_sink: LibrdkafkaSizedSink,
) -> None:
    def huge_for_99(x: np.ndarray) -> dict[str, np.ndarray]:
        width = 200_000 if x[0, 0] == 99 else 2
        return {"probabilities": np.full((len(x), width), 0.123456789, np.float32)}

    p = pipeline(ScriptedBackend([huge_for_99] * 3), sized_sink, max_size=1, in_flight=1)
    await _through(p, [json_event(0), json_event(1, [99, 0, 0]), json_event(2)])
    assert outcome_by_offset(sized_sink) == {0: "prediction", 1: "too_large", 2: "prediction"}
    assert b"over the limit of 1000000" in dict(sized_sink.on("dlq")[0].headers)["error.message"]
    assert _alive(p)
    await p.stop()


async def test_a_decoder_crash_dead_letters_exactly_the_records_it_crashed_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken_many(*_: Any) -> list[Any]:
        raise RuntimeError("decoder bug")

    def broken_on_two(record: Any, ctx: Any) -> Any:
        if record.source.offset == 2:
            raise RuntimeError("decoder bug on this one")
        return real_decode(record, ctx)

    monkeypatch.setattr(pipeline_module, "decode_many", broken_many)
    monkeypatch.setattr(pipeline_module, "decode", broken_on_two, raising=False)
    sink = RecordingSink()
    p = pipeline(ScriptedBackend(), sink)
    await _through(p, [json_event(i) for i in range(4)])
    assert outcome_by_offset(sink) == {0: "prediction", 1: "prediction", 2: "invalid_event", 3: "prediction"}
    await p.stop()


async def test_a_dead_letter_of_a_value_near_the_size_limit_is_produced_truncated(
    sized_sink: LibrdkafkaSizedSink,
) -> None:
    near = b"{" + b"x" * 999_950  # under the 1,000,000-byte input limit: invalid_json, not too_large
    over = b'{"id": "big", "features": [' + b"1, " * 346_600 + b"1]}"  # 1,039,830 bytes: too_large
    trace = (("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"), ("tenant", b"t" * 300))
    acked: list[int] = []
    p = pipeline(ScriptedBackend(), sized_sink)
    await _through(p, [json_event(0), near, over, json_event(3)], acked, headers=trace)

    assert outcome_by_offset(sized_sink) == {
        0: "prediction",
        1: "invalid_json",
        2: "too_large",
        3: "prediction",
    }
    assert sorted(acked) == [0, 1, 2, 3]
    for letter, original in zip(sized_sink.on("dlq"), (near, over), strict=True):
        headers = dict(letter.headers)
        assert headers["error.value_truncated"] == b"true"
        assert headers["error.value_size"] == str(len(original)).encode()
        assert letter.value and original.startswith(letter.value) and len(letter.value) > 990_000
        assert headers["traceparent"] == trace[0][1] and letter.key is not None
    assert _alive(p)
    await p.stop()


async def test_a_pipeline_task_that_dies_makes_the_pipeline_report_a_failure() -> None:
    failures: list[str] = []
    p = pipeline(ScriptedBackend(), RecordingSink(), on_failure=failures.append)

    async def broken_get() -> Any:
        raise RuntimeError("queue broke")

    p._fifo.get = broken_get  # type: ignore[method-assign]
    await p.start()
    await asyncio.sleep(0.01)
    assert p.failure is not None and "pipeline-emitter" in p.failure and "queue broke" in p.failure
    assert failures == [p.failure]
    await p.stop(timeout=0)
    assert failures == [p.failure], "stopping is no failure"


async def test_outputs_the_producer_gives_up_on_are_never_acknowledged_and_fail_the_pipeline() -> None:
    class GivingUpSink(RecordingSink):
        async def send(self, records: Any) -> asyncio.Future[None]:
            self.sent.extend(records)
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.set_exception(RuntimeError("MSG_SIZE_TOO_LARGE on dlq, given up"))
            return future

    acked: list[int] = []
    p = pipeline(ScriptedBackend(), GivingUpSink())
    await p.start()
    await p.submit(raw_records([json_event(0), b"{bad"], acked))
    assert not await p.drain(0.3)
    assert acked == [], "a record whose output was given up must never be committed"
    assert p.failure is not None and "given up" in p.failure
    await p.stop(timeout=0)


async def test_retryable_errors_on_variable_length_batches_are_retried_never_dead_lettered() -> None:
    def unavailable(x: np.ndarray) -> dict[str, np.ndarray]:
        raise BackendUnavailable("UNAVAILABLE: restarting")

    sink = RecordingSink()
    p = pipeline(ScriptedBackend([unavailable] * 5), sink, max_size=8)
    await _through(p, [json_event(i, [1.0] * (2 + i % 3), model="seq") for i in range(6)])
    assert outcome_by_offset(sink) == dict.fromkeys(range(6), "prediction")
    await p.stop()
