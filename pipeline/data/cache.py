"""Where decoded images live between decoding and the loader: memory, a persistent disk cache, or the files.

Every store answers `get(i) -> 1xSxS uint16` (16-bit fixed point, see datasets.quantize), so the per-fold
datasets have one path for all three `data.cache` settings.

The disk cache keeps one `.npy` per (file, frame, pixel settings) in a user cache folder that later runs,
`--dry-run`, predict and other configs on the same files share. An entry's name is a sha256 over everything
that changes the decoded pixels: the file's identity (resolved path + size + mtime_ns, or with
`data.cache_key: content` the sha256 of its bytes), the frame, `DataConfig.pixel_settings()` and
`READER_VERSION`; a changed file or setting therefore looks up another name and can never be served a stale
image. Entries are written to a temporary file in their own folder and moved into place with `os.replace`
(atomic on POSIX), so concurrent runs on one cache only ever see whole entries; two writers of one entry
write identical bytes and the last rename wins.

MONAI's PersistentDataset is not used: it stops at the first unreadable file, while `data.on_error: skip`
must record the file and go on. One `.npy` per entry (numpy's own format, no extra dependency) rather than
LMDB, whose locking is not safe on the network file systems where a cluster's shared cache lives.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

# bump whenever pipeline/io or transforms.load_transforms change what a file decodes to: old entries are
# then never looked up again (`graystem cache --prune` deletes them)
READER_VERSION = 1


class ImageStore(Protocol):
    """Decoded images by sample index (the order of Decoded.samples)."""

    def __len__(self) -> int: ...

    def get(self, i: int) -> np.ndarray:
        """The 1xSxS uint16 image of sample i."""


class MemoryStore:
    """All images in RAM: N x S^2 x 2 bytes."""

    def __init__(self, images: Sequence[np.ndarray]):
        self.images = tuple(images)

    def __len__(self) -> int:
        return len(self.images)

    def get(self, i: int) -> np.ndarray:
        return self.images[i]


class DiskStore:
    """Only the cache entries' paths in RAM; each image is read from its `.npy` when a sample needs it."""

    def __init__(self, paths: Sequence[str]):
        self.paths = tuple(str(p) for p in paths)

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, i: int) -> np.ndarray:
        return np.load(self.paths[i])


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "graystem"


def file_identity(path: str, key: str = "stat") -> list:
    """What identifies a file's bytes: [resolved path, size, mtime_ns], or ['sha256', digest, suffixes] with
    key='content' (copies and moved files then share entries; the suffixes stay in, as they pick the reader
    for files whose content does not)."""
    if key == "content":
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return ["sha256", h.hexdigest(), "".join(Path(path).suffixes).lower()]
    st = os.stat(path)
    return [os.path.realpath(path), st.st_size, st.st_mtime_ns]


@lru_cache(maxsize=8)
def _entry_size(image_size: int) -> int:
    """Bytes of a complete entry (header + pixels): a shorter file is not a finished entry."""
    buf = io.BytesIO()
    np.save(buf, np.zeros((1, image_size, image_size), np.uint16))
    return buf.tell()


class DiskCache:
    """The cache folder for one set of pixel settings: `entry(path, frame)` names a file's entry,
    `has(entry)` says whether it is complete, `write(entry, image)` stores it atomically."""

    def __init__(self, root: str | Path, pixel_settings: dict, key: str = "stat"):
        self.root = Path(root).expanduser() / f"v{READER_VERSION}"
        self.settings = json.dumps(pixel_settings, sort_keys=True)
        self.key = key
        self.size = _entry_size(int(pixel_settings["image_size"]))

    @classmethod
    def for_config(cls, data) -> DiskCache:
        """The cache of a DataConfig (`data.cache_dir`, `data.cache_key`)."""
        return cls(data.cache_dir or default_cache_dir(), data.pixel_settings(), data.cache_key)

    def entry(self, path: str, frame: int | None) -> Path:
        """The entry's path; raises OSError when the file cannot be looked at (the decode then says why)."""
        ident = json.dumps([READER_VERSION, file_identity(path, self.key), frame, self.settings])
        digest = hashlib.sha256(ident.encode()).hexdigest()
        return self.root / digest[:2] / f"{digest}.npy"  # 256 shards: no folder holds 100,000 files

    def has(self, entry: Path) -> bool:
        try:
            return entry.stat().st_size == self.size
        except OSError:
            return False

    def hit(self, entry: Path) -> bool:
        """`has(entry)`, and a found entry's mtime set to now: the mtime is its last use, which `graystem cache
        --unused-days / --max-gb` prune by (atime is not kept on noatime/relatime mounts)."""
        if not self.has(entry):
            return False
        try:
            os.utime(entry)
        except OSError:
            pass  # a read-only shared cache still serves its entries
        return True

    def write(self, entry: Path, image: np.ndarray) -> None:
        write_atomic(entry, image)


def write_atomic(entry: Path, image: np.ndarray) -> None:
    """np.save into a temporary file beside `entry`, then os.replace: readers see no entry or a whole one."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".tmp-", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, image)
        os.replace(tmp, entry)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
