"""Static checks of the engine image's Dockerfile and .dockerignore."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path

import tomllib
from typer.main import get_command

from engine.settings import Settings
from ops.cli import app
from tests.unit.deploy_support import REPO, dockerfile_instructions

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
README = REPO / "README.md"


def of(keyword: str) -> list[str]:
    return [args for kw, args in dockerfile_instructions(DOCKERFILE) if kw == keyword]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"{args!r} is not exec form"
    return value


def pip_installs(shell: str) -> list[list[str]]:
    """Each ``pip install ...`` command (as tokens) in a shell line."""
    found = []
    for command in re.split(r"&&|\|\||;", shell):
        tokens = shlex.split(command)
        if "pip" in tokens and tokens[tokens.index("pip") + 1 : tokens.index("pip") + 2] == ["install"]:
            found.append(tokens[tokens.index("pip") :])
    return found


def documented_production_install() -> list[list[str]]:
    """``pip install`` commands of the README's Production section."""
    text = README.read_text()
    start = text.index("<!-- section:production -->")
    end = text.find("\n## ", start)
    section = text[start : end if end != -1 else None]
    lines = [line.strip().lstrip("$ ") for line in section.splitlines()]
    inline = re.findall(r"`(pip install [^`]+)`", section)
    return [cmd for line in [*lines, *inline] if line.startswith("pip install") for cmd in pip_installs(line)]


def ignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def ignored(path: str) -> bool:
    """Whether .dockerignore excludes ``path`` (or one of its parents) from the build context."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(c, p.lstrip("/")) for p in ignore_patterns() for c in candidates)


def test_dockerfile_installs_the_package_with_the_documented_production_command() -> None:
    installs = [cmd for run in of("RUN") for cmd in pip_installs(run)]
    assert len(installs) == 1, f"exactly one pip install expected, got {installs}"
    documented = documented_production_install()
    assert documented, "README's Production section documents no pip install command"
    assert installs[0] in documented, f"Dockerfile runs {installs[0]}, README documents {documented}"
    assert "-e" not in installs[0], "the image installs the package, not an editable checkout"


def test_image_runs_as_an_unprivileged_user_it_creates() -> None:
    users = of("USER")
    assert users, "no USER instruction: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    created = " ".join(of("RUN"))
    assert re.search(rf"useradd\b[^&;]*\b{re.escape(user)}\b", created), f"user {user} is never created"
    steps = dockerfile_instructions(DOCKERFILE)
    last_user = max(i for i, (kw, _) in enumerate(steps) if kw == "USER")
    assert steps[-1][0] in ("CMD", "ENTRYPOINT") and last_user < len(steps) - 1
    assert uid_of(user) != 0, "the user must not be uid 0"


def uid_of(user: str) -> int:
    """The uid ``useradd`` gives ``user`` in the Dockerfile (``--uid N``)."""
    match = re.search(rf"useradd\b[^&;]*--uid\s+(\d+)[^&;]*\b{re.escape(user)}\b", " ".join(of("RUN")))
    assert match, f"useradd of {user} sets no explicit --uid"
    return int(match[1])


def test_entry_point_is_sie_worker() -> None:
    (entrypoint,), cmd = of("ENTRYPOINT"), of("CMD")
    argv = exec_form(entrypoint) + (exec_form(cmd[-1]) if cmd else [])
    assert argv == ["sie", "worker"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["sie"] == "ops.cli:app"
    assert "worker" in get_command(app).commands  # type: ignore[attr-defined]


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    sources = []
    for args in of("COPY"):
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        sources += words[:-1]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY of missing {source}"
        assert not ignored(source), f"COPY {source}, but .dockerignore excludes it"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    needed |= {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert needed <= set(sources), f"the install needs {needed - set(sources)}"


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_context() -> None:
    for path in (".git", ".venv", ".sie", "tests", ".env", "engine/__pycache__"):
        assert ignored(path), f"{path} would be sent to the Docker daemon"


def test_image_serves_health_on_the_settings_metrics_port() -> None:
    default_port = Settings.model_fields["metrics_port"].default
    assert of("EXPOSE") == [str(default_port)]
    env = " ".join(of("ENV"))
    assert f"SIE_METRICS_PORT={default_port}" in env
    (healthcheck,) = of("HEALTHCHECK")
    assert f"localhost:{default_port}/healthz" in healthcheck


def test_base_image_is_a_python_release_the_package_supports() -> None:
    (image,) = of("FROM")
    name, _, tag = image.partition(":")
    match = re.match(r"(\d+)\.(\d+)", tag)
    assert name == "python" and match, f"unpinned or unexpected base image {image}"
    required = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(x) for x in required.removeprefix(">=").split("."))
    assert (int(match[1]), int(match[2])) >= minimum
