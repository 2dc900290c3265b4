"""`graystem <command> [args]`: one console command for training and every tool.

Each command is a module with `main(argv) -> int`; it is imported only when chosen, so `graystem --help`
does not pay for torch.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("pipeline.cli", "cross-validated fine-tuning on a config (what train.py runs)"),
    "predict": ("pipeline.tools.predict", "score new images with the fold ensemble of a finished run"),
    "evaluate": ("pipeline.tools.evaluate", "score a labelled (external) manifest with a finished run, at its threshold"),
    "compare": ("pipeline.tools.compare", "runs side by side, paired bootstrap and DeLong tests of every pair"),
    "export": ("pipeline.tools.export", "TorchScript file of a run's fold model(s), normalisation baked in"),
    "audit": ("pipeline.tools.audit", "formats, labels per fold, duplicates and leaks of a data set"),
    "cache": ("pipeline.tools.cache", "what the disk cache holds; prune it by last use or size"),
    "prepare": ("pipeline.tools.prepare_dataset", "manifest from a public data set in its published layout"),
    "index": ("pipeline.tools.index_dicom", "manifest CSV from a folder of DICOM files"),
    "preview": ("pipeline.tools.preview", "what the network sees for one file"),
    "check-stem": ("pipeline.tools.check_stem", "check a 1-channel stem conversion against the 3-channel model"),
    "benchmark": ("pipeline.tools.benchmark", "decode and training throughput as JSON"),
    "demo": ("pipeline.demo", "write the synthetic demo data sets"),
}


def usage(prog: str) -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {prog} <command> [args]   ({prog} <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
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
    module = importlib.import_module(COMMANDS[name][0])
    # argparse names the program after sys.argv[0]: show `graystem predict` in the command's usage line
    saved, sys.argv = sys.argv, [f"{prog} {name}", *rest]
    try:
        return module.main(rest)
    finally:
        sys.argv = saved
