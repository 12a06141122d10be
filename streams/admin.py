"""Topic admin and readiness for any Kafka broker (confluent-kafka's AdminClient); used by ops/."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    NewTopic,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from engine.errors import EngineError

log = logging.getLogger(__name__)

_POLL_INTERVAL_S = 0.2
_SCRAM_ITERATIONS = 8192


class KafkaAdminError(EngineError):
    """A broker did not answer, or refused a topic or a user."""


def admin_client(bootstrap: str, client_config: Mapping[str, str] | None = None) -> AdminClient:
    """An AdminClient for ``bootstrap`` with extra librdkafka settings (security)."""
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": log}
    config.update(client_config or {})
    return AdminClient(config)


def metadata_ok(bootstrap: str, timeout: float, client_config: Mapping[str, str] | None = None) -> bool:
    """Whether a metadata request to ``bootstrap`` answers within ``timeout`` seconds."""
    try:
        admin_client(bootstrap, client_config).list_topics(timeout=timeout)
    except KafkaException:
        return False
    return True


def wait_for_broker(
    bootstrap: str, timeout: float, *, client_config: Mapping[str, str] | None = None
) -> None:
    """Block until a metadata request to ``bootstrap`` succeeds."""
    deadline = time.monotonic() + timeout
    while not metadata_ok(bootstrap, min(2.0, max(0.1, timeout)), client_config):
        if time.monotonic() >= deadline:
            raise KafkaAdminError(f"broker {bootstrap} not reachable after {timeout:.0f}s")
        time.sleep(_POLL_INTERVAL_S)


def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    timeout: float = 30,
    client_config: Mapping[str, str] | None = None,
) -> None:
    """Create ``{name: partitions}`` (existing ones are fine) and wait for metadata."""
    admin = admin_client(bootstrap, client_config)
    new = [NewTopic(name, num_partitions=n, replication_factor=1) for name, n in topics.items()]
    try:
        futures = admin.create_topics(new, request_timeout=timeout)
    except KafkaException as exc:
        raise KafkaAdminError(f"cannot create topics {sorted(topics)}: {exc}") from exc
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise KafkaAdminError(f"cannot create topic {name!r}: {exc}") from exc
    deadline = time.monotonic() + timeout
    while True:
        try:
            metadata = admin.list_topics(timeout=max(0.5, deadline - time.monotonic()))
        except KafkaException as exc:
            raise KafkaAdminError(f"topics {sorted(topics)} not visible: {exc}") from exc
        missing = [t for t in topics if t not in metadata.topics or metadata.topics[t].error]
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise KafkaAdminError(f"topics not visible after {timeout:.0f}s: {missing}")
        time.sleep(_POLL_INTERVAL_S)


def upsert_scram_user(
    bootstrap: str,
    username: str,
    password: str,
    *,
    mechanism: str = "SCRAM-SHA-512",
    client_config: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> None:
    """Create (or reset) a SCRAM user through Kafka's Admin API (KIP-554)."""
    kind = {"SCRAM-SHA-256": ScramMechanism.SCRAM_SHA_256, "SCRAM-SHA-512": ScramMechanism.SCRAM_SHA_512}
    info = ScramCredentialInfo(kind[mechanism], _SCRAM_ITERATIONS)
    change = UserScramCredentialUpsertion(username, info, password.encode())
    admin = admin_client(bootstrap, client_config)  # kept alive until the futures resolve
    try:
        futures = admin.alter_user_scram_credentials([change], request_timeout=timeout)
    except KafkaException as exc:
        raise KafkaAdminError(f"cannot create SCRAM user {username!r}: {exc}") from exc
    for user, future in futures.items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            raise KafkaAdminError(f"cannot create SCRAM user {user!r}: {exc}") from exc
