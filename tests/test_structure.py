"""The package's shape: imports run one way (tools and training down to data and model), no import cycles, and
the run folder's file names are spelled in one module. Read from the sources (ast), so a lazy import inside a
function counts as much as one at the top."""

import ast
import re
from pathlib import Path

import pipeline

PKG = Path(pipeline.__file__).parent
# a layer may import its own and any later layer, never an earlier one
LAYERS = [
    {"cli", "commands", "__main__", "planrun", "tools", "demo"},
    {"train"},
    {"deploy"},
    {"results"},
    {"data", "model"},
    {"io", "config", "schema", "errors", "vocab", "logs", "runfolder", "distributed", "threads", "cliargs",
     "__init__"},
]


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        name = _module(path)
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
                targets.add(node.module)
                targets |= {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("pipeline")}
        graph[name] = targets
    known = set(graph)
    return {m: {t for t in ts if t in known and t != m} for m, ts in graph.items()}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(module: str) -> int:
    top = _top(module)
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def test_imports_run_one_way_between_the_sub_packages():
    wrong = sorted(f"{m} -> {t}" for m, ts in _imports().items() for t in ts
                   if m.count(".") and t.count(".") and _layer(t) < _layer(m))
    assert not wrong, wrong


def test_no_import_cycles():
    graph = _imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt == "pipeline":
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_the_run_folder_contract_is_spelled_in_one_module():
    names = ["summary.json", "splits.json", "samples.json", "deployment.json", "result.json", "precision.json",
             "config.yaml", "report.md", "skipped.csv", "oof_predictions.csv", "test_predictions.csv", "best.pt",
             "last.pt"]
    found = {}
    for path in PKG.rglob("*.py"):
        text = path.read_text()
        for name in names:
            if re.search(rf"([\"']){re.escape(name)}\1", text):
                found.setdefault(name, set()).add(path.relative_to(PKG).as_posix())
    assert all(where == {"runfolder.py"} for where in found.values()), found
    assert set(found) == set(names)


def test_the_package_listing_shows_its_layers():
    top = sorted(p.stem for p in PKG.glob("*.py"))
    subs = sorted(p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert subs == ["data", "demo", "deploy", "io", "model", "results", "tools", "train"]
    assert len(top) <= 14, top
