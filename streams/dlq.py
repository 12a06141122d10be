"""Dead-letter records: the original bytes, unchanged, with the reason in headers."""

from __future__ import annotations

from engine.records import DeadLetter, OutRecord

REASON_HEADER = "error.reason"
MESSAGE_HEADER = "error.message"
SOURCE_TOPIC_HEADER = "source.topic"
SOURCE_PARTITION_HEADER = "source.partition"
SOURCE_OFFSET_HEADER = "source.offset"
_OWN_HEADERS = frozenset(
    {REASON_HEADER, MESSAGE_HEADER, SOURCE_TOPIC_HEADER, SOURCE_PARTITION_HEADER, SOURCE_OFFSET_HEADER}
)
_MAX_MESSAGE_CHARS = 1000


def dead_letter_record(letter: DeadLetter, dlq_topic: str) -> OutRecord:
    """The record to produce to the DLQ for ``letter``.

    The value and key are the original bytes; the original headers are kept
    (so trace context survives), and the error headers are added.
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
    return OutRecord(
        topic=dlq_topic,
        key=letter.record.key,
        value=letter.record.value,
        headers=headers,
    )
