"""A dead letter always fits the broker: a value near the size limit is truncated, and the headers say so."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaException, Producer

from engine.dlq import dead_letter_record, fit_record, record_size
from engine.errors import Reason
from engine.records import DeadLetter, OutRecord
from engine.testing import raw_record

LIMIT = 1_000_000
TRACE = ("traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01")


def _letter(
    value: bytes | None, key: bytes | None = b"k", headers: tuple[tuple[str, bytes], ...] = ()
) -> DeadLetter:
    return DeadLetter(
        raw_record(value, offset=7, key=key, headers=headers), Reason.TOO_LARGE, "value is too large"
    )


@pytest.fixture
def librdkafka() -> Iterator[Producer]:
    """A real producer that connects nowhere: its ``produce`` applies librdkafka's own size check."""
    producer = Producer({"bootstrap.servers": "127.0.0.1:9", "log_level": 0})
    yield producer
    producer.purge()
    producer.flush(0)


def _produce(producer: Producer, record: OutRecord) -> None:
    producer.produce(record.topic, value=record.value, key=record.key, headers=list(record.headers) or None)


def test_a_dead_letter_that_fits_keeps_its_value_unchanged_and_says_nothing_of_truncation() -> None:
    out = dead_letter_record(_letter(b"x" * 1000, headers=(TRACE,)), "dlq", max_bytes=LIMIT)
    headers = dict(out.headers)
    assert out.value == b"x" * 1000 and out.key == b"k"
    assert "error.value_truncated" not in headers and headers["traceparent"] == TRACE[1]


@pytest.mark.parametrize("size", [999_600, 999_990, 1_000_000, 1_048_000])
def test_a_dead_letter_of_a_value_near_the_limit_is_truncated_to_fit_and_says_so(size: int) -> None:
    value = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    out = dead_letter_record(_letter(value, headers=(TRACE, ("tenant", b"t" * 500))), "dlq", max_bytes=LIMIT)
    headers = dict(out.headers)
    assert record_size(out) <= LIMIT
    assert headers["error.value_truncated"] == b"true" and headers["error.value_size"] == str(size).encode()
    assert out.value is not None and value.startswith(out.value) and len(out.value) > LIMIT - 2_000
    assert headers["error.reason"] == b"too_large" and headers["source.offset"] == b"7"
    assert headers["traceparent"] == TRACE[1] and headers["tenant"] == b"t" * 500 and out.key == b"k"


@pytest.mark.parametrize("size", [999_990, 1_000_000, 1_048_000])
def test_librdkafka_accepts_the_truncated_dead_letter_it_refuses_whole(
    size: int, librdkafka: Producer
) -> None:
    letter = _letter(b"v" * size, headers=(TRACE,))
    with pytest.raises(KafkaException, match="MSG_SIZE_TOO_LARGE"):
        _produce(librdkafka, dead_letter_record(letter, "dlq"))
    _produce(librdkafka, dead_letter_record(letter, "dlq", max_bytes=LIMIT))


def test_a_huge_key_and_headers_are_cut_too_so_the_record_always_fits(librdkafka: Producer) -> None:
    headers = (TRACE, ("big", b"h" * 600_000), ("other", b"o" * 10))
    out = dead_letter_record(
        _letter(b"x" * 10, key=b"k" * 1_040_000, headers=headers), "dlq", max_bytes=LIMIT
    )
    got = dict(out.headers)
    assert record_size(out) <= LIMIT
    assert got["error.headers_dropped"] == b"3" and "big" not in got and "traceparent" not in got
    assert got["error.key_truncated"] == b"true" and got["error.key_size"] == b"1040000"
    assert out.key is not None and 990_000 < len(out.key) < 1_000_000 and out.value == b""
    assert got["error.reason"] == b"too_large"
    _produce(librdkafka, out)


def test_a_small_limit_is_respected_whatever_was_in_the_record() -> None:
    record = dead_letter_record(_letter(b"x" * 5000, key=b"k" * 3000, headers=(("h", b"v" * 3000),)), "dlq")
    out = fit_record(record, 2000)
    assert record_size(out) <= 2000 and dict(out.headers)["error.reason"] == b"too_large"


def test_a_tombstone_dead_letter_fits_as_it_is() -> None:
    out = dead_letter_record(_letter(None, key=None), "dlq", max_bytes=LIMIT)
    assert out.value is None and out.key is None and "error.value_truncated" not in dict(out.headers)


def test_the_size_bound_is_above_what_librdkafka_counts(librdkafka: Producer) -> None:
    """record_size over-estimates librdkafka's count, so a record at exactly the bound still goes."""
    headers = tuple((f"h{i}", b"v" * i) for i in range(20))
    probe = OutRecord("dlq", b"key", b"", headers)
    value = b"x" * (LIMIT - record_size(probe))
    record = OutRecord("dlq", b"key", value, headers)
    assert record_size(record) == LIMIT
    _produce(librdkafka, record)
