"""Command-line arguments shared by train and the tools that read a config."""

from __future__ import annotations

import argparse


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """--config and --set, the same for train and the tools that read a config."""
    p.add_argument("--config", default="chest_xray", help="YAML file, or a built-in config name (default chest_xray)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.batch_size=16 (repeatable)")
