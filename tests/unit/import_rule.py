"""The package rule of docs/architecture.md as functions of a source tree (an AST scan, nothing imported).

Each check takes the root of a tree and returns what breaks the rule, one line per finding, so
``tests/unit/test_architecture.py`` runs them on this repository and on planted trees alike:

* :func:`core_violations` - ``engine/`` (the core) imports only the standard-library modules of
  :data:`CORE_STDLIB`, the libraries of :data:`CORE_LIBRARIES` and itself (an allow-list: no
  process, signal, socket, HTTP or adapter library gets in under a new name), and uses none of the
  process-control or networking attributes of :data:`CORE_FORBIDDEN_ATTRIBUTES` (``os.kill``,
  ``os._exit``, ``loop.add_signal_handler``, ``asyncio.create_subprocess_exec`` ...), whatever the
  module is called locally;
* :func:`telemetry_violations` - ``observability/`` imports no adapter library
  (:data:`ADAPTER_LIBRARIES`) and, of the project, only ``engine/``;
* :func:`adapter_violations` - an adapter imports ``engine/``, ``observability/`` and itself, never
  another adapter, ``ops/`` or a developer tool;
* :func:`outside_violations` - ``benchmarks/`` and ``model_repository/`` do not import ``tests/``;
* :func:`import_cycles` - no module imports one that imports it back, across the whole project.

Imports inside functions and under ``if TYPE_CHECKING:`` count as well. Relative imports are
resolved against the importing module's package (for an ``__init__.py``, the package itself).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

CORE = "engine"
TELEMETRY = "observability"
ADAPTERS = ("streams", "inference", "models")
COMPOSITION_ROOT = "ops"
# Not part of the engine's import graph: developer tools, the Triton model code and the tests.
OUTSIDE = ("benchmarks", "model_repository", "tests")
PROJECT = (CORE, TELEMETRY, *ADAPTERS, COMPOSITION_ROOT, *OUTSIDE)

# The standard library the core may use: data, text, time, logging, asyncio and thread locks.
# Everything else (os, sys, signal, socket, subprocess, multiprocessing, concurrent, http, urllib,
# ssl, select, ...) is refused because it is not listed.
CORE_STDLIB = frozenset(
    {
        "__future__", "abc", "array", "asyncio", "base64", "binascii", "bisect", "codecs",
        "collections", "contextlib", "copy", "dataclasses", "datetime", "decimal", "enum",
        "fractions", "functools", "gc", "hashlib", "heapq", "itertools", "json", "logging", "math",
        "numbers", "operator", "pathlib", "random", "re", "statistics", "string", "struct",
        "textwrap", "threading", "time", "types", "typing", "unicodedata", "uuid", "weakref", "zlib",
    }
)  # fmt: skip
# Third-party libraries the core may use (pure computation and settings).
CORE_LIBRARIES = frozenset({"numpy", "orjson", "pydantic", "pydantic_settings"})
# Parts of allowed modules that reach processes, signals or sockets.
CORE_FORBIDDEN_SUBMODULES = ("asyncio.subprocess", "asyncio.unix_events", "asyncio.windows_events")
CORE_FORBIDDEN_ATTRIBUTES = frozenset(
    {
        "kill", "killpg", "_exit", "abort", "fork", "forkpty", "system", "popen", "execv", "execve",
        "execvp", "execvpe", "execl", "execle", "execlp", "spawnv", "spawnl", "posix_spawn",
        "pthread_kill", "raise_signal", "set_wakeup_fd", "setitimer", "alarm",
        "add_signal_handler", "remove_signal_handler", "create_subprocess_exec",
        "create_subprocess_shell", "subprocess_exec", "subprocess_shell", "open_connection",
        "start_server", "open_unix_connection", "start_unix_server", "create_connection",
        "create_server", "create_unix_connection", "create_unix_server", "create_datagram_endpoint",
    }
)  # fmt: skip
# Builtins that would smuggle a module or stop the process past the import scan.
CORE_FORBIDDEN_CALLS = frozenset({"__import__", "exit", "quit"})

ADAPTER_LIBRARIES = ("faust", "mode", "aiokafka", "confluent_kafka", "tritonclient", "grpc", "onnxruntime")


@dataclass
class Module:
    """One source file: its dotted name, its package and what it imports and touches."""

    name: str
    path: str  # relative to the root, for messages
    package: str
    imports: set[str] = field(default_factory=set)
    attributes: list[tuple[int, str]] = field(default_factory=list)  # (line, attribute or call)


def module_name(relative: Path) -> tuple[str, str]:
    """(module, package) of a file path relative to the root; an ``__init__.py`` is its package."""
    parts = relative.with_suffix("").parts
    if parts[-1] == "__init__":
        name = ".".join(parts[:-1])
        return name, name
    return ".".join(parts), ".".join(parts[:-1])


def resolve(package: str, level: int, module: str | None) -> str:
    """The absolute name of ``from <level dots><module> import ...`` written in ``package``."""
    if not level:
        return module or ""
    parts = package.split(".") if package else []
    base = parts[: len(parts) - level + 1]
    return ".".join([*base, module] if module else base)


def imported_modules(source: str, package: str) -> set[str]:
    """Every module ``source`` imports (relative imports resolved against ``package``).

    ``from a import b`` yields ``a`` and ``a.b`` (``b`` may be a module).
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = resolve(package, node.level, node.module)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def touched_attributes(source: str) -> list[tuple[int, str]]:
    """(line, name) of every attribute used, every builtin called and every name ``getattr`` is given."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            found.append((node.lineno, node.attr))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            found.append((node.lineno, f"{node.func.id}()"))
            name = node.args[1] if node.func.id in ("getattr", "setattr") and len(node.args) > 1 else None
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                found.append((node.lineno, name.value))
    return found


def scan(root: Path, packages: Iterable[str] = PROJECT) -> dict[str, Module]:
    """Every module of ``packages`` under ``root``, by dotted name."""
    modules: dict[str, Module] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root)
            name, owner = module_name(relative)
            source = path.read_text()
            modules[name] = Module(
                name, str(relative), owner, imported_modules(source, owner), touched_attributes(source)
            )
    return modules


def matches(module: str, prefix: str) -> bool:
    """Whether ``module`` is ``prefix`` or inside it (``http.client`` is in ``http``, ``httpx`` is not)."""
    return module == prefix or module.startswith(prefix + ".")


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def _importing(modules: dict[str, Module], package: str) -> Iterator[tuple[Module, str]]:
    for module in modules.values():
        if matches(module.name, package):
            yield from ((module, imported) for imported in sorted(module.imports))


def core_violations(root: Path) -> list[str]:
    """What in ``engine/`` breaks the core's rule (see the module docstring)."""
    modules = scan(root, (CORE,))
    allowed = CORE_STDLIB | CORE_LIBRARIES | {CORE}
    found = [
        f"{m.path} imports {imported}"
        for m, imported in _importing(modules, CORE)
        if imported
        and (
            _top(imported) not in allowed
            or any(matches(imported, s) for s in CORE_FORBIDDEN_SUBMODULES)
            or imported.rsplit(".", 1)[-1] in CORE_FORBIDDEN_ATTRIBUTES
        )
    ]
    forbidden = CORE_FORBIDDEN_ATTRIBUTES | {f"{c}()" for c in CORE_FORBIDDEN_CALLS}
    for m in modules.values():
        found += [f"{m.path}:{line} uses {name}" for line, name in m.attributes if name in forbidden]
    return found


