"""A Triton model repository on disk: validate configs, deploy versions, pin version policies.

Pure file logic, no server. ``config.pbtxt`` is parsed with Triton's own
protobuf ``ModelConfig`` (from tritonclient), so what passes here is what
Triton parses. Every problem names the file and the config field.

* :func:`validate_repository` / :func:`validate_model` - config fields and the
  files each version needs for its backend.
* :func:`deploy` - copy a version into ``<model>/.deploy-*`` (inside the model
  directory, so the same filesystem) and ``os.rename`` it to the next number:
  Triton never sees a half-written version. Before the first deploy a
  ``latest``/``all`` version policy is pinned to the versions it selects
  today, so a new directory changes nothing until it is promoted, even if
  Triton restarts.
* version policies: see inference/version_policy.py.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from engine.errors import ConfigError
from inference.onnx_graph import GraphMismatch, check_graph, config_as_dict
from inference.version_policy import policy_kind, selected_versions, write_version_policy

CONFIG_FILE = "config.pbtxt"
DEPLOY_PREFIX = ".deploy-"
_IGNORED = shutil.ignore_patterns("__pycache__", "*.py[co]")

# Default file (or directory) each backend/platform loads from a version directory.
BACKEND_FILES: dict[str, str] = {
    "python": "model.py",
    "onnxruntime": "model.onnx",
    "onnxruntime_onnx": "model.onnx",
    "pytorch": "model.pt",
    "pytorch_libtorch": "model.pt",
    "tensorrt": "model.plan",
    "tensorrt_plan": "model.plan",
    "tensorflow_savedmodel": "model.savedmodel",
    "tensorflow_graphdef": "model.graphdef",
    "openvino": "model.xml",
}
NO_FILES = frozenset({"ensemble"})


@dataclass(frozen=True)
class Problem:
    """One finding of validation: ``file: field: message``."""

    path: Path
    field: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.path}: {self.field}: {self.message}"


class RepositoryError(ConfigError):
    """The repository (or a version to deploy) is invalid; carries the problems."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


def errors(problems: Sequence[Problem]) -> list[Problem]:
    """Only the problems that are errors."""
    return [p for p in problems if p.severity == "error"]


def parse_config(path: Path) -> mc.ModelConfig:
    """Parse a ``config.pbtxt``; raises :class:`RepositoryError` naming line and column."""
    try:
        text = path.read_text()
    except OSError as err:
        raise RepositoryError([Problem(path, "-", f"cannot read: {err.strerror}")]) from None
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as err:
        where = f"line {err.GetLine()}" if err.GetLine() else "-"
        raise RepositoryError([Problem(path, where, str(err))]) from None


def model_dirs(repository: Path) -> list[Path]:
    """Model directories (those holding a ``config.pbtxt``), by name."""
    return sorted(p.parent for p in Path(repository).glob(f"*/{CONFIG_FILE}"))


def version_dirs(model_dir: Path) -> list[int]:
    """Numbered version directories of a model, ascending."""
    if not Path(model_dir).is_dir():
        return []
    return sorted(int(p.name) for p in Path(model_dir).iterdir() if p.is_dir() and p.name.isdigit())


def backend_of(config: mc.ModelConfig) -> str:
    """The backend name, else the platform (``""`` when neither is set)."""
    return config.backend or config.platform


def validate_config(config: mc.ModelConfig, model_dir: Path) -> list[Problem]:
    """Checks of the config's fields (not of the version files)."""
    path = Path(model_dir) / CONFIG_FILE
    found: list[Problem] = []

    def add(field: str, message: str, severity: Literal["error", "warning"] = "error") -> None:
        found.append(Problem(path, field, message, severity))

    if config.name and config.name != Path(model_dir).name:
        add("name", f"is {config.name!r} but the directory is {Path(model_dir).name!r}")
    if not backend_of(config):
        add("backend", "neither 'backend' nor 'platform' is set")
    if config.max_batch_size < 0:
        add("max_batch_size", "must be >= 0")
    if config.HasField("dynamic_batching"):
        if config.max_batch_size == 0:
            add("dynamic_batching", "needs max_batch_size > 0")
        for size in config.dynamic_batching.preferred_batch_size:
            if config.max_batch_size and size > config.max_batch_size:
                add("dynamic_batching.preferred_batch_size", f"{size} > max_batch_size")
    for kind, tensors in (("input", config.input), ("output", config.output)):
        if not tensors and backend_of(config) not in NO_FILES:
            add(kind, f"no {kind} declared")
        names = [t.name for t in tensors]
        for i, tensor in enumerate(tensors):
            field = f"{kind}[{i}]"
            if not tensor.name:
                add(f"{field}.name", "is empty")
            if tensor.data_type == mc.TYPE_INVALID:
                add(f"{field}.data_type", "is not set")
            if not tensor.dims and not tensor.HasField("reshape"):
                add(f"{field}.dims", "is empty")
            if any(d < -1 or d == 0 for d in tensor.dims):
                add(f"{field}.dims", f"{list(tensor.dims)}: each must be > 0 or -1")
        for dup in sorted({n for n in names if names.count(n) > 1}):
            add(kind, f"name {dup!r} declared twice")
    if policy_kind(config) == "latest" and config.version_policy.latest.num_versions < 0:
        add("version_policy.latest.num_versions", "must be >= 1")
    return found


