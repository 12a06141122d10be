"""Limits in bytes: record keys, headers, and the parsed documents a chunk holds while it is decoded."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator
from unittest import mock

import orjson
import pytest

import engine.contract.json_input as json_input
from engine.contract.context import DecodeContext
from engine.contract.decode import decode, decode_many
from engine.errors import Reason
from engine.records import DeadLetter, Event, RawRecord
from engine.settings import LimitSettings, Settings
from engine.testing import model_spec, raw_record

LIMITS = LimitSettings(max_key_bytes=16, max_headers=3, max_header_bytes=40)
CTX = DecodeContext({"m": model_spec("m", 3)}, "m", LIMITS)
VALID = orjson.dumps({"id": "a", "features": [1, 2, 3]})
# 63 kB of JSON just under the element-scan threshold: 21,000 empty arrays, about 1.3 MB once parsed.
HEAVY = b'{"id": "h", "features": [' + b",".join([b"[]"] * 21_000) + b"]}"


def _letter(record: RawRecord, ctx: DecodeContext = CTX) -> DeadLetter:
    out = decode(record, ctx)
    assert isinstance(out, DeadLetter), out
    assert decode_many([record, raw_record(VALID)], ctx)[0] == out  # the batch path agrees
    return out


def test_a_key_at_the_limit_is_taken_and_one_byte_over_is_too_large() -> None:
    assert isinstance(decode(raw_record(VALID, key=b"k" * 16), CTX), Event)
    letter = _letter(raw_record(VALID, key=b"k" * 17))
    assert letter.reason is Reason.TOO_LARGE
    assert letter.message == "key is 17 bytes, over the limit of 16"


def test_more_headers_than_the_limit_is_too_large() -> None:
    assert isinstance(decode(raw_record(VALID, headers=(("a", b""),) * 3), CTX), Event)
    letter = _letter(raw_record(VALID, headers=(("a", b""),) * 4))
    assert letter.reason is Reason.TOO_LARGE
    assert letter.message == "record has 4 headers, over the limit of 3"


def test_header_names_and_values_over_the_byte_limit_are_too_large() -> None:
    at_limit = (("traceparent", b"x" * 9), ("é", b"y" * 18))  # 11 + 9 + 2 + 18 = 40
    assert isinstance(decode(raw_record(VALID, headers=at_limit), CTX), Event)
    letter = _letter(raw_record(VALID, headers=(("traceparent", b"x" * 10), ("é", b"y" * 18))))
    assert letter.reason is Reason.TOO_LARGE
    assert letter.message == "headers hold 41 bytes (names and values), over the limit of 40"


def test_a_null_header_value_counts_as_empty() -> None:
    headers: tuple[tuple[str, bytes], ...] = (("a", None),)  # type: ignore[assignment]  # as Kafka may give
    assert isinstance(decode(raw_record(VALID, headers=headers), CTX), Event)


def test_key_and_headers_are_checked_before_the_value_is_parsed() -> None:
    with mock.patch.object(json_input.orjson, "loads", side_effect=AssertionError("value parsed")):
        for record in (raw_record(b"{oops", key=b"k" * 17), raw_record(None, headers=(("a", b"x" * 41),))):
            out = decode(record, CTX)
            assert isinstance(out, DeadLetter) and out.reason is Reason.TOO_LARGE


def test_limits_come_from_sie_limits_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in [
        ("KEY_BYTES", "10"),
        ("HEADERS", "2"),
        ("HEADER_BYTES", "30"),
        ("HELD_VALUE_BYTES", "99"),
    ]:
        monkeypatch.setenv(f"SIE_LIMITS__MAX_{name}", value)
    limits = Settings().limits
    assert (limits.max_key_bytes, limits.max_headers, limits.max_header_bytes) == (10, 2, 30)
    assert limits.max_held_value_bytes == 99


def test_default_limits_take_ordinary_records() -> None:
    headers = (("traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"), ("tracestate", b"v=1"))
    record = raw_record(VALID, key=b"customer-123456", headers=headers)
    assert isinstance(decode(record, DecodeContext({"m": model_spec("m", 3)}, "m", LimitSettings())), Event)


# ------------------------------------------------------------- held documents


def _heavy_chunk(n: int) -> list[RawRecord]:
    return [raw_record(HEAVY.replace(b'"h"', f'"h{i}"'.encode()), offset=i) for i in range(n)]


def _peak_bytes(records: list[RawRecord], ctx: DecodeContext) -> int:
    tracemalloc.start()
    try:
        decode_many(records, ctx)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_chunk_of_events_just_under_the_scan_threshold_holds_parsed_documents_within_the_budget() -> None:
    records = _heavy_chunk(24)  # 1.5 MB of values; about 40 MB if all were held parsed at once
    ctx = DecodeContext({"m": model_spec("m", 30)}, "m", LimitSettings(max_held_value_bytes=200_000))
    assert len(HEAVY) < ctx.limits.max_elements  # the events do take the batch path
    assert _peak_bytes(records, ctx) < 12_000_000


def test_decoding_in_budgeted_groups_gives_each_record_what_decode_gives_it_alone() -> None:
    values = [orjson.dumps({"id": f"e{i}", "features": [i, 2.5, -1]}) for i in range(40)]
    values[7] = orjson.dumps({"id": "bad", "features": [1, 2]})
    values[20] = HEAVY
    records = [raw_record(v, offset=i) for i, v in enumerate(values)]
    ctx = DecodeContext({"m": model_spec("m", 3)}, "m", LimitSettings(max_held_value_bytes=300))
    groups: list[int] = []
    real = json_input.stacked

    def spy(t: object, group: list[object]) -> object:
        groups.append(len(group))
        return real(t, group)  # type: ignore[arg-type]

    with mock.patch.object(json_input, "stacked", side_effect=spy):
        outs = decode_many(records, ctx)
    assert len(groups) > 1 and max(groups) * 27 <= 300  # each value is at least 27 bytes
    for record, out in zip(records, outs, strict=True):
        alone = decode(record, ctx)
        assert type(out) is type(alone)
        if isinstance(out, Event) and isinstance(alone, Event):
            assert out.inputs["features"].tolist() == alone.inputs["features"].tolist()
        else:
            assert out == alone


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """Cyclic garbage collections started while the test runs (at the interpreter's default thresholds)."""
    started: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(info["generation"])

    thresholds = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    gc.callbacks.append(count)
    try:
        yield started
    finally:
        gc.callbacks.remove(count)
        gc.set_threshold(*thresholds)


def test_parsing_a_document_of_many_small_arrays_does_not_run_the_garbage_collector(
    collections: list[int],
) -> None:
    records = _heavy_chunk(8)  # 21,000 new lists each: about 30 collections per parse if left on
    decode_many(records, DecodeContext({"m": model_spec("m", 30)}, "m", LimitSettings()))
    assert len(collections) <= 2 * len(records)
