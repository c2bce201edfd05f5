"""The package's shape, for a structural change's closing note: modules, import circles, the
longest functions, `Any` in signatures. `python scripts/structure.py [REPO] [--only PREFIXES]
[--json]`: REPO defaults to this checkout (another lets a change be compared with its parent's
worktree); `--only hymba_bench.runner,hymba_bench.cli` lists the longest functions of those
modules only."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def modules(repo: Path = REPO) -> dict[str, Path]:
    out = {}
    package = repo / "hymba_bench"
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(repo).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path, known: set[str], lazy: bool) -> set[str]:
    """The package modules `name` imports: at module level (and under TYPE_CHECKING), and with
    `lazy` inside functions too. `from a import b` counts `a.b` where that is a module, and `a`.
    A module's own parent packages do not count (Python imports them first, whatever it
    says)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import | ast.ImportFrom) and (lazy or not in_function):
                if isinstance(child, ast.Import):
                    targets = [a.name for a in child.names]
                else:
                    base = child.module or ""
                    if child.level:
                        parts = name.split(".")
                        keep = len(parts) - child.level + (path.name == "__init__.py")
                        pkg = parts[:keep]
                        base = ".".join([*pkg, base] if base else pkg)
                    targets = [f"{base}.{a.name}" for a in child.names] + [base]
                for t in targets:
                    while t and t not in known:
                        t = t.rpartition(".")[0]
                    # a module's own packages are imported before it: not an edge of a circle
                    if t and t != name and not name.startswith(t + "."):
                        found.add(t)
            visit(child, inner)

    visit(tree, False)
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            strong(v)
    return out


def longest_functions(paths: dict[str, Path], top: int = 6,
                      only: tuple[str, ...] = ()) -> list[tuple[str, int]]:
    sizes = []
    for name, path in paths.items():
        if only and not name.startswith(only):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno:
                sizes.append((f"{name}.{node.name}", node.end_lineno - node.lineno + 1))
    return sorted(sizes, key=lambda s: -s[1])[:top]


def any_in_signatures(paths: dict[str, Path]) -> int:
    """Parameters and returns annotated `Any`."""
    count = 0
    for path in paths.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args
                notes = [a.annotation for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
                count += sum(1 for n in [*notes, node.returns]
                             if n is not None and ast.unparse(n) == "Any")
    return count


def report(repo: Path = REPO, only: tuple[str, ...] = ()) -> dict[str, object]:
    paths = modules(repo)
    known = set(paths)
    eager = {n: imports(n, p, known, lazy=False) for n, p in paths.items()}
    every = {n: imports(n, p, known, lazy=True) for n, p in paths.items()}
    return {"modules": len(paths),
            "lines": sum(len(p.read_text().splitlines()) for p in paths.values()),
            "circles_module_level": circles(eager),
            "circles_with_function_imports": circles(every),
            "longest_functions": longest_functions(paths, only=only),
            "any_in_signatures": any_in_signatures(paths)}


if __name__ == "__main__":
    argv = sys.argv[1:]
    only = ()
    if "--only" in argv:
        at = argv.index("--only")
        only = tuple(argv[at + 1].split(","))
        del argv[at:at + 2]
    given = [a for a in argv if not a.startswith("-")]
    data = report(Path(given[0]) if given else REPO, only)
    if "--json" in sys.argv:
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            print(f"{key}: {value}")