def _refused(root: Path, package: str, refused: tuple[str, ...]) -> list[str]:
    return [
        f"{m.path} imports {imported}"
        for m, imported in _importing(scan(root, (package,)), package)
        if any(matches(imported, r) for r in refused)
    ]


def telemetry_violations(root: Path) -> list[str]:
    """What in ``observability/`` imports an adapter library or a project package other than the core."""
    others = tuple(p for p in PROJECT if p not in (CORE, TELEMETRY))
    return _refused(root, TELEMETRY, ADAPTER_LIBRARIES + others)


def adapter_violations(root: Path, adapter: str) -> list[str]:
    """What in ``adapter`` imports another adapter, the composition root or a developer tool."""
    return _refused(root, adapter, tuple(p for p in PROJECT if p not in (CORE, TELEMETRY, adapter)))


def outside_violations(root: Path) -> list[str]:
    """What in ``benchmarks/`` or ``model_repository/`` imports ``tests/``."""
    return [
        line for package in ("benchmarks", "model_repository") for line in _refused(root, package, ("tests",))
    ]


def import_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (each import resolved to the module it names)."""
    graph: dict[str, set[str]] = {}
    for module in modules.values():
        targets = set()
        for imported in module.imports:
            while imported and imported not in modules:  # `from a import f` names a.f: a function
                imported = imported.rpartition(".")[0]
            if imported and imported != module.name:
                targets.add(imported)
        graph[module.name] = targets
    return graph


def import_cycles(root: Path) -> list[list[str]]:
    """Every group of project modules that import each other, directly or round about (Tarjan's SCCs)."""
    graph = import_graph(scan(root, [p for p in PROJECT if (root / p).is_dir()]))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(start: str) -> None:
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = stack[stack.index(node) :]
                    del stack[stack.index(node) :]
                    if len(group) > 1:
                        cycles.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in stack:
                low[node] = min(low[node], index[child])

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return cycles


def unplaced_packages(root: Path) -> list[str]:
    """Top-level packages under ``root`` the rule does not know."""
    return sorted({p.parent.name for p in root.glob("*/__init__.py")} - set(PROJECT))
