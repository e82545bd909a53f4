"""The package's import structure, read from the source with `ast` (every import, those inside
functions included): no import cycles, no import from a lower layer into a higher one (the
order is `[tool.inferx-slurm.layers]` in pyproject.toml), and no use of another module's
private names."""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "inferx_slurm"


@dataclass
class Graph:
    package: str
    modules: dict[str, Path]
    # (importer, imported, line) for every import of one of the package's modules
    edges: list[tuple[str, str, int]] = field(default_factory=list)
    # (importer, line, what) for every use of another module's private name
    private: list[tuple[str, int, str]] = field(default_factory=list)


def find_modules(root: Path, package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def build_graph(root: Path, package: str) -> Graph:
    g = Graph(package, find_modules(root, package))
    for name, path in g.modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_pkg = path.name == "__init__.py"
        bound: dict[str, str] = {}  # local name -> the package's module or object it refers to

        def add(target: str, line: int) -> None:
            if target != name:
                g.edges.append((name, target, line))

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == package or a.name.startswith(package + "."):
                        add(a.name, node.lineno)
                        bound[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = here[: len(here) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                if not (base == package or base.startswith(package + ".")):
                    continue
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    target = sub if sub in g.modules else base
                    add(target, node.lineno)
                    bound[a.asname or a.name] = sub
                    if target == base and is_private(a.name) and base != name:
                        g.private.append((name, node.lineno, f"imports {a.name} from {base}"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and is_private(node.attr):
                owner = dotted(node.value, bound)
                if owner and owner != name and owner.split(".")[0] == package:
                    g.private.append((name, node.lineno, f"uses {owner}.{node.attr}"))
    return g


def dotted(node: ast.expr, bound: dict[str, str]) -> str | None:
    """The package object an expression names (`alias`, `alias.sub`), or None."""
    if isinstance(node, ast.Name):
        return bound.get(node.id)
    if isinstance(node, ast.Attribute):
        base = dotted(node.value, bound)
        return f"{base}.{node.attr}" if base else None
    return None


def read_layers(pyproject: Path) -> list[list[str]]:
    return tomllib.loads(pyproject.read_text())["tool"]["inferx-slurm"]["layers"]["order"]


def layer_of(module: str, package: str, layers: list[list[str]]) -> int | None:
    """The layer of the longest prefix (on dotted boundaries) that matches the module."""
    rel = package if module == package else module[len(package) + 1:]
    best, best_len = None, -1
    for i, group in enumerate(layers):
        for prefix in group:
            if (rel == prefix or rel.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    return best


def cycles(g: Graph) -> list[str]:
    """Every strongly connected group of modules, as one import loop through it."""
    adj: dict[str, dict[str, int]] = {m: {} for m in g.modules}
    for a, b, line in g.edges:
        adj[a].setdefault(b, line)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in adj[v]:
            if w not in index:
                visit(w)
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
                groups.append(sorted(comp))

    for m in sorted(adj):
        if m not in index:
            visit(m)
    out = []
    for comp in groups:
        members, start = set(comp), comp[0]
        came: dict[str, str] = {}
        frontier = [start]
        while start not in came:  # breadth first inside the component: a shortest loop through start
            nxt = []
            for v in frontier:
                for w in sorted(adj[v]):
                    if w in members and w not in came:
                        came[w] = v
                        nxt.append(w)
            frontier = nxt
        back, v = [], came[start]
        while v != start:
            back.append(v)
            v = came[v]
        path = [start, *reversed(back)]
        hops = [f"{a} (line {adj[a][b]})" for a, b in zip(path, path[1:] + path[:1])]
        out.append(" -> ".join(hops) + f" -> {comp[0]}")
    return out


def upward(g: Graph, layers: list[list[str]]) -> list[str]:
    out = [f"{m}: in no layer of [tool.inferx-slurm.layers]" for m in g.modules if layer_of(m, g.package, layers) is None]
    for a, b, line in g.edges:
        la, lb = layer_of(a, g.package, layers), layer_of(b, g.package, layers)
        if la is not None and lb is not None and lb > la:
            out.append(f"{a} (layer {la}: {', '.join(layers[la])}) imports {b} (layer {lb}: {', '.join(layers[lb])}) at line {line}")
    return sorted(set(out))


def private_uses(g: Graph) -> list[str]:
    return sorted({f"{m} line {line}: {what}" for m, line, what in g.private})


RULES = {"cycles": lambda g, layers: cycles(g), "layers": upward, "private_names": lambda g, layers: private_uses(g)}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_package_imports(rule):
    g = build_graph(REPO, PACKAGE)
    assert len(g.modules) > 50 and len(g.edges) > 200  # the whole package was read
    violations = RULES[rule](g, read_layers(REPO / "pyproject.toml"))
    assert not violations, f"{len(violations)} {rule} violation(s):\n" + "\n".join(violations)


def test_the_checks_find_what_they_look_for(tmp_path):
    """A small package with one of each fault: the checks name each one."""
    files = {
        "__init__.py": "from pkg.top import run\n",
        "low.py": "def helper():\n    from pkg import mid\n    return mid._secret\n",
        "mid.py": "from pkg.low import helper\n_secret = 1\n",
        "top.py": "from pkg.mid import _secret\nimport pkg.low as lo\n\ndef run():\n    return lo._x, lo.helper()\n",
        "sub/__init__.py": "",
        "sub/leaf.py": "from . import deep\nfrom ..low import helper\n",
        "sub/deep.py": "",
        "stray.py": "",
    }
    for rel, text in files.items():
        (tmp_path / "pkg" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / rel).write_text(text)
    layers = [["low", "sub"], ["mid"], ["top", "pkg"]]
    g = build_graph(tmp_path, "pkg")
    assert ("pkg.sub.leaf", "pkg.sub.deep", 1) in g.edges and ("pkg.sub.leaf", "pkg.low", 2) in g.edges
    assert cycles(g) == ["pkg.low (line 2) -> pkg.mid (line 1) -> pkg.low"]
    assert upward(g, layers) == ["pkg.low (layer 0: low, sub) imports pkg.mid (layer 1: mid) at line 2",
                                 "pkg.stray: in no layer of [tool.inferx-slurm.layers]"]
    assert private_uses(g) == ["pkg.low line 3: uses pkg.mid._secret", "pkg.top line 1: imports _secret from pkg.mid",
                               "pkg.top line 5: uses pkg.low._x"]
    assert layer_of("pkg", "pkg", layers) == 2 and layer_of("pkg.sub.deep", "pkg", layers) == 0


def test_the_layer_table_names_modules_that_exist():
    layers = read_layers(REPO / "pyproject.toml")
    rel = {m[len(PACKAGE) + 1:] for m in find_modules(REPO, PACKAGE) if m != PACKAGE} | {PACKAGE}
    # Placed in the order before they exist: the job-directory contract and the reporter.
    coming = {"job.paths", "reporting"}
    missing = [p for group in layers for p in group if p not in coming and not any(r == p or r.startswith(p + ".") for r in rel)]
    assert not missing, f"prefixes that match no module: {missing}"
