"""The tested dependency set is locked: constraints.txt pins every distribution, and every install uses it."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)$")


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement (``tritonclient[grpc]==2.51.0`` -> tritonclient)."""
    raw = re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", raw).lower()


def locked() -> dict[str, str]:
    """constraints.txt as name -> version."""
    pins: dict[str, str] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            match = PIN.match(line.strip())
            assert match, f"constraints.txt: {line!r} is not an exact pin"
            pins[_name(match[1])] = match[2]
    return pins


def requirements() -> list[str]:
    """Every requirement of pyproject.toml, extras included."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]


def test_every_requirement_of_every_extra_is_locked_to_one_version() -> None:
    pins = locked()
    assert sorted({_name(r) for r in requirements()} - set(pins)) == []


def test_the_exact_pins_of_pyproject_are_the_locked_versions() -> None:
    pins = locked()
    for requirement in requirements():
        if "==" in requirement:
            assert pins[_name(requirement)] == requirement.split("==", 1)[1].split(";")[0].strip(), (
                requirement
            )


def test_onnx_is_locked_with_a_numpy_it_supports() -> None:
    assert int(locked()["numpy"].split(".")[0]) < 2


def test_every_pip_install_of_the_makefile_uses_the_constraints() -> None:
    installs = [line for line in (REPO / "Makefile").read_text().splitlines() if "pip install" in line]
    # (make lock resolves afresh in its own virtualenv: the one install without them)
    project_installs = [line for line in installs if '-e "' in line and "LOCK_VENV" not in line]
    assert project_installs and all("-c constraints.txt" in line for line in project_installs), installs
    stamp_rule = next(
        line for line in (REPO / "Makefile").read_text().splitlines() if line.startswith("$(STAMP):")
    )
    assert "constraints.txt" in stamp_rule
