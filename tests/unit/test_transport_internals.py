"""streams/transport.py checks at start-up that the private names of faust-streaming and aiokafka it
relies on exist (their minor versions are pinned in pyproject.toml)."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest
import tomllib

import streams.transport as transport
from engine.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_the_installed_versions_have_every_name() -> None:
    assert transport.missing_internals() == []
    transport.check_internals()


def test_a_missing_name_is_one_clear_error_naming_the_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    class Older(transport.faust_aiokafka.Consumer):  # type: ignore[misc]
        _wait_next_records = None  # as if this faust-streaming had no such method

    name = "faust.transport.drivers.aiokafka.Consumer"
    monkeypatch.setitem(transport.PRIVATE_METHODS, name, (Older, ("_drain_messages", "_wait_next_records")))
    monkeypatch.setitem(
        transport.PRIVATE_ATTRIBUTES, "aiokafka.AIOKafkaConsumer", (object, ("_fetch_max_wait_ms",))
    )
    with pytest.raises(ConfigError) as caught:
        transport.check_internals()
    message = str(caught.value)
    assert f"faust-streaming {version('faust-streaming')}" in message
    assert f"aiokafka {version('aiokafka')}" in message
    assert "faust.transport.drivers.aiokafka.Consumer._wait_next_records" in message
    assert "aiokafka.AIOKafkaConsumer._fetch_max_wait_ms" in message


def test_the_app_checks_before_it_builds_its_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "missing_internals", lambda: ["faust.App._new_transport"])
    app = transport.EngineApp("sie-test-internals", broker="kafka://127.0.0.1:9")
    with pytest.raises(ConfigError, match="faust.App._new_transport"):
        app._new_transport()


@pytest.mark.parametrize("package", ["faust-streaming", "aiokafka"])
def test_the_minor_version_is_pinned_to_the_installed_one(package: str) -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    major, minor = version(package).split(".")[:2]
    assert any(d.replace(" ", "").startswith(f"{package}~={major}.{minor}.") for d in deps), deps
