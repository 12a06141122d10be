"""``sie models``: list, validate, deploy, promote and roll back model versions; make compressed
variants of ONNX models (``compress``) and measure them against the original (``report``).

Defaults fit the embedded stack of ``sie up``: the repository is the copy
Triton serves, ``<data_dir>/stack/model_repository`` (``SIE_DATA_DIR``,
default ``.sie``), and Triton is ``SIE_TRITON__URL`` (default
``127.0.0.1:8001``, the port ``sie up`` uses). Point ``--repository`` at the
directory *your* Triton serves (``--model-repository``) for any other setup.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from engine.errors import EngineError
from engine.settings import Settings, TritonSettings
from inference.repository import (
    CONFIG_FILE,
    Problem,
    RepositoryError,
    backend_of,
    deploy,
    errors,
    model_dirs,
    parse_config,
    validate_repository,
    version_dirs,
)
from inference.version_policy import policy_kind, selected_versions

if TYPE_CHECKING:
    from inference.model_control import ModelControl

models_app = typer.Typer(
    help="Model repository: list, validate, deploy, promote, roll back; compress ONNX models, report."
)
console = Console(soft_wrap=True)  # paths in messages stay whole
err_console = Console(stderr=True, soft_wrap=True)

RepoOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--repository",
        "-r",
        help="Model repository Triton serves [default: <data_dir>/stack/model_repository, as `sie up`].",
    ),
]
TritonOpt = Annotated[
    Optional[str],
    typer.Option("--triton-url", help="Triton gRPC host:port [default: SIE_TRITON__URL or 127.0.0.1:8001]."),
]


def _settings() -> Settings:
    return Settings()


def repository_path(repository: Path | None) -> Path:
    """The repository to work on: the option, else the one ``sie up`` serves."""
    return repository if repository is not None else _settings().data_dir / "stack" / "model_repository"


def triton_settings(url: str | None) -> TritonSettings:
    """Triton connection settings from the environment, with ``--triton-url`` applied."""
    triton = _settings().triton
    return triton.model_copy(update={"url": url}) if url else triton


def _fail(err: Exception) -> typer.Exit:
    problems = err.problems if isinstance(err, RepositoryError) else ()
    for p in problems:
        err_console.print(f"[red]error[/] {p}")
    if not problems:
        err_console.print(f"[red]error[/] {err}")
    return typer.Exit(1)


@contextmanager
def _control(repository: Path, triton_url: str | None) -> Iterator[ModelControl]:
    """Triton's model control for one command, closed afterwards (also when the command fails)."""
    from inference.model_control import ModelControl

    control = ModelControl(triton_settings(triton_url), repository)
    try:
        yield control
    finally:
        control.close()


