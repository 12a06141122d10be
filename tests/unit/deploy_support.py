"""Helpers for the static checks of the deployment files (compose, Dockerfile, k8s)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from engine.settings import Settings

REPO = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = REPO / "model_repository"


def settings_env_names() -> set[str]:
    """Every ``SIE_*`` variable name the settings object reads, derived from its fields."""
    config = Settings.model_config
    prefix = str(config.get("env_prefix", "")).upper()
    delimiter = str(config.get("env_nested_delimiter", "__"))
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            section = f"{prefix}{name.upper()}{delimiter}"
            names |= {f"{section}{inner.upper()}" for inner in annotation.model_fields}
        else:
            names.add(f"{prefix}{name.upper()}")
    return names


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """Build ``Settings`` from exactly ``env`` (the process environment is ignored)."""
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith("SIE_")}
    try:
        for key in saved:
            del os.environ[key]
        os.environ.update(env)
        return Settings()
    finally:
        for key in env:
            os.environ.pop(key, None)
        os.environ.update(saved)


class ComposeLoader(yaml.SafeLoader):
    """A YAML loader that understands Compose's ``!reset`` and ``!override`` tags."""


class Reset(list):
    """A value tagged ``!reset`` (the merged file drops the key)."""


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    if isinstance(node, yaml.SequenceNode):
        return Reset(loader.construct_sequence(node))
    return Reset()


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


ComposeLoader.add_constructor("!reset", _reset)
ComposeLoader.add_constructor("!override", _override)


def load_compose(path: Path) -> dict[str, Any]:
    """A compose file as plain data (``!reset`` values become :class:`Reset`)."""
    with path.open() as f:
        return yaml.load(f, Loader=ComposeLoader)  # noqa: S506 - SafeLoader subclass


def merge_compose(base: Any, override: Any) -> Any:
    """Compose's merge, for the parts used here: mappings merge, other values replace, ``!reset`` drops."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                merged.pop(key, None)
            elif key in merged:
                merged[key] = merge_compose(merged[key], value)
            else:
                merged[key] = value
        return merged
    return override


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: Any, env: Mapping[str, str] | None = None) -> Any:
    """Compose variable interpolation (``${X}``, ``${X:-d}``, ``${X-d}``, ``$$``) over any value."""
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, default = match.group(2), match.group(3) or ""
        current = env.get(name)
        if op == ":-" and not current:
            return default
        if op == "-" and current is None:
            return default
        return current or ""

    return _VAR.sub(sub, value)


def env_mapping(environment: Any) -> dict[str, str]:
    """A service's ``environment`` (mapping or ``KEY=VALUE`` list) as a dict of strings."""
    if isinstance(environment, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {k: "" if v is None else str(v) for k, v in (environment or {}).items()}


def model_names() -> set[str]:
    """Models of the repository: sub-directories holding a ``config.pbtxt``."""
    return {p.parent.name for p in MODEL_REPOSITORY.glob("*/config.pbtxt")}


def host_port(address: str) -> tuple[str, int]:
    """``host`` and ``port`` of ``host:port`` or ``scheme://host:port/path``."""
    rest = address.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = rest.rpartition(":")
    return host, int(port)


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction; comments dropped, continuation lines joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        result.append((keyword.upper(), args.strip()))
        pending = ""
    return result


KAFKA_TOPICS = "/opt/kafka/bin/kafka-topics.sh"


def run_topic_script(script: str, env: Mapping[str, str], work_dir: Path) -> list[list[str]]:
    """Run a topic-creation bash script with a recording stand-in for ``kafka-topics.sh``.

    Returns the argument lists of every ``kafka-topics.sh`` call, in order.
    """
    record = work_dir / "calls.txt"
    fake = work_dir / "kafka-topics.sh"
    fake.write_text(f'#!/bin/bash\nprintf "%s\\x1f" "$@" >> {record}\necho >> {record}\n')
    fake.chmod(0o755)
    assert KAFKA_TOPICS in script, "the script does not call kafka-topics.sh"
    done = subprocess.run(
        ["/bin/bash", "-c", script.replace(KAFKA_TOPICS, str(fake))],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = record.read_text().splitlines() if record.exists() else []
    return [line.rstrip("\x1f").split("\x1f") for line in lines]


def created_topics(calls: list[list[str]]) -> dict[str, dict[str, str]]:
    """``topic -> {option: value}`` of the ``--create`` calls."""
    topics = {}
    for call in calls:
        if "--create" in call:
            pairs = zip(call, call[1:], strict=False)
            options = {a: b for a, b in pairs if a.startswith("--") and not b.startswith("--")}
            topics[options["--topic"]] = options
    return topics
