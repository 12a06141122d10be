"""Dead-letter records: the original bytes, with the reason in headers, always small enough to produce.

A dead letter keeps the original key, value and headers. When that record
would be larger than the broker accepts (an original value near the size
limit, plus the error headers), :func:`fit_record` cuts it down, in this
order, and says so in headers:

1. the value is truncated to what fits (``error.value_truncated: true``,
   ``error.value_size``: the original length in bytes);
2. if the key and headers alone are still too large, the original headers are
   dropped (``error.headers_dropped``: how many), then the key is truncated
   (``error.key_truncated: true``, ``error.key_size``).

The DLQ's own headers (reason, message, source) are always kept.
"""

from __future__ import annotations

from collections.abc import Iterable

from engine.errors import Reason
from engine.records import DeadLetter, Headers, OutRecord, RawRecord

REASON_HEADER = "error.reason"
MESSAGE_HEADER = "error.message"
SOURCE_TOPIC_HEADER = "source.topic"
SOURCE_PARTITION_HEADER = "source.partition"
SOURCE_OFFSET_HEADER = "source.offset"
VALUE_TRUNCATED_HEADER = "error.value_truncated"
VALUE_SIZE_HEADER = "error.value_size"
HEADERS_DROPPED_HEADER = "error.headers_dropped"
KEY_TRUNCATED_HEADER = "error.key_truncated"
KEY_SIZE_HEADER = "error.key_size"
_OWN_HEADERS = frozenset(
    {
        REASON_HEADER,
        MESSAGE_HEADER,
        SOURCE_TOPIC_HEADER,
        SOURCE_PARTITION_HEADER,
        SOURCE_OFFSET_HEADER,
        VALUE_TRUNCATED_HEADER,
        VALUE_SIZE_HEADER,
        HEADERS_DROPPED_HEADER,
        KEY_TRUNCATED_HEADER,
        KEY_SIZE_HEADER,
    }
)
_MAX_MESSAGE_CHARS = 1000

# Bytes counted per record and per header on top of the key, value and header names and values.
# librdkafka refuses a message whose key + value + serialized headers exceed message.max.bytes
# minus 36 bytes, and a header costs 2 varints (at most 5 bytes each): these bounds are above both.
RECORD_OVERHEAD = 64
HEADER_OVERHEAD = 10


def letters(records: Iterable[RawRecord], reason: Reason, message: str) -> list[DeadLetter]:
    """One dead letter per record, all with ``reason`` and ``message``."""
    return [DeadLetter(record, reason, message) for record in records]


def dead_letter_record(letter: DeadLetter, dlq_topic: str, max_bytes: int | None = None) -> OutRecord:
    """The record to produce to the DLQ for ``letter``.

    The value and key are the original bytes; the original headers are kept
    (so trace context survives), and the error headers are added. With
    ``max_bytes`` the record is cut down to fit (see :func:`fit_record`).
    """
    src = letter.record.source
    kept = tuple((k, v) for k, v in letter.record.headers if k not in _OWN_HEADERS)
    headers = kept + (
        (REASON_HEADER, letter.reason.value.encode()),
        (MESSAGE_HEADER, letter.message[:_MAX_MESSAGE_CHARS].encode("utf-8", "replace")),
        (SOURCE_TOPIC_HEADER, src.topic.encode()),
        (SOURCE_PARTITION_HEADER, str(src.partition).encode()),
        (SOURCE_OFFSET_HEADER, str(src.offset).encode()),
    )
    record = OutRecord(topic=dlq_topic, key=letter.record.key, value=letter.record.value, headers=headers)
    return record if max_bytes is None else fit_record(record, max_bytes)


def record_size(record: OutRecord) -> int:
    """An upper bound of the bytes ``record`` counts against the producer's and broker's size limits."""
    key = len(record.key) if record.key is not None else 0
    value = len(record.value) if record.value is not None else 0
    return RECORD_OVERHEAD + key + value + _headers_size(record.headers)


def fit_record(record: OutRecord, max_bytes: int) -> OutRecord:
    """``record`` cut down to at most ``max_bytes`` (:func:`record_size`); see the module docstring."""
    if record_size(record) <= max_bytes:
        return record
    value = record.value or b""
    marks: Headers = ((VALUE_TRUNCATED_HEADER, b"true"), (VALUE_SIZE_HEADER, str(len(value)).encode()))
    trimmed = OutRecord(record.topic, record.key, b"", record.headers + marks)
    room = max_bytes - record_size(trimmed)
    if room >= 0:
        return OutRecord(record.topic, record.key, value[:room], trimmed.headers)
    return _fit_key_and_headers(trimmed, max_bytes)


def _fit_key_and_headers(record: OutRecord, max_bytes: int) -> OutRecord:
    """Drop the original headers, then truncate the key, until ``record`` (value already empty) fits."""
    own = tuple((k, v) for k, v in record.headers if k in _OWN_HEADERS)
    dropped = len(record.headers) - len(own)
    if dropped:
        own += ((HEADERS_DROPPED_HEADER, str(dropped).encode()),)
    record = OutRecord(record.topic, record.key, record.value, own)
    if record_size(record) <= max_bytes or not record.key:
        return record
    key = record.key
    headers = own + ((KEY_TRUNCATED_HEADER, b"true"), (KEY_SIZE_HEADER, str(len(key)).encode()))
    room = max(max_bytes - record_size(OutRecord(record.topic, None, record.value, headers)), 0)
    return OutRecord(record.topic, key[:room], record.value, headers)


def _headers_size(headers: Headers) -> int:
    return sum(len(k.encode("utf-8", "replace")) + len(v or b"") + HEADER_OVERHEAD for k, v in headers)
