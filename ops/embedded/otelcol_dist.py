"""The OpenTelemetry Collector of the project: built once from pinned Go sources, then cached.

``observability/otel/builder.yaml`` is the OpenTelemetry Collector Builder's
manifest; ``observability/otel/otelcol-sie/`` holds what the builder generated
from it (``main.go``, ``components.go``, ``go.mod``, ``go.sum``: regenerate
with ``make otelcol-sources``). :func:`otelcol_binary` compiles those sources
with ``go build`` into ``<cache>/otelcol-<version>-<hash>/otelcol-sie`` the
first time (Go fetches the modules ``go.sum`` pins) and returns that path on
every later call without running Go. The hash covers the manifest and the
sources, so a changed manifest builds a new binary beside the old one.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ops.embedded.kafka_dist import default_cache_dir, locked
from ops.embedded.process import EmbeddedServerError, child_env

OTELCOL_VERSION = "0.165.0"
OTEL_DIR = Path(__file__).resolve().parents[2] / "observability" / "otel"
MANIFEST = OTEL_DIR / "builder.yaml"
SOURCES = OTEL_DIR / "otelcol-sie"
BINARY_NAME = "otelcol-sie"
MIN_GO = (1, 26)  # go.mod of the generated sources: `go 1.26.0`
GO_FALLBACK = Path("/usr/local/go/bin/go")  # where the official tarball installs it, often not on PATH
_COMPLETE = ".complete"
_BUILD_TIMEOUT_S = 1200
_PROGRESS_EVERY_S = 15.0


def source_hash(manifest: Path = MANIFEST, sources: Path = SOURCES) -> str:
    """12 hex digits of SHA-256 over the manifest and every generated source file."""
    digest = hashlib.sha256(manifest.read_bytes())
    for path in sorted(p for p in sources.iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def find_go() -> str:
    """The ``go`` command (on PATH, else ``/usr/local/go/bin/go``), checked to be new enough."""
    go = shutil.which("go") or (str(GO_FALLBACK) if GO_FALLBACK.is_file() else None)
    if go is None:
        raise EmbeddedServerError(
            f"building the OpenTelemetry Collector needs Go {MIN_GO[0]}.{MIN_GO[1]}+ and no `go` is on "
            "PATH or in /usr/local/go/bin (install it from https://go.dev/dl/)"
        )
    version = go_version(go)
    if version is not None and version < MIN_GO:
        raise EmbeddedServerError(
            f"building the OpenTelemetry Collector needs Go {MIN_GO[0]}.{MIN_GO[1]}+; {go} is "
            f"{version[0]}.{version[1]} (install a newer one from https://go.dev/dl/)"
        )
    return go


def go_version(go: str) -> tuple[int, int] | None:
    """(major, minor) of ``go env GOVERSION`` (``go1.26.8`` -> (1, 26)); None if unreadable."""
    try:
        out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.match(r"go(\d+)\.(\d+)", out.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def cached_binary(cache_dir: Path | None = None) -> Path | None:
    """The built Collector for the current sources, or None when it is not built yet."""
    home = _home(cache_dir)
    return home / BINARY_NAME if (home / _COMPLETE).is_file() else None


def otelcol_binary(
    cache_dir: Path | None = None, *, on_progress: Callable[[str], None] | None = None
) -> Path:
    """The Collector binary, built with Go on first use (needs ``go`` then; minutes)."""
    home = _home(cache_dir)
    binary = home / BINARY_NAME
    if (home / _COMPLETE).is_file():
        return binary
    home.mkdir(parents=True, exist_ok=True)
    with locked(home / ".lock"):
        if (home / _COMPLETE).is_file():  # another process built it while we waited
            return binary
        say = on_progress or (lambda _msg: None)
        go = find_go()
        say(f"building the OpenTelemetry Collector {OTELCOL_VERSION} with {go} into {home} (once)")
        started = time.monotonic()
        _build(go, binary, say)
        took = time.monotonic() - started
        size_mb = binary.stat().st_size / 1e6
        (home / _COMPLETE).write_text(f"built in {took:.0f}s, {size_mb:.1f} MB\n")
        say(f"built {binary.name} ({size_mb:.0f} MB) in {took:.0f}s")
    return binary


def _home(cache_dir: Path | None) -> Path:
    return (cache_dir or default_cache_dir()) / f"otelcol-{OTELCOL_VERSION}-{source_hash()}"


def _build(go: str, binary: Path, say: Callable[[str], None]) -> None:
    """``go build`` of the pinned sources into ``binary``, reporting progress every few seconds."""
    partial = binary.with_name(binary.name + ".partial")
    argv = [go, "build", "-v", "-trimpath", "-ldflags=-s -w", "-o", str(partial), "."]
    # GOTOOLCHAIN=local: never download another Go; -mod=readonly: go.sum as pinned, never rewritten;
    # -buildvcs=false: no git stamp (the sources may sit in a checkout git cannot read).
    env = child_env({"GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly -buildvcs=false", "CGO_ENABLED": "0"})
    env["PATH"] = os.pathsep.join([str(Path(go).parent), env.get("PATH", "")])
    with subprocess.Popen(
        argv, cwd=SOURCES, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        tail = _follow(proc, say)
    if proc.returncode != 0 or not partial.is_file():
        raise EmbeddedServerError(
            f"go build of the OpenTelemetry Collector failed (exit {proc.returncode}):\n" + "\n".join(tail)
        )
    partial.rename(binary)


def _follow(proc: subprocess.Popen[str], say: Callable[[str], None]) -> list[str]:
    """Count modules downloaded and packages compiled until ``proc`` ends; its last 40 lines."""
    started = next_report = time.monotonic()
    modules = packages = 0
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-40:]
        if line.startswith("go: downloading "):
            modules += 1
        elif line and not line.startswith(("go:", "#")):
            packages += 1
        now = time.monotonic()
        if now >= next_report + _PROGRESS_EVERY_S:
            fetched = f", {modules} modules downloaded" if modules else ""
            say(f"{now - started:.0f}s: {packages} of ~950 packages compiled{fetched}")
            next_report = now
        if now - started > _BUILD_TIMEOUT_S:
            proc.kill()
            raise EmbeddedServerError(f"go build of the Collector did not finish in {_BUILD_TIMEOUT_S}s")
    proc.wait()
    return tail