def validate_version_files(config: mc.ModelConfig, version_dir: Path) -> list[Problem]:
    """The files the backend needs in one version directory."""
    backend = backend_of(config)
    if backend in NO_FILES:
        return []
    expected = config.default_model_filename or BACKEND_FILES.get(backend)
    if expected is None:
        return [Problem(version_dir, "backend", f"unknown backend {backend!r}: files not checked", "warning")]
    target = Path(version_dir) / expected
    field = "default_model_filename" if config.default_model_filename else "backend"
    if not target.exists():
        return [Problem(target, field, f"missing: the {backend} backend loads {expected!r}")]
    if target.suffix == ".py":
        return _check_python(target)
    if target.suffix == ".onnx":
        return _check_onnx(config, target)
    return []


def _check_onnx(config: mc.ModelConfig, path: Path) -> list[Problem]:
    try:
        check_graph(config_as_dict(config), path)
    except GraphMismatch as err:
        message = "the graph does not match this config: " + "; ".join(err.differences)
        return [Problem(path, "input/output", message)]
    return []


def _check_python(path: Path) -> list[Problem]:
    try:
        compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
    except SyntaxError as err:
        return [Problem(path, f"line {err.lineno}", f"syntax error: {err.msg}")]
    if not re.search(r"^class\s+TritonPythonModel\b", path.read_text(), re.MULTILINE):
        return [Problem(path, "TritonPythonModel", "the python backend needs a class TritonPythonModel")]
    return []


def validate_model(model_dir: Path) -> list[Problem]:
    """Every problem of one model directory: config fields, policy, version files."""
    model_dir = Path(model_dir)
    try:
        config = parse_config(model_dir / CONFIG_FILE)
    except RepositoryError as err:
        return list(err.problems)
    found = validate_config(config, model_dir)
    available = version_dirs(model_dir)
    if not available:
        found.append(Problem(model_dir, "version", "no numbered version directory"))
    if policy_kind(config) == "specific":
        for v in selected_versions(config, available):
            if v not in available:
                field = "version_policy.specific.versions"
                found.append(Problem(model_dir / CONFIG_FILE, field, f"version {v} has no directory"))
    for v in available:
        found.extend(validate_version_files(config, model_dir / str(v)))
    return found


def validate_repository(repository: Path, names: Sequence[str] = ()) -> dict[str, list[Problem]]:
    """Problems per model (all models, or ``names``)."""
    repository = Path(repository)
    dirs = [repository / n for n in names] if names else model_dirs(repository)
    if not dirs:
        return {"*": [Problem(repository, "-", f"no model directory with a {CONFIG_FILE}")]}
    return {d.name: validate_model(d) for d in dirs}


# --- deploy -------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployed:
    """Result of :func:`deploy`."""

    model: str
    version: int
    path: Path
    pinned: tuple[int, ...] | None  # the policy pinned by this deploy, if it was not already


def source_version_dir(source: Path) -> Path:
    """A version directory to deploy: ``source`` itself, or the highest version under a model dir."""
    source = Path(source)
    if not source.is_dir():
        raise RepositoryError([Problem(source, "PATH", "not a directory")])
    numbered = version_dirs(source)
    if (source / CONFIG_FILE).exists() and numbered:
        return source / str(numbered[-1])
    return source


def _signature(config: mc.ModelConfig) -> list[tuple[str, int, tuple[int, ...]]]:
    tensors = [*config.input, *config.output]
    return [(t.name, t.data_type, tuple(t.dims)) for t in tensors]


def check_deployable(model_dir: Path, source: Path) -> tuple[mc.ModelConfig, Path]:
    """The model's config and the version dir to copy; raises when either is invalid."""
    config = parse_config(Path(model_dir) / CONFIG_FILE)
    found = errors(validate_config(config, model_dir))
    version_dir = source_version_dir(source)
    found += errors(validate_version_files(config, version_dir))
    source_config = Path(source) / CONFIG_FILE
    if source_config.exists() and _signature(parse_config(source_config)) != _signature(config):
        found.append(Problem(source_config, "input/output", "differ from the served model's config"))
    if found:
        raise RepositoryError(found)
    return config, version_dir


@contextmanager
def _model_lock(model_dir: Path) -> Iterator[None]:
    with (Path(model_dir) / ".deploy.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def deploy(repository: Path, name: str, source: Path, version: int | None = None) -> Deployed:
    """Add ``source`` as the next (or the given) version of model ``name``, atomically."""
    model_dir = Path(repository) / name
    if not (model_dir / CONFIG_FILE).exists():
        raise RepositoryError([Problem(model_dir / CONFIG_FILE, "-", f"model {name!r} not in repository")])
    config, version_dir = check_deployable(model_dir, source)
    with _model_lock(model_dir):
        existing = version_dirs(model_dir)
        target = version if version is not None else max(existing, default=0) + 1
        if target <= 0 or target in existing:
            raise RepositoryError([Problem(model_dir / str(target), "version", "exists or is not positive")])
        pinned = None
        if existing and policy_kind(config) != "specific":
            pinned = tuple(selected_versions(config, existing))
            write_version_policy(model_dir, pinned)
        tmp = model_dir / f"{DEPLOY_PREFIX}{target}-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(version_dir, tmp, ignore=_IGNORED)
            os.rename(tmp, model_dir / str(target))
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return Deployed(name, target, model_dir / str(target), pinned)
