"""Command-line tools around a run: predict, export, audit, index, preview, check-stem, benchmark.

Each module has `main(argv=None) -> int`; `graystem <tool>` (pipeline.commands) and the thin wrappers in
scripts/ call it.
"""
