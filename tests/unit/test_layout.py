"""The code's layout rules, checked without starting any process of the cluster.

Every ``.py`` file under ``cluster/`` and ``api/`` is parsed with :mod:`ast` (the generated
``cluster/common/shoal_pb2*.py`` modules are skipped):

- no import cycles between modules, counting imports inside functions and under
  ``if TYPE_CHECKING:``;
- no module uses another module's private names (``from x import _y``, ``x._y`` on an
  imported module); a private *module* (``api._apps``) may be imported from inside its own
  package only;
- every subpackage ``cluster/*/__init__.py`` is empty, so importing a package imports
  nothing (a worker never pulls in gRPC that way);
- importing ``cluster.worker.worker`` does not import ``grpc`` or ``google.protobuf``;
- no module is over ``MAX_LINES`` lines.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from functools import cache

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("cluster", "api")
GENERATED_PREFIX = "cluster/common/shoal_pb2"
MAX_LINES = 700
#: Modules the worker process must not load (the worker speaks the wire format, not gRPC).
WORKER_FORBIDDEN = ("grpc", "google.protobuf")


@dataclass
class Module:
    name: str
    path: str  # relative to ROOT, with '/'
    is_package: bool
    tree: ast.Module
    lines: int


@dataclass
class Imports:
    #: (line, imported module) for every import, wherever it is in the file.
    edges: list[tuple[int, str]] = field(default_factory=list)
    #: Rule violations about private names, as messages.
    private: list[str] = field(default_factory=list)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@cache
def modules() -> dict[str, Module]:
    found: dict[str, Module] = {}
    for package in PACKAGES:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, package)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for filename in sorted(filenames):
                if not filename.endswith(".py"):
                    continue
                path = os.path.relpath(os.path.join(dirpath, filename), ROOT).replace(os.sep, "/")
                if path.startswith(GENERATED_PREFIX):
                    continue
                parts = path[:-3].split("/")
                is_package = parts[-1] == "__init__"
                if is_package:
                    parts.pop()
                with open(os.path.join(ROOT, path), encoding="utf-8") as f:
                    source = f.read()
                name = ".".join(parts)
                found[name] = Module(name, path, is_package, ast.parse(source, path),
                                     len(source.splitlines()))
    return found


def _is_module(name: str) -> bool:
    """A module of the project, generated ones included."""
    if name in modules():
        return True
    path = os.path.join(ROOT, *name.split("."))
    return os.path.isfile(path + ".py") or os.path.isfile(os.path.join(path, "__init__.py"))


def _in_project(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _resolve_from(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module.name.split(".")
    base = parts if module.is_package else parts[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _private_module_owner(name: str) -> str | None:
    """For a module path with a private part (``api._apps``), the package it is private to."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if i and _is_private(part):
            return ".".join(parts[:i])
    return None


def _may_import_module(importer: str, target: str) -> bool:
    owner = _private_module_owner(target)
    return owner is None or importer == owner or importer.startswith(owner + ".")


def _owner_of_private_module_name(name: str) -> str | None:
    return _private_module_owner(name) if _in_project(name) else None


