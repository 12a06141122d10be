"""Settings: env prefix, nested groups, secrets redacted, client config."""

from __future__ import annotations

import pytest

from engine.settings import Settings
from ops.cli import load_settings
from streams.kafka_config import client_config


def test_settings_read_env_prefix_and_nested_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIE_KAFKA__BOOTSTRAP_SERVERS", "kafka:29092")
    monkeypatch.setenv("SIE_BATCH__MAX_SIZE", "64")
    monkeypatch.setenv("SIE_TOPICS__EVENTS", "in")
    s = Settings()
    assert s.kafka.bootstrap_servers == "kafka:29092"
    assert s.batch.max_size == 64 and s.topics.events == "in"


def test_defaults_follow_the_event_contract() -> None:
    s = Settings()
    assert (s.topics.events, s.topics.predictions, s.topics.dlq) == ("events", "predictions", "events.dlq")
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092" and s.triton.url == "127.0.0.1:8001"


def test_cli_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIE_TOPICS__EVENTS", "from-env")
    s = load_settings(**{"topics.events": "from-flag", "batch.max_size": None})
    assert s.topics.events == "from-flag" and s.batch.max_size == 256


def test_secrets_are_redacted_when_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIE_KAFKA__SASL_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("SIE_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("SIE_KAFKA__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("SIE_KAFKA__SASL_USERNAME", "svc")
    s = Settings()
    for text in (str(s), repr(s), s.model_dump_json()):
        assert "hunter2-secret" not in text
    cfg = client_config(s.kafka)
    assert cfg["sasl.password"] == "hunter2-secret" and cfg["security.protocol"] == "sasl_ssl"


def test_metrics_host_defaults_to_all_interfaces_and_reads_sie_metrics_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().metrics_host == "0.0.0.0"
    monkeypatch.setenv("SIE_METRICS_HOST", "127.0.0.1")
    assert Settings().metrics_host == "127.0.0.1"