@models_app.command("list")
def list_models(
    repository: RepoOpt = None,
    triton_url: TritonOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Models on disk, their versions and policy, and what Triton serves (if reachable)."""
    repo = repository_path(repository)
    served: dict[str, dict[int, str]] | None = None
    try:
        with _control(repo, triton_url) as control:
            served = control.index()
    except EngineError as err:
        err_console.print(f"[yellow]Triton not reachable ({err}); showing the repository only[/]")
    rows: list[dict[str, Any]] = []
    for model_dir in model_dirs(repo):
        try:
            config = parse_config(model_dir / CONFIG_FILE)
        except RepositoryError as err:
            raise _fail(err) from None
        on_disk = version_dirs(model_dir)
        states = (served or {}).get(model_dir.name, {})
        rows.append(
            {
                "model": model_dir.name,
                "backend": backend_of(config),
                "versions": on_disk,
                "policy": policy_kind(config),
                "policy_versions": selected_versions(config, on_disk),
                "served": None if served is None else sorted(v for v, s in states.items() if s == "READY"),
            }
        )
    if as_json:
        typer.echo(json.dumps({"repository": str(repo), "models": rows}, indent=2))
        return
    table = Table(title=f"models in {repo}")
    for col in ("model", "backend", "versions on disk", "policy", "served by Triton"):
        table.add_column(col)
    for r in rows:
        shown = "?" if r["served"] is None else ", ".join(map(str, r["served"])) or "-"
        policy = f"{r['policy']} {r['policy_versions']}"
        table.add_row(r["model"], r["backend"], ", ".join(map(str, r["versions"])), policy, shown)
    console.print(table)


@models_app.command()
def validate(
    names: Annotated[Optional[list[str]], typer.Argument(help="Models to check (default: all).")] = None,
    repository: RepoOpt = None,
) -> None:
    """Parse each config.pbtxt with Triton's ModelConfig and check every version's files."""
    repo = repository_path(repository)
    results = validate_repository(repo, names or ())
    failed = False
    for name, problems in results.items():
        for p in problems:
            colour = "red" if p.severity == "error" else "yellow"
            console.print(f"[{colour}]{p.severity}[/] {p}")
        if errors(problems):
            failed = True
        else:
            console.print(f"[green]ok[/] {name}")
    raise typer.Exit(1 if failed else 0)


@models_app.command("deploy")
def deploy_cmd(
    name: Annotated[str, typer.Argument(help="Model to add a version to.")],
    path: Annotated[Path, typer.Argument(help="A version directory, or a model dir (its highest version).")],
    version: Annotated[Optional[int], typer.Option(help="Version number [default: next].")] = None,
    repository: RepoOpt = None,
    promote: Annotated[bool, typer.Option(help="Promote it right after deploying.")] = False,
    triton_url: TritonOpt = None,
) -> None:
    """Add PATH as the next numbered version of NAME, atomically; served only once promoted."""
    repo = repository_path(repository)
    try:
        result = deploy(repo, name, path, version)
    except (EngineError, OSError) as err:
        raise _fail(err) from None
    if result.pinned is not None:
        console.print(f"pinned {name}'s version policy to {list(result.pinned)} (was latest/all)")
    console.print(f"[green]deployed[/] {name} version {result.version} at {result.path}")
    if promote:
        promote_cmd(name, result.version, repository=repo, triton_url=triton_url)


@models_app.command("promote")
def promote_cmd(
    name: Annotated[str, typer.Argument(help="Model.")],
    version: Annotated[Optional[int], typer.Argument(help="Version [default: highest on disk].")] = None,
    keep_previous: Annotated[
        bool, typer.Option(help="Keep the previous version loaded too (A/B between versions).")
    ] = False,
    repository: RepoOpt = None,
    triton_url: TritonOpt = None,
) -> None:
    """Load VERSION while the current one serves, then switch to it."""
    repo = repository_path(repository)
    try:
        with _control(repo, triton_url) as control:
            switch = control.promote(name, version, keep_previous=keep_previous)
    except EngineError as err:
        raise _fail(err) from None
    console.print(
        f"[green]promoted[/] {name}: served {list(switch.before)} -> {list(switch.after)} "
        f"in {switch.seconds:.1f}s"
    )


@models_app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="Model.")],
    to: Annotated[Optional[int], typer.Option(help="Version [default: the one below the served].")] = None,
    repository: RepoOpt = None,
    triton_url: TritonOpt = None,
) -> None:
    """Serve the previous version again (same zero-downtime switch as promote)."""
    repo = repository_path(repository)
    try:
        with _control(repo, triton_url) as control:
            switch = control.rollback(name, to)
    except EngineError as err:
        raise _fail(err) from None
    console.print(
        f"[green]rolled back[/] {name}: served {list(switch.before)} -> {list(switch.after)} "
        f"in {switch.seconds:.1f}s"
    )


@models_app.command()
def compress(
    name: Annotated[str, typer.Argument(help="ONNX model (platform onnxruntime_onnx) to compress.")],
    kinds: Annotated[
        Optional[list[str]],
        typer.Option("--kind", "-k", help="fp16, int8 (static QDQ) or int8_dynamic; repeat [default: all]."),
    ] = None,
    calibration: Annotated[
        Optional[Path],
        typer.Option(
            help="INT8 calibration inputs (.npz: batch_0, batch_1, ...) [default: NAME/calibration.npz]."
        ),
    ] = None,
    repository: RepoOpt = None,
) -> None:
    """Write NAME_fp16, NAME_int8, NAME_int8_dynamic beside NAME, each its own Triton model."""
    import logging

    from inference.variants import KINDS, make_variant

    repo = repository_path(repository)
    logging.getLogger().setLevel(logging.ERROR)  # ONNX Runtime's quantizer warns on the root logger
    original = None
    for kind in kinds or list(KINDS):
        try:
            target = make_variant(repo, name, kind, calibration=calibration)
        except (EngineError, OSError) as err:
            raise _fail(err) from None
        size = (target / "1" / "model.onnx").stat().st_size
        if original is None:
            original = max((repo / name).glob("[0-9]*/model.onnx")).stat().st_size
        console.print(
            f"[green]made[/] {target.name} ({kind}): {target / '1' / 'model.onnx'}, {size:,} bytes "
            f"({size / original:.2f}x of {name})"
        )
    console.print("load it with `sie models promote <name>`; shadow it beside the original: docs/models.md")


@models_app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def report(ctx: typer.Context) -> None:
    """Measure the ONNX models and their variants; write docs/models.md (benchmarks/models_report.py)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "models_report.py").is_file():
        err_console.print("[red]sie models report needs a source checkout (benchmarks/ beside engine/)[/]")
        raise typer.Exit(2)
    raise typer.Exit(subprocess.call([sys.executable, "-m", "benchmarks.models_report", *ctx.args], cwd=root))


__all__ = ["Problem", "models_app"]
