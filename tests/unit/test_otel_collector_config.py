"""The Collector configurations the project ships, checked by the Collector it builds (``otelcol validate``).

One pipeline (``observability/otel/collector.yaml``) with two overlays: compose
(-> Jaeger) and local (-> a file; ``sie up`` and the trace tests), plus the
forward overlay ``sie up --otlp-forward`` writes. The pinned generated sources
must match the builder manifest they were generated from.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from ops.embedded.otelcol import (
    COMPOSE_OVERLAY,
    LOCAL_OVERLAY,
    PIPELINE,
    collector_env,
    config_files,
    forward_overlay,
)
from ops.embedded.otelcol_dist import MANIFEST, OTELCOL_VERSION, SOURCES, otelcol_binary, source_hash
from ops.embedded.process import EmbeddedServerError, child_env


@pytest.fixture(scope="module")
def otelcol() -> Path:
    try:
        return otelcol_binary()
    except EmbeddedServerError as exc:  # no Go on this machine and nothing built: say so
        pytest.skip(f"the OpenTelemetry Collector is not built and cannot be: {exc}")


def validate(binary: Path, files: list[Path], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = child_env(collector_env(4317, 4318, tmp_path / "traces.jsonl"))
    argv = [str(binary), "validate", *(f"--config={f}" for f in files)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("overlay", [COMPOSE_OVERLAY, LOCAL_OVERLAY], ids=["compose", "local"])
def test_the_shared_pipeline_with_each_overlay_passes_otelcol_validate(
    otelcol: Path, overlay: Path, tmp_path: Path
) -> None:
    done = validate(otelcol, [PIPELINE, overlay], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_forward_overlay_passes_otelcol_validate_for_a_base_url_and_a_traces_url(
    otelcol: Path, tmp_path: Path
) -> None:
    for endpoint in ("http://tempo.example:4318", "https://jaeger.example:4318/v1/traces"):
        files = config_files(tmp_path, endpoint)
        assert files[:2] == [PIPELINE, LOCAL_OVERLAY] and len(files) == 3
        done = validate(otelcol, files, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr


def test_an_invalid_overlay_fails_otelcol_validate(otelcol: Path, tmp_path: Path) -> None:
    """The check above can fail: an exporter the pipeline names but nothing defines."""
    bad = tmp_path / "bad.yaml"
    pipelines = {"traces": {"exporters": ["debug", "otlp/nowhere"]}}
    bad.write_text(yaml.safe_dump({"exporters": {"debug": {}}, "service": {"pipelines": pipelines}}))
    done = validate(otelcol, [PIPELINE, bad], tmp_path)
    assert done.returncode != 0 and "nowhere" in done.stdout + done.stderr


def test_the_forward_overlay_keeps_the_file_exporter_and_adds_one_otlp_http_exporter() -> None:
    overlay = forward_overlay("http://tempo:4318")
    (name,) = overlay["exporters"]  # type: ignore[misc]
    assert overlay["exporters"] == {name: {"endpoint": "http://tempo:4318"}}
    assert overlay["service"] == {"pipelines": {"traces": {"exporters": ["file", name]}}}
    traces_url = forward_overlay("http://tempo:4318/v1/traces")["exporters"]
    assert traces_url == {name: {"traces_endpoint": "http://tempo:4318/v1/traces"}}


def test_the_generated_sources_match_the_builder_manifest() -> None:
    manifest = yaml.safe_load(MANIFEST.read_text())
    go_mod = (SOURCES / "go.mod").read_text()
    imports = (SOURCES / "components.go").read_text() + (SOURCES / "main.go").read_text()
    assert manifest["dist"]["version"] == OTELCOL_VERSION
    kinds = ("receivers", "processors", "exporters", "providers")
    for entry in (e for kind in kinds for e in manifest[kind]):
        module, version = entry["gomod"].split()
        assert re.search(rf"^\s*{re.escape(module)} {re.escape(version)}$", go_mod, re.M), module
        assert f'"{module}"' in imports, f"{module} is not compiled in"
    for replace in manifest["replaces"]:
        assert f"replace {replace}" in go_mod
    assert (SOURCES / "go.sum").stat().st_size > 0


def test_the_build_cache_key_changes_with_the_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "builder.yaml"
    manifest.write_text(MANIFEST.read_text())
    assert source_hash(manifest) == source_hash()
    manifest.write_text(MANIFEST.read_text() + "\n# changed\n")
    assert source_hash(manifest) != source_hash()
