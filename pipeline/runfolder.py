"""Files of a run folder that several processes may write at once: `--fold K` processes (possibly on machines
sharing a file system) all start by writing config.yaml, splits.json and skipped.csv into the same RUN.

`publish_once` gives exactly one winner: each writer writes a temporary file and hard-links it to the final
name; link(2) fails when the name exists (O_EXCL semantics, also on NFS), so the first is kept whole and every
later writer compares its own content with it instead.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

from pipeline.errors import ConfigError
from pipeline.schema import Config

# settings that change only the console, not the results: fold processes may differ in them
_CONSOLE_ONLY = {("source",), ("train", "progress")}


def publish_once(path: Path, text: str) -> str | None:
    """Write `text` to `path` unless it exists; None when this call wrote it, else the existing content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        try:
            os.link(tmp, path)
            return None
        except FileExistsError:
            return path.read_text()
    finally:
        Path(tmp).unlink(missing_ok=True)


def replace_text(path: Path, text: str) -> None:
    """Atomic rewrite (temporary file + os.replace): a reader sees the old or the new file, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _without_console(d: dict, prefix=()) -> dict:
    return {k: (_without_console(v, prefix + (k,)) if isinstance(v, dict) else v) for k, v in d.items()
            if prefix + (k,) not in _CONSOLE_ONLY}


def _first_difference(a, b, prefix="") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
    return f"{prefix.rstrip('.')} ({b!r} there, {a!r} here)"


def publish_config(cfg: Config, path: Path) -> None:
    """config.yaml of a run that several fold processes share: the first writes it, the rest must match it."""
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    existing = publish_once(path, text)
    if existing is None:
        return
    mine, theirs = _without_console(cfg.model_dump(mode="json")), _without_console(yaml.safe_load(existing) or {})
    if mine != theirs:
        raise ConfigError(f"--output-dir {path.parent}: its config.yaml differs from this run's at "
                          f"{_first_difference(mine, theirs)}; every --fold process of a run needs the same config")
