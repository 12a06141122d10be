"""Small Kafka tools behind ``sie produce`` and ``sie tail`` (confluent-kafka)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TextIO

import orjson
from confluent_kafka import Consumer, KafkaException, Producer


def iter_json_lines(stream: TextIO) -> Iterator[tuple[bytes, bytes | None]]:
    """(value, key) pairs from JSON lines; the key is the event's id when it has one."""
    for line in stream:
        line = line.strip()
        if not line:
            continue
        key: bytes | None = None
        try:
            doc = orjson.loads(line)
            if isinstance(doc, dict) and isinstance(doc.get("id"), str):
                key = doc["id"].encode()
        except orjson.JSONDecodeError:
            pass  # sent as is: the engine dead-letters it with a reason
        yield line.encode(), key


def produce_all(
    config: Mapping[str, str],
    topic: str,
    items: Iterable[tuple[bytes, bytes | None]],
    *,
    headers: list[tuple[str, str | bytes | None]] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Produce every (value, key); returns how many were acknowledged."""
    producer = Producer({**config, "linger.ms": 5, "acks": "all"})
    acked = failed = 0

    def on_delivery(err: Any, _msg: Any) -> None:
        nonlocal acked, failed
        if err is None:
            acked += 1
        else:
            failed += 1

    for n, (value, key) in enumerate(items, 1):
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        if on_progress is not None and n % 1000 == 0:
            on_progress(n)
    producer.flush(30)
    if failed:
        raise KafkaException(f"{failed} records were not delivered to {topic!r}")
    return acked


def consume(
    config: Mapping[str, str],
    topic: str,
    *,
    from_beginning: bool = True,
    group: str | None = None,
    idle_timeout: float | None = None,
) -> Iterator[Any]:
    """Yield confluent-kafka messages of ``topic`` until ``idle_timeout`` passes with none."""
    consumer = Consumer(
        {
            **config,
            "group.id": group or f"sie-tail-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    last = time.monotonic()
    try:
        while idle_timeout is None or time.monotonic() - last < idle_timeout:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            last = time.monotonic()
            yield msg
    finally:
        consumer.close()


def describe(msg: Any) -> str:
    """One line for a record: where it is, its key, headers and value."""
    headers = {k: (v or b"").decode("utf-8", "replace") for k, v in (msg.headers() or [])}
    key = msg.key().decode("utf-8", "replace") if msg.key() else None
    value = (msg.value() or b"").decode("utf-8", "replace")
    parts = [f"{msg.topic()}[{msg.partition()}]@{msg.offset()}", f"key={key}"]
    if headers:
        parts.append(f"headers={headers}")
    return " ".join(parts) + f" {value}"


def wait_for_kafka(
    config: Mapping[str, str],
    *,
    log: Any,
    attempt_timeout_s: float = 2.0,
    max_pause_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Block until a metadata request to the cluster succeeds; returns the failed attempts.

    Each failure is logged as one clear warning naming the bootstrap servers,
    then retried after a growing pause (up to ``max_pause_s``). ``config`` is
    the full client config (security settings included), so a TLS or SASL
    mistake shows up here too.
    """
    from confluent_kafka.admin import AdminClient

    bootstrap = config.get("bootstrap.servers", "?")
    admin = AdminClient({**config, "logger": log})
    failures, pause = 0, 0.5
    while True:
        try:
            admin.list_topics(timeout=attempt_timeout_s)
        except KafkaException as err:
            failures += 1
            log.warning(
                "Kafka broker %s unreachable (attempt %d: %s); retrying in %.1fs",
                bootstrap,
                failures,
                err.args[0] if err.args else err,
                pause,
            )
            sleep(pause)
            pause = min(pause * 2, max_pause_s)
            continue
        if failures:
            log.info("Kafka broker %s reachable after %d failed attempts", bootstrap, failures)
        return failures
