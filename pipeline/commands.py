"""`graystem <command> [args]`: one console command for training and every tool.

Each command is a module with `main(argv) -> int`; it is imported only when chosen, so `graystem --help`
does not pay for torch.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path

COMMANDS = {  # name -> module; its description is the first line of the module's docstring (see describe)
    "train": "pipeline.cli",
    "predict": "pipeline.tools.predict",
    "evaluate": "pipeline.tools.evaluate",
    "compare": "pipeline.tools.compare",
    "export": "pipeline.tools.export",
    "audit": "pipeline.tools.audit",
    "cache": "pipeline.tools.cache",
    "prepare": "pipeline.tools.prepare_dataset",
    "index": "pipeline.tools.index_dicom",
    "preview": "pipeline.tools.preview",
    "check-stem": "pipeline.tools.check_stem",
    "plan": "pipeline.tools.plan",
    "benchmark": "pipeline.tools.benchmark",
    "demo": "pipeline.demo",
}


def describe(module: str) -> str:
    """The first paragraph of a command module's docstring, on one line: the text its own parser shows as
    description (`__doc__.splitlines()[0]`, or `__doc__.split("\\n\\n")[0]` where it runs over two lines), so
    both come from one place. Read with ast, without importing the module, so `graystem --help` does not pay
    for torch."""
    spec = importlib.util.find_spec(module)
    doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))) or ""
    return " ".join(doc.split("\n\n")[0].split())


def usage(prog: str) -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {prog} <command> [args]   ({prog} <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {describe(module)}" for name, module in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "graystem") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(prog), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{prog}: unknown command {name!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name])
    # argparse names the program after sys.argv[0]: show `graystem predict` in the command's usage line
    saved, sys.argv = sys.argv, [f"{prog} {name}", *rest]
    try:
        return module.main(rest)
    finally:
        sys.argv = saved
