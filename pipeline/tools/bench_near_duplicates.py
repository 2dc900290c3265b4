"""The near-duplicate entry of `graystem benchmark --suite scale`: perceptual hashing of images served by the disk
cache (images/s) and the multi-index search over 100,000 hashes (seconds, per radius of the
64-bit pHash index)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.data.cache import DiskStore
from pipeline.data.near_duplicates import SEARCH_RADIUS, hash_store, pairs_within

N_SEARCH = 100_000


def bench_near_duplicates(cache_dir: Path | None, radii=(4, 6, 8, 10, 12)) -> dict:
    out: dict = {"hash_img_s": None, "n_hashed": 0}
    entries = sorted(Path(cache_dir).rglob("*.npy")) if cache_dir and Path(cache_dir).is_dir() else []
    if entries:
        store = DiskStore(entries)
        t0 = time.perf_counter()
        hash_store(store)
        out["hash_img_s"] = round(len(store) / (time.perf_counter() - t0), 1)
        out["n_hashed"] = len(store)
        out["image_size"] = int(store.get(0).shape[-1])
    # uniform random hashes: the search's cost on data without near copies (real sets add their true pairs)
    hashes = np.random.default_rng(0).integers(0, 2**64 - 1, N_SEARCH, dtype=np.uint64, endpoint=True)
    out["search_n"] = N_SEARCH
    out["search_s"] = {}
    for r in sorted({*radii, SEARCH_RADIUS}):
        t0 = time.perf_counter()
        i, _, _ = pairs_within(hashes, r)
        out["search_s"][str(r)] = round(time.perf_counter() - t0, 2)
    out["search_radius"] = SEARCH_RADIUS  # the 64-bit pHash radius the pipeline searches at
    out["search_s_default"] = out["search_s"][str(SEARCH_RADIUS)]
    return out
