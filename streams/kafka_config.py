"""The one translation of :class:`~engine.settings.KafkaSettings` into librdkafka properties.

Every Kafka client of the project (the workers' group consumer and producers, the admin client,
the ``sie`` tools, the benchmarks) is configured from these functions, so security and
connection settings are written once.
"""

from __future__ import annotations

from engine.settings import KafkaSettings


def client_config(kafka: KafkaSettings) -> dict[str, str]:
    """librdkafka properties for the connection and security settings (any client)."""
    cfg: dict[str, str] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "security.protocol": kafka.security_protocol.lower(),
    }
    optional = {
        "ssl.ca.location": kafka.ssl_cafile,
        "ssl.certificate.location": kafka.ssl_certfile,
        "ssl.key.location": kafka.ssl_keyfile,
        "sasl.mechanism": kafka.sasl_mechanism,
        "sasl.username": kafka.sasl_username,
    }
    cfg.update({k: str(v) for k, v in optional.items() if v is not None})
    if kafka.ssl_key_password is not None:
        cfg["ssl.key.password"] = kafka.ssl_key_password.get_secret_value()
    if kafka.sasl_password is not None:
        cfg["sasl.password"] = kafka.sasl_password.get_secret_value()
    return cfg


def consumer_config(kafka: KafkaSettings) -> dict[str, str]:
    """librdkafka properties for a consumer (connection, security, fetch wait)."""
    return client_config(kafka) | {"fetch.wait.max.ms": str(kafka.fetch_max_wait_ms)}


def group_consumer_config(kafka: KafkaSettings, client_id: str) -> dict[str, str]:
    """librdkafka properties for the workers' group consumer: positions are committed by the
    worker (never automatically), for records whose outputs the broker acknowledged. It reads
    committed records only, and asks the coordinator for stable committed offsets (an offset a
    worker's open transaction holds is answered once that transaction ends)."""
    cfg = consumer_config(kafka) | {
        "group.id": kafka.group_id,
        "client.id": client_id,
        "enable.auto.commit": "false",
        "enable.auto.offset.store": "false",
        "auto.offset.reset": kafka.auto_offset_reset,
        "group.protocol": kafka.group_protocol,
        "isolation.level": "read_committed",
    }
    if kafka.group_protocol == "classic":
        cfg |= {
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": str(int(kafka.session_timeout_s * 1000)),
            "heartbeat.interval.ms": str(int(kafka.heartbeat_interval_s * 1000)),
        }
    return cfg


def output_producer_config(kafka: KafkaSettings, max_message_bytes: int) -> dict[str, str]:
    """librdkafka properties for the producer of a worker's outputs: connection, linger, and
    records as large as the limits allow (librdkafka's default of 1 MB or more)."""
    return client_config(kafka) | {
        "linger.ms": str(kafka.linger_ms),
        "message.max.bytes": str(max(1_000_000, max_message_bytes)),
    }


def transactional_id(kafka: KafkaSettings, worker_name: str) -> str:
    """The worker's ``transactional.id``: stable across restarts of the same worker, so a restarted
    worker fences the transactions of the process it replaces."""
    return f"{kafka.group_id}.{worker_name}"


def transactional_producer_config(
    kafka: KafkaSettings, max_message_bytes: int, worker_name: str
) -> dict[str, str]:
    """:func:`output_producer_config` for exactly-once: idempotent, transactional, with a
    transaction timeout after which the broker aborts a dead worker's open transaction."""
    return output_producer_config(kafka, max_message_bytes) | {
        "transactional.id": transactional_id(kafka, worker_name),
        "enable.idempotence": "true",
        "acks": "all",
        "transaction.timeout.ms": str(int(kafka.transaction_timeout_s * 1000)),
        # An output not delivered within the transaction's life fails it (then it is aborted).
        "message.timeout.ms": str(int(kafka.transaction_timeout_s * 1000)),
    }


def reader_config(kafka: KafkaSettings, *, committed: bool = False) -> dict[str, str]:
    """:func:`consumer_config` for the ``sie`` tools' readers: every record by default
    (``read_uncommitted``); with ``committed``, only records of committed transactions, as a
    downstream ``read_committed`` consumer sees them (exactly-once outputs)."""
    isolation = "read_committed" if committed else "read_uncommitted"
    return consumer_config(kafka) | {"isolation.level": isolation}
