"""Redaction of credentials in URLs and of settings output (engine/redact.py)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from engine.redact import REDACTED, redact_url, redacted_settings, settings_json
from engine.settings import Settings
from ops.embedded.process import ManagedProcess


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:s3cret@host/v1/traces", f"https://user:{REDACTED}@host/v1/traces"),
        ("http://user:p%40ss:word@host:4318", f"http://user:{REDACTED}@host:4318"),
        ("https://ghp_token123@host/x", f"https://{REDACTED}@host/x"),
        ("svc:s3cret@triton:8001", f"svc:{REDACTED}@triton:8001"),
        ("opentelemetry,url=https://u:s3cret@collector:4318/v1/traces", None),
    ],
)
def test_credentials_in_urls_are_redacted(url: str, shown: str | None) -> None:
    out = redact_url(url)
    assert "s3cret" not in out and "token123" not in out and "word" not in out
    if shown is not None:
        assert out == shown


@pytest.mark.parametrize(
    "plain",
    ["http://collector:4318", "127.0.0.1:8001", "https://host/path?q=a@b", "events.dlq", "", "a@b"],
)
def test_text_without_credentials_is_left_as_it_is(plain: str) -> None:
    assert redact_url(plain) == plain


def test_redacted_settings_cover_nested_groups_and_secret_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIE_OTLP_ENDPOINT", "https://user:s3cret@host/v1/traces")
    monkeypatch.setenv("SIE_TRITON__HTTP_URL", "http://admin:s3cret@triton:8000")
    monkeypatch.setenv("SIE_KAFKA__SASL_PASSWORD", "s3cret")
    settings = Settings()

    shown = redacted_settings(settings)
    text = settings_json(settings)

    assert "s3cret" not in json.dumps(shown) and "s3cret" not in text
    assert shown["otlp_endpoint"] == f"https://user:{REDACTED}@host/v1/traces"
    assert shown["triton"]["http_url"] == f"http://admin:{REDACTED}@triton:8000"
    assert shown["kafka"]["sasl_password"] == REDACTED
    assert settings.otlp_endpoint == "https://user:s3cret@host/v1/traces", "the settings keep the value"


def test_tracing_setup_logs_the_otlp_url_without_its_password(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from observability import otel_setup

    monkeypatch.setattr(otel_setup.trace, "set_tracer_provider", lambda provider: None)
    monkeypatch.setenv("SIE_OTLP_ENDPOINT", "https://user:s3cret@collector.example:4318")
    caplog.set_level(logging.INFO, logger=otel_setup.__name__)

    provider = otel_setup.configure_tracing(Settings())
    assert provider is not None
    provider.shutdown()

    assert "s3cret" not in caplog.text
    assert f"https://user:{REDACTED}@collector.example:4318/v1/traces" in caplog.text


def test_child_process_log_shows_its_command_line_without_url_passwords(tmp_path: Path) -> None:
    argv = (sys.executable, "-c", "pass", "--trace-config", "opentelemetry,url=https://u:s3cret@c:4318")
    process = ManagedProcess("child", argv, {}, tmp_path / "child.log")
    process.popen.wait(timeout=60)
    process.stop()

    log = (tmp_path / "child.log").read_text()
    assert "s3cret" not in log and f"url=https://u:{REDACTED}@c:4318" in log
