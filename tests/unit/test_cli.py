"""The ``sie`` command line: expected errors are one line, secrets never printed or logged."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from pydantic import BaseModel, Field, ValidationError
from typer.testing import CliRunner

from engine.settings import Settings
from ops.cli import app
from ops.cli_errors import is_expected
from ops.embedded import EmbeddedServerError
from tests.unit.deploy_support import REPO

SECRET = "s3cret"
OTLP = f"https://user:{SECRET}@collector.example:4318/v1/traces"


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port of 127.0.0.1 something listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def keep_sigterm_handler() -> Iterator[None]:
    """``sie up`` installs a SIGTERM handler; give pytest its own back."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_sie_settings_never_shows_the_password_of_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIE_OTLP_ENDPOINT", OTLP)
    monkeypatch.setenv("SIE_TRITON__URL", f"svc:{SECRET}@triton:8001")

    result = CliRunner().invoke(app, ["settings"])

    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert "https://user:**********@collector.example:4318/v1/traces" in result.output
    assert "svc:**********@triton:8001" in result.output


def test_sie_settings_still_redacts_secret_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIE_KAFKA__SASL_PASSWORD", SECRET)

    result = CliRunner().invoke(app, ["settings"])

    assert result.exit_code == 0 and SECRET not in result.output
    assert '"sasl_password": "**********"' in result.output


def test_worker_start_log_never_shows_the_password_of_a_url(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import ops.worker

    started: list[object] = []

    class NoWorker:
        def __init__(self, settings: object) -> None:
            started.append(settings)

        def run(self) -> None:
            pass

    monkeypatch.setattr(ops.worker, "Worker", NoWorker)
    monkeypatch.setenv("SIE_OTLP_ENDPOINT", OTLP)
    monkeypatch.setenv("SIE_KAFKA__SASL_PASSWORD", SECRET)
    caplog.set_level(logging.INFO, logger="ops.cli")

    result = CliRunner().invoke(app, ["worker"])

    assert result.exit_code == 0, result.output
    assert started, "the worker was started"
    (line,) = [r.getMessage() for r in caplog.records if "starting worker with" in r.getMessage()]
    assert SECRET not in line
    assert "user:**********@collector.example" in line and "**********" in line


def test_sie_up_with_a_port_in_use_prints_one_line_naming_it_and_exits_non_zero(busy_port: int) -> None:
    result = CliRunner().invoke(app, ["up", "--kafka-port", str(busy_port)])

    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    (line,) = lines(result.output)
    assert f"Kafka port {busy_port}" in line and "already in use" in line
    assert "Traceback" not in result.output


def test_sie_worker_with_an_invalid_setting_prints_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIE_BATCH__MAX_SIZE", "0")

    result = CliRunner().invoke(app, ["worker"])

    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    (line,) = lines(result.output)
    assert "batch.max_size" in line and "greater than 0" in line
    assert "Traceback" not in result.output


def test_invalid_setting_error_never_echoes_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIE_KAFKA__SECURITY_PROTOCOL", SECRET)

    result = CliRunner().invoke(app, ["settings"])

    assert result.exit_code != 0
    (line,) = lines(result.output)
    assert "kafka.security_protocol" in line and SECRET not in line


def test_missing_binary_or_java_prints_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import ops.embedded.kafka_dist

    def no_java() -> None:
        raise EmbeddedServerError("Java 17+ not found (install a JDK or set JAVA_HOME)")

    monkeypatch.setattr(ops.embedded.kafka_dist, "find_java", no_java)

    result = CliRunner().invoke(app, ["fetch-kafka"])

    assert result.exit_code != 0
    assert lines(result.output) == ["error: Java 17+ not found (install a JDK or set JAVA_HOME)"]


def test_a_bug_still_shows_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import ops.embedded.kafka_dist

    def bug() -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(ops.embedded.kafka_dist, "find_java", bug)

    result = CliRunner().invoke(app, ["fetch-kafka"])

    assert isinstance(result.exception, ZeroDivisionError)


def test_debug_flag_shows_the_traceback_of_an_expected_error(busy_port: int) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ops.cli", "--debug", "up", "--kafka-port", str(busy_port)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode != 0
    assert "Traceback" in done.stderr and "StackError" in done.stderr, done.stderr
    assert f"Kafka port {busy_port}" in done.stderr


def test_only_settings_validation_errors_count_as_expected() -> None:
    class Spec(BaseModel):
        size: int = Field(gt=0)

    with pytest.raises(ValidationError) as bad_spec:
        Spec(size=0)
    with pytest.raises(ValidationError) as bad_settings:
        Settings.model_validate({"batch": {"max_size": 0}})

    assert not is_expected(bad_spec.value), "a model other than the settings failing is a bug"
    assert is_expected(bad_settings.value)
