"""What the disk cache holds, and pruning it: by last use, by total size, stale reader versions.

    graystem cache [--cache-dir DIR] [--unused-days N] [--max-gb G] [--dry-run] [--json]

The disk cache (`data.cache: disk`, pipeline.data.cache) keeps one `.npy` per decoded image under
DIR/v<READER_VERSION>/<shard>/. Every run, dry run or predict that finds an entry sets its mtime to now, so an
entry's mtime is its last use. Without options this prints what the folder holds. Pruning:

- `--unused-days N` deletes entries not used for N days;
- `--max-gb G` then deletes the least recently used entries until the folder holds at most G GB;
- either also deletes entries of older reader versions (no run looks them up again) and temporary files left
  by writers that were killed (older than a day).

Entries used in the last hour are never deleted: a running job may be reading them (its DiskStore reads
each entry every epoch). Deleting an entry is always safe for later runs: a missing entry is decoded again.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.cache import READER_VERSION, default_cache_dir
from pipeline.errors import ConfigError, exits_on_error

GB = 1e9
IN_USE_S = 3600  # entries used this recently may belong to a running job
TMP_STALE_S = 86400


@dataclass(frozen=True)
class Entry:
    path: Path
    size: int
    last_use: float  # mtime: set on every cache hit
    current: bool  # of this READER_VERSION
    temporary: bool  # a writer's unfinished .tmp-* file


def scan(root: Path) -> list[Entry]:
    out = []
    for version in sorted(root.glob("v*")):
        if not version.is_dir():
            continue
        current = version.name == f"v{READER_VERSION}"
        for dirpath, _, files in os.walk(version):
            for name in files:
                if not name.endswith(".npy"):
                    continue
                path = Path(dirpath) / name
                try:
                    st = path.stat()
                except OSError:
                    continue  # deleted by another process meanwhile
                out.append(Entry(path, st.st_size, st.st_mtime, current, name.startswith(".tmp-")))
    return out


def choose(entries: list[Entry], unused_days: float | None, max_gb: float | None, now: float) -> list[Entry]:
    """The entries to delete, in the order given above; never one used in the last hour."""
    if unused_days is None and max_gb is None:
        return []
    old = [e for e in entries if (e.temporary and now - e.last_use > TMP_STALE_S) or (not e.current and not e.temporary)]
    if unused_days is not None:
        old += [e for e in entries if e.current and not e.temporary and now - e.last_use > unused_days * 86400]
    doomed = {e.path for e in old}
    if max_gb is not None:
        keep = sorted((e for e in entries if e.path not in doomed), key=lambda e: e.last_use)  # oldest use first
        total = sum(e.size for e in keep)
        for e in keep:
            if total <= max_gb * GB:
                break
            doomed.add(e.path)
            total -= e.size
    return [e for e in entries if e.path in doomed and now - e.last_use > IN_USE_S]


def summary(root: Path, entries: list[Entry], deleted: list[Entry], dry_run: bool, now: float) -> dict:
    live = [e for e in entries if e.current and not e.temporary]
    ages = [(now - e.last_use) / 86400 for e in live]
    gone = {e.path for e in deleted}
    return {
        "cache_dir": str(root), "reader_version": READER_VERSION,
        "entries": len(live), "gb": round(sum(e.size for e in live) / GB, 3),
        "older_reader_versions": {"entries": sum(not e.current and not e.temporary for e in entries),
                                  "gb": round(sum(e.size for e in entries if not e.current and not e.temporary) / GB, 3)},
        "temporary_files": sum(e.temporary for e in entries),
        "days_since_use": {"min": round(min(ages), 2), "max": round(max(ages), 2)} if ages else None,
        "deleted" if not dry_run else "would_delete": {"entries": len(deleted),
                                                       "gb": round(sum(e.size for e in deleted) / GB, 3)},
        "after": {"entries": sum(e.path not in gone for e in live),
                  "gb": round(sum(e.size for e in live if e.path not in gone) / GB, 3)},
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache-dir", type=Path, help="the cache folder (default: data.cache_dir's default, "
                   f"{default_cache_dir()})")
    p.add_argument("--unused-days", type=float, help="delete entries not used for this many days")
    p.add_argument("--max-gb", type=float, help="then delete the least recently used until at most this many GB")
    p.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


@exits_on_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    root = (args.cache_dir or default_cache_dir()).expanduser()
    if not root.is_dir():
        raise ConfigError(f"--cache-dir {root}: no such folder")
    for name in ("unused_days", "max_gb"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0")
    now = time.time()
    entries = scan(root)
    doomed = choose(entries, args.unused_days, args.max_gb, now)
    if not args.dry_run:
        for e in doomed:
            e.path.unlink(missing_ok=True)
    rep = summary(root, entries, doomed, args.dry_run, now)
    if args.json:
        print(json.dumps(rep))
        return 0
    print(f"{root}: {rep['entries']} entries, {rep['gb']} GB (reader version {READER_VERSION})"
          + (f"; last used {rep['days_since_use']['min']}-{rep['days_since_use']['max']} days ago"
             if rep["days_since_use"] else ""))
    old = rep["older_reader_versions"]
    if old["entries"] or rep["temporary_files"]:
        print(f"  older reader versions: {old['entries']} entries, {old['gb']} GB; "
              f"unfinished temporary files: {rep['temporary_files']}")
    if args.unused_days is not None or args.max_gb is not None:
        done = rep["would_delete" if args.dry_run else "deleted"]
        print(f"  {'would delete' if args.dry_run else 'deleted'} {done['entries']} entries ({done['gb']} GB); "
              f"{rep['after']['entries']} entries, {rep['after']['gb']} GB left")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
