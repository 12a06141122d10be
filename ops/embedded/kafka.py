"""A single-node Apache Kafka broker (KRaft, combined broker + controller) as a JVM process.

The jars come from :mod:`ops.embedded.kafka_dist` (Maven, cached). The data
directory is formatted once with ``kafka.tools.StorageTool format --standalone``;
a restart on the same directory keeps every topic, record and committed offset.
Optional listeners: ``SSL`` (mutual TLS) and ``SASL_SSL`` with SCRAM-SHA-512,
whose admin user is created at format time; the broker then talks to itself over
SASL_SSL and the plaintext client listener is left out.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ops.embedded.kafka_dist import KAFKA_VERSION, find_java, kafka_libs
from ops.embedded.process import EmbeddedServerError, ManagedProcess, child_env, free_port
from streams.admin import metadata_ok

_STORAGE_TOOL = "kafka.tools.StorageTool"
_BROKER_MAIN = "kafka.Kafka"
_SCRAM = "SCRAM-SHA-512"
_JVM_FLAGS = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)
_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


@dataclass(frozen=True)
class BrokerSecurity:
    """TLS material and the SCRAM admin of a broker with SSL and SASL_SSL listeners.

    ``cert_chain`` (leaf, then CA) and ``key`` (unencrypted PKCS#8 PEM) are the
    broker's; clients' certificates on the SSL listener must be signed by ``ca``.
    """

    ca: Path
    cert_chain: Path
    key: Path
    admin_user: str = "admin"
    admin_password: str = field(default_factory=lambda: uuid.uuid4().hex, repr=False)

    def admin_config(self) -> dict[str, str]:
        """librdkafka settings of the SCRAM admin on the SASL_SSL listener."""
        return {
            "security.protocol": "SASL_SSL",
            "ssl.ca.location": str(self.ca),
            "sasl.mechanism": _SCRAM,
            "sasl.username": self.admin_user,
            "sasl.password": self.admin_password,
        }


@dataclass
class KafkaBroker:
    """A running broker. ``bootstrap``/``client_config`` reach it as an admin."""

    process: ManagedProcess
    data_dir: Path
    bootstrap: str
    client_config: dict[str, str]
    port: int | None  # PLAINTEXT listener (None on a secured broker)
    ssl_port: int | None = None
    sasl_ssl_port: int | None = None

    def ready(self) -> bool:
        """Whether a metadata request succeeds now."""
        return metadata_ok(self.bootstrap, 1.0, self.client_config)

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until ready; raises with the log tail if the JVM exits or times out."""
        self.process.wait_ready(self.ready, timeout)

    def start(self, timeout: float = 60) -> None:
        """Start again on the same data (after :meth:`stop` or :meth:`kill`) and wait until ready."""
        if not self.process.alive:
            self.process.start()
        self.wait_ready(timeout)

    def kill(self) -> None:
        """SIGKILL (chaos): no clean shutdown; a later :meth:`start` recovers the logs."""
        self.resume()
        self.process.kill()

    def pause(self) -> None:
        """SIGSTOP: the process is frozen, its sockets stay open."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self.process.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (controlled shutdown), SIGKILL after ``timeout``."""
        self.resume()
        self.process.stop(timeout)


def start_broker(
    port: int | None,
    work_dir: Path,
    *,
    controller_port: int | None = None,
    data_dir: Path | None = None,
    security: BrokerSecurity | None = None,
    ssl_port: int | None = None,
    sasl_ssl_port: int | None = None,
    heap_mb: int = 512,
    timeout: float = 90,
    cache_dir: Path | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> KafkaBroker:
    """Start Apache Kafka on 127.0.0.1 and wait until it answers metadata requests.

    ``port`` is the PLAINTEXT listener; with ``security`` it may be ``None``
    and the SSL and SASL_SSL listeners take ``ssl_port``/``sasl_ssl_port``
    (free ports if not given). Data lives in ``data_dir`` (default
    ``work_dir/kafka-data``), formatted on first use; the broker's console
    log is ``work_dir/kafka-<port>.log``. ``on_progress`` hears about the one-time Maven fetch.
    """
    if port is None and security is None:
        raise ValueError("a broker needs a PLAINTEXT port or security settings")
    work_dir = Path(work_dir).resolve()
    data_dir = Path(data_dir).resolve() if data_dir else work_dir / "kafka-data"
    java = find_java()
    libs = kafka_libs(cache_dir, on_progress=on_progress)  # the first start on a machine fetches them
    listeners = {"CONTROLLER": controller_port or free_port()}
    if port is not None:
        listeners["PLAINTEXT"] = port
    if security is not None:
        listeners["SSL"] = ssl_port or free_port()
        listeners["SASL_SSL"] = sasl_ssl_port or free_port()
    conf_dir = data_dir.parent / f"{data_dir.name}-conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    properties = conf_dir / "server.properties"
    properties.write_text(server_properties(listeners, data_dir, security, conf_dir))
    log4j = conf_dir / "log4j2.properties"
    log4j.write_text(_LOG4J2)
    jvm = [java, f"-Dlog4j2.configurationFile={log4j}", f"-Dkafka.logs.dir={conf_dir}", "-cp", f"{libs}/*"]
    if not (data_dir / "meta.properties").is_file():
        _format(jvm, properties, security, conf_dir)
    heap = [f"-Xmx{heap_mb}m", f"-Xms{min(heap_mb, 128)}m", *_JVM_FLAGS]
    first = listeners.get("PLAINTEXT") or listeners["SASL_SSL"]
    process = ManagedProcess(
        name=f"kafka:{first}",
        argv=(jvm[0], *heap, *jvm[1:], _BROKER_MAIN, str(properties)),
        env=child_env(),
        log_path=work_dir / f"kafka-{first}.log",
    )
    if security is None:
        bootstrap, config = f"127.0.0.1:{port}", {}
    else:
        bootstrap, config = f"127.0.0.1:{listeners['SASL_SSL']}", security.admin_config()
    broker = KafkaBroker(
        process,
        data_dir,
        bootstrap,
        config,
        port,
        ssl_port=listeners.get("SSL"),
        sasl_ssl_port=listeners.get("SASL_SSL"),
    )
    try:
        broker.wait_ready(timeout)
    except EmbeddedServerError:
        process.stop()
        raise
    return broker


def server_properties(
    listeners: dict[str, int], data_dir: Path, security: BrokerSecurity | None, conf_dir: Path
) -> str:
    """``server.properties`` of a single-node combined broker + controller on 127.0.0.1."""
    names = ",".join(f"{name}://127.0.0.1:{port}" for name, port in listeners.items())
    lines = [
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.bootstrap.servers=127.0.0.1:{listeners['CONTROLLER']}",
        f"listeners={names}",
        f"advertised.listeners={names}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=" + ",".join(f"{n}:{_protocol(n)}" for n in listeners),
        f"log.dirs={data_dir}",
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
        "log.cleaner.dedupe.buffer.size=2097152",
    ]
    if security is None:
        lines.append("inter.broker.listener.name=PLAINTEXT")
    else:
        lines += _security_properties(security, conf_dir)
    return "\n".join(lines) + "\n"


def _protocol(listener: str) -> str:
    return "PLAINTEXT" if listener == "CONTROLLER" else listener


def _security_properties(security: BrokerSecurity, conf_dir: Path) -> list[str]:
    keystore = conf_dir / "broker-keystore.pem"  # Kafka's PEM key store: the key, then the chain
    keystore.write_text(security.key.read_text() + security.cert_chain.read_text())
    keystore.chmod(0o600)
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{security.admin_user}" password="{security.admin_password}";'
    )
    return [
        "inter.broker.listener.name=SASL_SSL",
        f"sasl.mechanism.inter.broker.protocol={_SCRAM}",
        f"sasl.enabled.mechanisms={_SCRAM}",
        f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}",
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={keystore}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={security.ca}",
        "listener.name.ssl.ssl.client.auth=required",
    ]


def _format(jvm: list[str], properties: Path, security: BrokerSecurity | None, conf_dir: Path) -> None:
    argv = [*jvm, _STORAGE_TOOL, "format", "-t", cluster_id(), "-c", str(properties), "--standalone"]
    if security is not None:
        argv += ["--add-scram", f"{_SCRAM}=[name={security.admin_user},password={security.admin_password}]"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=child_env())
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedServerError("Kafka's StorageTool did not finish formatting in 120s") from exc
    (conf_dir / "format.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise EmbeddedServerError(
            f"formatting Kafka {KAFKA_VERSION} storage failed (exit {done.returncode}):\n"
            + (done.stdout + done.stderr)[-3000:]
        )


def cluster_id() -> str:
    """A random cluster id as Kafka writes one (22 characters of URL-safe base64)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text
