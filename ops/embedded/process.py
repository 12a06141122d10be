"""Child processes for the embedded servers: spawn, log, wait until ready, stop.

Nothing here reads the environment except :func:`child_env`, the one place a
child's environment is built.
"""

import contextlib
import ctypes
import ctypes.util
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from engine.errors import EngineError
from engine.redact import redact_url

log = logging.getLogger(__name__)


_LOG_TAIL_BYTES = 4000
_POLL_INTERVAL_S = 0.2


class EmbeddedServerError(EngineError):
    """An embedded server failed to start, died or did not become ready."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise EmbeddedServerError(f"{what} not found at {path}")
    return path


def child_env(
    extra: Mapping[str, str] | None = None,
    *,
    path_prepend: Iterable[Path] = (),
    ld_library_prepend: Iterable[Path] = (),
) -> dict[str, str]:
    """A copy of this process's environment for a child, with additions.

    The one place this module touches ``os.environ``.
    """
    env = dict(os.environ)
    for key, dirs in (("PATH", path_prepend), ("LD_LIBRARY_PATH", ld_library_prepend)):
        parts = [str(d) for d in dirs] + [p for p in env.get(key, "").split(os.pathsep) if p]
        if parts:
            env[key] = os.pathsep.join(parts)
    env.update(extra or {})
    return env


def death_signal_hook() -> Callable[[], None] | None:
    """A preexec hook that SIGKILLs the child when this process dies (Linux, best-effort).

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked exits, so it is
    only armed for children started from the main thread.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not (threading.main_thread()):
        return None
    parent = os.getpid()

    def hook() -> None:
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
            if os.getppid() != parent:  # the parent died before prctl
                os._exit(1)

    return hook


@dataclass
class ManagedProcess:
    """A child process whose stdout/stderr go to ``log_path``; started on construction.

    ``start()`` spawns it again with the same command line (after ``stop()``).
    """

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] = field(init=False, repr=False)
    _log_file: IO[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.start()

    def start(self) -> None:
        """Spawn the process (again), appending to the log file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._close_log()
        self._log_file = self.log_path.open("ab")
        command = redact_url(" ".join(self.argv))  # e.g. Triton's OTLP URL with credentials
        self._log_file.write(f"\n=== starting {self.name}: {command}\n".encode())
        self._log_file.flush()
        self.popen = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=str(self.log_path.parent),
            start_new_session=True,
            preexec_fn=death_signal_hook(),
        )

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.popen.pid

    @property
    def alive(self) -> bool:
        """Whether the child is still running."""
        return self.popen.poll() is None

    def log_tail(self, max_bytes: int = _LOG_TAIL_BYTES) -> str:
        """The last ``max_bytes`` of the log file."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(max(0, fh.seek(0, os.SEEK_END) - max_bytes))
                return fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def wait_ready(self, check: Callable[[], bool], timeout: float) -> None:
        """Poll ``check`` until true; raise :class:`EmbeddedServerError` on exit/timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive:
                raise EmbeddedServerError(
                    f"{self.name} exited with code {self.popen.returncode}; log tail:\n" + self.log_tail()
                )
            with contextlib.suppress(Exception):
                if check():
                    return
            if time.monotonic() >= deadline:
                raise EmbeddedServerError(
                    f"{self.name} not ready after {timeout:.0f}s; log tail:\n" + self.log_tail()
                )
            time.sleep(_POLL_INTERVAL_S)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %.0fs; killing it", self.name, timeout)
                self.kill()
        self._close_log()

    def kill(self) -> None:
        """SIGKILL the child immediately (for chaos tests) and reap it."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
        self.popen.wait()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


# --------------------------------------------------------------------- Kafka


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether a GET of ``url`` answers 200 (readiness probes)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False
