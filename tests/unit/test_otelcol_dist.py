"""Building the Collector once and finding it again (ops/embedded/otelcol_dist.py), without running Go."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import ops.embedded.otelcol_dist as dist
from ops.cli import app
from ops.embedded.process import EmbeddedServerError


def no_go_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist.shutil, "which", lambda _name: None)
    monkeypatch.setattr(dist, "GO_FALLBACK", Path("/nonexistent/go"))


def test_without_go_the_build_fails_with_one_line_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    no_go_anywhere(monkeypatch)
    with pytest.raises(EmbeddedServerError, match=r"needs Go 1\.26\+ and no `go` is on PATH") as err:
        dist.otelcol_binary(tmp_path)
    assert "\n" not in str(err.value) and "https://go.dev/dl/" in str(err.value)


def test_sie_fetch_otelcol_without_go_prints_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    no_go_anywhere(monkeypatch)
    monkeypatch.setattr(dist, "default_cache_dir", lambda: tmp_path)
    result = CliRunner().invoke(app, ["fetch-otelcol"])
    assert result.exit_code != 0
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    assert line.startswith("error: building the OpenTelemetry Collector needs Go")
    assert "Traceback" not in result.output


def test_a_go_older_than_the_sources_need_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist.shutil, "which", lambda _name: "/opt/go1.22/bin/go")
    monkeypatch.setattr(dist, "go_version", lambda _go: (1, 22))
    with pytest.raises(EmbeddedServerError, match=r"needs Go 1\.26\+; /opt/go1\.22/bin/go is 1\.22"):
        dist.find_go()


def test_a_built_collector_is_found_again_without_go(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = tmp_path / f"otelcol-{dist.OTELCOL_VERSION}-{dist.source_hash()}"
    home.mkdir()
    (home / dist.BINARY_NAME).write_bytes(b"\x7fELF")
    assert dist.cached_binary(tmp_path) is None, "no .complete: a build that did not finish"
    (home / ".complete").write_text("built\n")
    no_go_anywhere(monkeypatch)  # finding it must not need Go
    assert dist.otelcol_binary(tmp_path) == dist.cached_binary(tmp_path) == home / dist.BINARY_NAME
