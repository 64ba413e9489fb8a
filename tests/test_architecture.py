"""The package's shape: imports flow one way, nothing imports the entry scripts, no cycles.

Layers (a module may import its own layer or a lower one):
    facts    config, yaml_loader, paths, interval, process, errors, cache, storage, stop,
             faults (test-only pause points)
    work     train, eval, study
    mirror   tracking
    jobs     cluster
    commands cli, __main__
Read from the source (every `import`/`from ... import`, at any depth), not from a running process."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "storytune"
LAYERS = {"config": 0, "yaml_loader": 0, "interval": 0, "paths": 0, "process": 0, "errors": 0, "faults": 0,
          "cache": 0, "storage": 0, "stop": 0,
          "train": 1, "eval": 1, "study": 1, "tracking": 2, "cluster": 3, "cli": 4, "__main__": 4}
# Within the work layer, data flows train -> eval (models, data) and study stays pure.
WORK_ORDER = {"train": 0, "eval": 1, "study": 1}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in ("storytune", "jobs", "launch")}


GRAPH = {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def top(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_flow_one_way(module: str) -> None:
    mine = top(module)
    for target in GRAPH[module]:
        assert target.split(".")[0] == "storytune", f"{module} imports the entry script {target}"
        theirs = top(target)
        if theirs == "storytune":  # `from storytune import x`
            continue
        assert LAYERS[theirs] <= LAYERS[mine], f"{module} ({mine}) imports {target} from a higher layer"
        if LAYERS[mine] == LAYERS[theirs] == 1:
            assert WORK_ORDER[theirs] <= WORK_ORDER[mine] and {mine, theirs} != {"eval", "study"}, \
                f"{module} imports {target}"


def test_no_import_cycles() -> None:
    modules = set(GRAPH)
    edges = {m: {t for t in GRAPH[m] if t in modules} for m in modules}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in edges[node]:
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join([*trail, node, nxt])
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for module in sorted(modules):
        if module not in state:
            visit(module, [])


def test_one_main_process_rule() -> None:
    """Only storytune.process reads RANK to decide the main process."""
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if 'environ.get("RANK"' in p.read_text() and p.name != "process.py"]
    assert not offenders
