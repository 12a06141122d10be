"""engine/contract/: the decode leg of an event stays inside the package and the few core modules it names.

Checked on the source (an AST scan of every import, inside functions and under
``if TYPE_CHECKING:`` too): the package imports from ``engine/`` only itself and
:data:`ALLOWED_CORE`, re-exports nothing, and its modules import no circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "engine.contract"
CONTRACT = REPO / "engine" / "contract"
# The core modules the contract may use: the records it turns raw bytes into, the error reasons,
# the model's tensor specs, escaped text for messages, the limits, and A/B routes.
ALLOWED_CORE = frozenset(
    {
        "engine.records",
        "engine.errors",
        "engine.modelspec",
        "engine.safe_text",
        "engine.settings",
        "engine.routing",
    }
)


def _resolved(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = parts[: len(parts) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(source: str, package: str) -> set[str]:
    """Every module ``source`` imports; ``from X import y`` counts as ``X.y`` when that names a module.

    ``package``: the package a relative import is resolved against (for ``a/b/c.py``, ``a.b``;
    for ``a/b/__init__.py``, ``a.b`` as well).
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = _resolved(node, package)
            found.add(module)
            found.update(
                f"{module}.{alias.name}" for alias in node.names if _is_module(f"{module}.{alias.name}")
            )
    return found


def _is_module(dotted: str) -> bool:
    path = REPO.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def contract_modules() -> dict[str, set[str]]:
    """Module name -> the modules it imports, for every module of engine/contract/."""
    out = {}
    for path in sorted(CONTRACT.glob("*.py")):
        name = PACKAGE if path.name == "__init__.py" else f"{PACKAGE}.{path.stem}"
        out[name] = imports_of(path.read_text(), PACKAGE)
    return out


def outside_core(imports: set[str]) -> set[str]:
    """The imports that leave the contract for a module of engine/ not in :data:`ALLOWED_CORE`.

    (``engine`` itself holds nothing: ``from engine import x`` is checked as ``engine.x``.)
    """
    return {
        m
        for m in imports
        if m.startswith("engine.")
        and not (m == PACKAGE or m.startswith(PACKAGE + "."))
        and m not in ALLOWED_CORE
    }


def test_the_contract_imports_from_the_core_only_the_modules_it_names() -> None:
    leaks = {name: sorted(outside_core(imports)) for name, imports in contract_modules().items()}
    assert {name: found for name, found in leaks.items() if found} == {}


def test_every_allowed_core_module_exists_and_imports_nothing_of_the_contract() -> None:
    for name in ALLOWED_CORE:
        path = REPO.joinpath(*name.split(".")).with_suffix(".py")
        assert path.is_file(), f"{name} is allowed but does not exist"
        back = {m for m in imports_of(path.read_text(), "engine") if m.startswith(PACKAGE)}
        assert back == set(), f"{name} imports {sorted(back)} back"


def test_the_package_init_is_a_docstring_only_and_re_exports_nothing() -> None:
    tree = ast.parse((CONTRACT / "__init__.py").read_text())
    assert len(tree.body) == 1
    assert isinstance(tree.body[0], ast.Expr)
    assert isinstance(tree.body[0].value, ast.Constant)
    assert isinstance(tree.body[0].value.value, str)


def test_no_contract_module_declares_all_to_re_export() -> None:
    for path in CONTRACT.glob("*.py"):
        names = {
            t.id
            for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.Assign | ast.AnnAssign)
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(t, ast.Name)
        }
        assert "__all__" not in names, f"{path.name} declares __all__"


def test_the_contract_modules_import_no_circle() -> None:
    modules = contract_modules()
    graph = {name: {m for m in imports if m in modules and m != name} for name, imports in modules.items()}
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"import circle: {' -> '.join((*path, node))}"
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, (*path, node))
        done.add(node)

    for start in sorted(graph):
        visit(start, ())


def test_the_boundary_check_reports_a_planted_import_of_another_core_module() -> None:
    planted = (
        "from typing import TYPE_CHECKING\n"
        "from engine.contract.wire import media_type\n"
        "from engine import pipeline\n"
        "from .. import outcomes\n"
        "if TYPE_CHECKING:\n    from engine.ports import Sink\n"
        "def f():\n    import engine.batcher\n"
        "from engine.records import Event\n"
    )
    found = outside_core(imports_of(planted, PACKAGE))
    assert found == {"engine.pipeline", "engine.outcomes", "engine.ports", "engine.batcher"}
