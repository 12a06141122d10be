"""Small Kafka tools behind ``sie produce`` and ``sie tail`` (confluent-kafka).

Their failures (records not acknowledged, a consumer error, a client configuration librdkafka
refuses) are raised as :class:`KafkaToolError`, never as confluent-kafka's ``KafkaException``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

import orjson
from confluent_kafka import Consumer, KafkaException

from engine.backoff import next_delay
from engine.errors import EngineError
from streams.producer import Headers, new_producer, produce_waiting


class KafkaToolError(EngineError):
    """A Kafka tool failed: records not acknowledged, a consumer error, a client config refused."""


@contextmanager
def _kafka_errors(what: str) -> Iterator[None]:
    """Raise confluent-kafka's ``KafkaException`` out of the block as :class:`KafkaToolError`."""
    try:
        yield
    except KafkaException as exc:
        raise KafkaToolError(f"{what}: {exc}") from exc


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
    items: Iterable[tuple[bytes, bytes | None] | tuple[bytes, bytes | None, Sequence[tuple[str, bytes]]]],
    *,
    headers: list[tuple[str, str | bytes | None]] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Produce every (value, key) or (value, key, its own headers); returns how many were acknowledged.

    ``headers`` go on every record without headers of its own.
    """
    with _kafka_errors("Kafka producer not created"):
        producer = new_producer(config, overrides={"linger.ms": 5, "acks": "all"})
    acked = failed = 0

    def on_delivery(err: Any, _msg: Any) -> None:
        nonlocal acked, failed
        if err is None:
            acked += 1
        else:
            failed += 1

    for n, item in enumerate(items, 1):
        value, key = item[0], item[1]
        own: Headers = list(item[2]) if len(item) > 2 else None
        produce_waiting(producer, topic, value, key, own or headers, on_delivery)
        producer.poll(0)
        if on_progress is not None and n % 1000 == 0:
            on_progress(n)
    producer.flush(30)
    if failed:
        raise KafkaToolError(f"{failed} records were not delivered to {topic!r}")
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
    with _kafka_errors(f"cannot read {topic!r}"):
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
                raise KafkaToolError(str(msg.error()))
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


class _LastClientError(logging.Handler):
    """Keeps the last librdkafka log line (they say why a connection failed)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage().split("]: ")[-1]


def wait_for_kafka(
    config: Mapping[str, str],
    *,
    log: Any,
    attempt_timeout_s: float = 2.0,
    max_pause_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Block until a metadata request to the cluster succeeds; returns the failed attempts.

    Each failure is logged as one clear warning naming the bootstrap servers
    and the client's last error (refused connection, TLS or SASL failure),
    then retried after a growing pause (up to ``max_pause_s``). ``config`` is
    the full client config, security settings included.
    """
    from confluent_kafka.admin import AdminClient

    bootstrap = config.get("bootstrap.servers", "?")
    client_log = logging.getLogger(f"{__name__}.probe")
    client_log.propagate = False
    errors = _LastClientError()
    client_log.addHandler(errors)
    conf: dict[str, Any] = {**config, "logger": client_log}
    with _kafka_errors("Kafka admin client not created"):
        admin = AdminClient(conf)
    failures, pause = 0, 0.5
    try:
        while True:
            try:
                admin.list_topics(timeout=attempt_timeout_s)
                break
            except KafkaException as err:
                failures += 1
                admin.poll(0)  # hands librdkafka's log lines to ``errors``
                reason = errors.last or (err.args[0] if err.args else err)
                log.warning(
                    "Kafka broker %s unreachable (attempt %d: %s); retrying in %.1fs",
                    bootstrap,
                    failures,
                    reason,
                    pause,
                )
                sleep(pause)
                pause = next_delay(pause, 2, max_pause_s)
    finally:
        client_log.removeHandler(errors)
    if failures:
        log.info("Kafka broker %s reachable after %d failed attempts", bootstrap, failures)
    return failures
