"""Triton version policies: which versions a config selects, and pinning them on disk.

:func:`write_version_policy` rewrites only the ``version_policy`` field of a
``config.pbtxt`` - comments, order and layout of everything else are kept -
checks that the result parses to the same config with the new policy, and
replaces the file atomically (``os.replace``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from engine.errors import ConfigError


def policy_kind(config: mc.ModelConfig) -> str:
    """``latest`` (also when unset), ``all`` or ``specific``."""
    return config.version_policy.WhichOneof("policy_choice") or "latest"


def selected_versions(config: mc.ModelConfig, available: Sequence[int]) -> list[int]:
    """The versions Triton loads under the config's version policy."""
    policy = config.version_policy
    kind = policy_kind(config)
    if kind == "all":
        return sorted(available)
    if kind == "specific":
        return sorted(int(v) for v in policy.specific.versions)
    n = policy.latest.num_versions if policy.HasField("latest") else 1
    return sorted(available)[-max(n, 1) :]


def with_policy(config: mc.ModelConfig, versions: Sequence[int]) -> mc.ModelConfig:
    """A copy of ``config`` whose version policy is ``specific`` ``versions``."""
    out = mc.ModelConfig()
    out.CopyFrom(config)
    out.version_policy.Clear()
    out.version_policy.specific.versions.extend(sorted(set(versions)))
    return out


def _code(text: str, start: int = 0) -> Iterator[tuple[int, str]]:
    """Characters of protobuf text outside comments and string literals, with their index."""
    i, n = start, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif c in "\"'":
            i += 1
            while i < n and text[i] != c:
                i += 2 if text[i] == "\\" else 1
            i += 1
        else:
            yield i, c
            i += 1


def _policy_span(text: str) -> tuple[int, int] | None:
    """Start and end of the top-level ``version_policy`` field in protobuf text."""
    depth, start = 0, None
    for i, c in _code(text):
        if c in "{<":
            depth += 1
            if depth == 1 and start is not None:
                return start, _block_end(text, i)
        elif c in "}>":
            depth -= 1
        elif depth == 0 and start is None and text.startswith("version_policy", i) and _word_start(text, i):
            start = i
    return None


def _word_start(text: str, i: int) -> bool:
    return i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")


def _block_end(text: str, i: int) -> int:
    depth = 0
    for j, c in _code(text, i):
        depth += (c in "{<") - (c in "}>")
        if depth == 0:
            return j + 1
    raise ConfigError("unbalanced braces after version_policy")


def render_policy(versions: Sequence[int]) -> str:
    """``version_policy: { specific: { versions: [ ... ] } }``."""
    listed = ", ".join(str(v) for v in sorted(set(versions)))
    return f"version_policy: {{ specific: {{ versions: [ {listed} ] }} }}"


def write_version_policy(model_dir: Path, versions: Sequence[int]) -> None:
    """Set the on-disk policy to ``specific`` ``versions``; other text is kept as it is."""
    path = Path(model_dir) / "config.pbtxt"
    text = path.read_text()
    config = text_format.Parse(text, mc.ModelConfig())
    span = _policy_span(text)
    policy = render_policy(versions)
    if span is None:
        new_text = text.rstrip("\n") + "\n" + policy + "\n"
    else:
        new_text = text[: span[0]] + policy + text[span[1] :]
    parsed = text_format.Parse(new_text, mc.ModelConfig())
    if parsed != with_policy(config, versions):
        raise ConfigError(f"{path}: rewriting version_policy changed other fields; not written")
    _atomic_write(path, new_text)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
