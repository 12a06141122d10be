"""The local Apache Kafka broker's pure parts: version pin, properties, jar cache, clear errors."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
import yaml

from ops.embedded import EmbeddedServerError, kafka_dist
from ops.embedded.kafka import BrokerSecurity, cluster_id, server_properties
from ops.embedded.kafka_dist import KAFKA_VERSION, POM, kafka_libs, parse_java_version

REPO = Path(__file__).resolve().parents[2]


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_compose_runs_the_same_kafka_version_as_the_local_broker() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    images = {name: s["image"] for name, s in services.items() if "apache/kafka" in s.get("image", "")}
    assert images, "no apache/kafka image in docker-compose.yml"
    assert set(images.values()) == {f"apache/kafka:{KAFKA_VERSION}"}, images


def test_pom_names_no_version_of_its_own() -> None:
    text = POM.read_text()
    versions = re.findall(r"<version>([^<]+)</version>", text)
    assert "${kafka.version}" in versions and "${log4j.version}" in versions
    assert KAFKA_VERSION not in text, "the Kafka version is named only in kafka_dist.KAFKA_VERSION"


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_402"', 8),
        ("no version here", None),
    ],
)
def test_java_major_version_is_read_from_java_dash_version(output: str, major: int | None) -> None:
    assert parse_java_version(output) == major


def test_missing_java_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_dist.shutil, "which", lambda _name: None)
    with pytest.raises(EmbeddedServerError, match=r"needs Java 17\+ and no `java` is on PATH"):
        kafka_dist.find_java()


def test_cached_jars_are_used_without_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / f"kafka-{KAFKA_VERSION}"
    (home / "libs").mkdir(parents=True)
    (home / ".complete").write_text("kafka_2.13.jar\n")
    monkeypatch.setattr(kafka_dist.shutil, "which", lambda _name: None)  # no mvn, no network
    assert kafka_libs(tmp_path) == home / "libs"


def test_uncached_jars_without_maven_say_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kafka_dist.shutil, "which", lambda _name: None)
    with pytest.raises(EmbeddedServerError, match="no `mvn` is on PATH"):
        kafka_libs(tmp_path)


def test_cluster_id_is_22_characters_of_url_safe_base64() -> None:
    ids = {cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for value in ids:
        assert len(value) == 22 and not value.startswith("-")
        assert len(base64.urlsafe_b64decode(value + "==")) == 16


def test_plain_broker_is_one_kraft_node_with_replication_factor_one(tmp_path: Path) -> None:
    props = _props(server_properties({"CONTROLLER": 9093, "PLAINTEXT": 9092}, tmp_path / "d", None, tmp_path))
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "CONTROLLER://127.0.0.1:9093,PLAINTEXT://127.0.0.1:9092"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:9093"
    assert props["log.dirs"] == str(tmp_path / "d")
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "false"
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor"):
        assert props[key] == "1"


def test_secured_broker_has_mutual_tls_and_scram_listeners_and_no_plaintext(tmp_path: Path) -> None:
    for name, text in (("ca.pem", "CA\n"), ("chain.pem", "CHAIN\n"), ("key.pem", "KEY\n")):
        (tmp_path / name).write_text(text)
    security = BrokerSecurity(
        tmp_path / "ca.pem", tmp_path / "chain.pem", tmp_path / "key.pem", "admin", "pw"
    )
    listeners = {"CONTROLLER": 1, "SSL": 2, "SASL_SSL": 3}
    props = _props(server_properties(listeners, tmp_path / "d", security, tmp_path))
    assert "PLAINTEXT://" not in props["listeners"]
    assert props["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL"
    assert props["listener.name.ssl.ssl.client.auth"] == "required"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["inter.broker.listener.name"] == "SASL_SSL"
    assert 'username="admin" password="pw"' in props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    keystore = Path(props["ssl.keystore.location"])
    assert keystore.read_text() == "KEY\nCHAIN\n"  # Kafka's PEM key store: key first, then the chain
    assert keystore.stat().st_mode & 0o077 == 0
    assert security.admin_config()["sasl.mechanism"] == "SCRAM-SHA-512"


def test_broker_needs_a_plaintext_port_or_security(tmp_path: Path) -> None:
    from ops.embedded import start_broker

    with pytest.raises(ValueError, match="PLAINTEXT port or security"):
        start_broker(None, tmp_path)