@cache
def imports_of(name: str) -> Imports:
    module = modules()[name]
    out = Imports()
    aliases: dict[str, str] = {}  # local name -> project module it stands for
    where = module.path

    def check_module(line: int, target: str) -> None:
        if _owner_of_private_module_name(target) and not _may_import_module(name, target):
            out.private.append(f"{where}:{line}: imports {target}, private to "
                               f"{_private_module_owner(target)}")

    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name
                if _in_project(target):
                    out.edges.append((node.lineno, target))
                    check_module(node.lineno, target)
                    if alias.asname:
                        aliases[alias.asname] = target
                    else:
                        aliases[target.split(".")[0]] = target.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(module, node)
            if base == "__future__":
                continue
            project = _in_project(base)
            if project:
                check_module(node.lineno, base)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if project and _is_module(full):
                    out.edges.append((node.lineno, full))
                    check_module(node.lineno, full)
                    aliases[alias.asname or alias.name] = full
                else:
                    if project:
                        out.edges.append((node.lineno, base))
                    if _is_private(alias.name):
                        out.private.append(f"{where}:{node.lineno}: from {base} import "
                                           f"{alias.name} (a private name)")

    def dotted(expr: ast.expr) -> str | None:
        if isinstance(expr, ast.Name):
            return aliases.get(expr.id)
        if isinstance(expr, ast.Attribute):
            base = dotted(expr.value)
            if base is not None and _is_module(f"{base}.{expr.attr}"):
                return f"{base}.{expr.attr}"
        return None

    for node in ast.walk(module.tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            base = dotted(node.value)
            if base is None:
                continue
            full = f"{base}.{node.attr}"
            if _is_module(full):
                check_module(node.lineno, full)
            else:
                out.private.append(f"{where}:{node.lineno}: {ast.unparse(node)} "
                                   f"(private name of {base})")
    out.private.sort(key=lambda p: int(p.split(":")[1]))
    return out


def graph() -> dict[str, set[str]]:
    """Module -> modules it imports (only modules of the project that are checked)."""
    known = modules()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name in known:
        for _, target in imports_of(name).edges:
            if target not in known and _is_module(target):
                continue  # a generated module: it imports nothing of ours
            # `from a.b import name`: the edge is to the deepest module that exists
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges[name].add(target)
    return edges


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def shortest_cycle(edges: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    """The shortest chain start -> ... -> start inside one component."""
    parent: dict[str, str] = {}
    queue = deque([start])
    seen = {start}
    while queue:
        node = queue.popleft()
        for child in sorted(edges[node] & within):
            if child == start:
                chain = [node]
                while chain[-1] != start:
                    chain.append(parent[chain[-1]])
                return [*reversed(chain), start]
            if child not in seen:
                seen.add(child)
                parent[child] = node
                queue.append(child)
    return []


def import_cycles() -> list[str]:
    edges = graph()
    cycles: list[str] = []
    seen: set[tuple[str, ...]] = set()
    for component in strongly_connected(edges):
        within = set(component)
        for start in component:
            chain = shortest_cycle(edges, start, within)
            ring = chain[:-1]
            pivot = ring.index(min(ring))
            key = tuple(ring[pivot:] + ring[:pivot])
            if key not in seen:
                seen.add(key)
                cycles.append(" -> ".join([*key, key[0]]))
    return sorted(cycles)


def _fail(what: str, problems: list[str]) -> None:
    if problems:
        listing = "\n  ".join(problems)
        raise AssertionError(f"{len(problems)} {what}:\n  {listing}")


def test_modules_found():
    names = modules()
    assert "cluster.worker.worker" in names and "api" in names
    assert not any(m.path.startswith(GENERATED_PREFIX) for m in names.values())


def test_no_import_cycles():
    _fail("import cycle(s)", import_cycles())


def test_no_private_names_across_modules():
    problems = [p for name in sorted(modules()) for p in imports_of(name).private]
    _fail("use(s) of another module's private names", problems)


def test_subpackage_inits_are_empty():
    problems = []
    for name, module in sorted(modules().items()):
        if not module.is_package or name.count(".") != 1 or not name.startswith("cluster."):
            continue
        body = module.tree.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            body = body[1:]  # a docstring imports nothing
        if body:
            problems.append(f"{module.path}: {len(body)} statement(s), first at line "
                            f"{body[0].lineno}; keep it empty")
    _fail("non-empty subpackage __init__.py", problems)


def _import_chain(importtime: str, target: str) -> list[str]:
    """From ``-X importtime`` output, the chain of imports that first loaded `target`."""
    rows = []
    for line in importtime.splitlines():
        if not line.startswith("import time:") or line.rstrip().endswith("| imported package"):
            continue
        name_part = line.split("|")[-1]
        depth = (len(name_part) - len(name_part.lstrip())) // 2
        rows.append((depth, name_part.strip()))
    for i, (depth, mod) in enumerate(rows):
        if mod == target or mod.startswith(target + "."):
            chain = [mod]
            for later_depth, later in rows[i + 1:]:  # children print before their parent
                if later_depth < depth:
                    chain.append(later)
                    depth = later_depth
            chain.reverse()
            first = next(j for j, m in enumerate(chain)
                         if m == target or m.startswith(target + "."))
            return chain[: first + 1]
    return []


def test_worker_does_not_import_grpc():
    code = "import sys, cluster.worker.worker; print(' '.join(sorted(sys.modules)))"
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=ROOT,
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = run.stdout.split()
    problems = []
    for forbidden in WORKER_FORBIDDEN:
        if any(m == forbidden or m.startswith(forbidden + ".") for m in loaded):
            chain = _import_chain(run.stderr, forbidden)
            problems.append(f"{forbidden} is imported, via " + " -> ".join(chain))
    _fail("forbidden import(s) in the worker", problems)


def test_no_module_too_long():
    by_length = sorted(modules().values(), key=lambda m: -m.lines)
    print("\nlongest modules:")
    for module in by_length[:8]:
        print(f"  {module.lines:5d} {module.path}")
    _fail(f"module(s) over {MAX_LINES} lines",
          [f"{m.path}: {m.lines} lines" for m in by_length if m.lines > MAX_LINES])
