"""Near copies among the decoded images: perceptual hashes and a neighbour search that never compares all pairs.

What is hashed is what the network sees: the 1xSxS uint16 images of `Decoded.images` (after VOI LUT, the
ultrasound crop, scaling and resizing; the same pixels `checks.after_decode` compares for exact copies), with the
black padding that squares them trimmed away, so a re-crop that changes the aspect ratio does not move the
content inside the square. Each image gets hashes from the maintained `imagehash` library: a 64-bit pHash (8x8
low DCT frequencies), the key of the neighbour search, and 256-bit pHash and dHash (16x16: DCT frequencies and
signs of horizontal gradients), which decide. Two images are near copies when the 64-bit pHashes are within
SEARCH_RADIUS bits and BOTH 256-bit hashes within the threshold (chosen from measurements, see docs/data_checks.md
and scripts/near_duplicate_threshold.py): 64-bit hashes alone join distinct chest films of different patients
(NIH, and the demo's renders of one template), as they keep too little detail.

The search (`pairs_within`) is multi-index hashing (Norouzi et al., "Fast search in Hamming space with
multi-index hashing", CVPR 2012): split the 64 bits into m blocks; two hashes within t bits agree within
floor(t/m) bits on at least one block (pigeonhole), so each block's table, probed with every key within that
radius, yields every pair within t and few others. It is written here in numpy because the libraries that do it
(FAISS's binary multi-index, pybktree) are a heavy dependency or pure-Python per query; 100,000 hashes are
searched in seconds (`graystem benchmark --suite scale`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

HASH_BITS = 64
# bits (of 256) within which both 256-bit hashes must agree; chosen from measurements in docs/data_checks.md
DEFAULT_THRESHOLD = 48
# bits (of 64) within which the 64-bit pHashes must agree for a pair to be compared at all
SEARCH_RADIUS = 10
# columns of a hash row: the 64-bit pHash, then the 256-bit pHash and dHash as 4 words each
N_WORDS = 9


def trim_padding(image: np.ndarray) -> np.ndarray:
    """The 2-D image without the all-zero rows and columns at its edges (the pad that squared it)."""
    a = image.reshape(image.shape[-2:])
    rows = np.flatnonzero(a.any(axis=1))
    cols = np.flatnonzero(a.any(axis=0))
    if not len(rows):
        return a
    return a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _words(bits: np.ndarray) -> list[int]:
    """A boolean hash as 64-bit words (big-endian bit order)."""
    return np.packbits(bits.ravel()).view(">u8").astype(np.uint64).tolist()


def image_hashes(image: np.ndarray) -> np.ndarray:
    """The 9 uint64 words of a decoded image's hashes (uint16 1xSxS, or any 2-D gray array): 64-bit pHash,
    256-bit pHash, 256-bit dHash."""
    import imagehash
    from PIL import Image

    a = trim_padding(np.asarray(image))
    if a.dtype == np.uint16:  # imagehash works on 8-bit 'L' images: the 16-bit fixed point's top byte
        a = (a >> 8).astype(np.uint8)
    elif a.dtype != np.uint8:  # a float image in [0, 1]
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    pil = Image.fromarray(np.ascontiguousarray(a))
    return np.array(_words(imagehash.phash(pil).hash) + _words(imagehash.phash(pil, 16).hash)
                    + _words(imagehash.dhash(pil, 16).hash), dtype=np.uint64)


def hash_store(store, n: int | None = None) -> np.ndarray:
    """N x 9 uint64 hash rows (see image_hashes) of an ImageStore's images, in sample order."""
    n = len(store) if n is None else n
    out = np.zeros((n, N_WORDS), dtype=np.uint64)
    for i in range(n):
        out[i] = image_hashes(store.get(i))
    return out


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def _plan(n: int, radius: int) -> tuple[int, int]:
    """(blocks m, per-block radius r): the m whose estimated probes + candidates are fewest, with blocks of at
    most 22 bits so each block's table is a dense array (4M entries at most)."""
    from math import comb

    best = None
    for m in range(3, 17):
        b = -(-HASH_BITS // m)
        r = radius // m
        probes = sum(comb(b, k) for k in range(r + 1))
        cost = m * probes * (1 + n / 2**b)
        if best is None or cost < best[0]:
            best = (cost, m, r)
    return best[1], best[2]


def _flip_masks(bits: int, r: int) -> np.ndarray:
    masks = [0]
    for k in range(1, r + 1):
        masks += [sum(1 << p for p in c) for c in itertools.combinations(range(bits), k)]
    return np.array(masks, dtype=np.int64)


def pairs_within(hashes: np.ndarray, radius: int, chunk: int = 4_000_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < j) whose 64-bit hashes differ in at most `radius` bits: (i, j, distance), sorted by (i, j).
    Exactly what comparing all pairs returns, without comparing all pairs."""
    h = np.asarray(hashes, dtype=np.uint64).ravel()
    n = len(h)
    found: list[np.ndarray] = []
    if n < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    m, r = _plan(n, radius)
    sizes = [HASH_BITS // m + (k < HASH_BITS % m) for k in range(m)]
    shift = HASH_BITS
    for bits in sizes:
        shift -= bits
        vals = ((h >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(np.int64)
        order = np.argsort(vals, kind="stable")
        starts = np.searchsorted(vals[order], np.arange(2**bits + 1, dtype=np.int64))
        for mask in _flip_masks(bits, r):
            keys = vals ^ mask
            lo, cnt = starts[keys], starts[keys + 1] - starts[keys]
            for q0, q1 in _chunks(cnt, chunk):  # bounded memory where many hashes share a block
                c = cnt[q0:q1]
                total = int(c.sum())
                if not total:
                    continue
                qi = np.repeat(np.arange(q0, q1), c)
                offs = np.arange(total) - np.repeat(np.cumsum(c) - c, c)
                j = order[np.repeat(lo[q0:q1], c) + offs]
                keep = qi < j
                qi, j = qi[keep], j[keep]
                d = hamming(h[qi], h[j])
                keep = d <= radius
                found.append(qi[keep] * n + j[keep])
    code = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
    i, j = code // n, code % n
    return i, j, hamming(h[i], h[j])


def _chunks(counts: np.ndarray, limit: int):
    """Query ranges whose candidate counts sum to about `limit` (one range when they all fit)."""
    total = int(counts.sum())
    if total <= limit:
        yield 0, len(counts)
        return
    edges = np.searchsorted(np.cumsum(counts), np.arange(limit, total, limit), side="right")
    bounds = [0, *sorted(set(int(e) for e in edges if 0 < e < len(counts))), len(counts)]
    yield from zip(bounds[:-1], bounds[1:], strict=False)


@dataclass(frozen=True)
class NearPairs:
    """Pairs of samples (indices into the hashed samples, i < j) within the threshold on both 256-bit hashes."""

    i: np.ndarray
    j: np.ndarray
    phash: np.ndarray  # 256-bit pHash distance
    dhash: np.ndarray  # 256-bit dHash distance

    def __len__(self) -> int:
        return len(self.i)


def distances(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(256-bit pHash, 256-bit dHash) distances between hash rows."""
    return hamming(a[..., 1:5], b[..., 1:5]).sum(-1), hamming(a[..., 5:9], b[..., 5:9]).sum(-1)


def near_pairs(hashes: np.ndarray, threshold: int = DEFAULT_THRESHOLD, radius: int = SEARCH_RADIUS) -> NearPairs:
    """Pairs whose 64-bit pHashes are within `radius` (the index finds them) and whose 256-bit pHash and dHash
    are both within `threshold`."""
    hashes = np.asarray(hashes, dtype=np.uint64).reshape(-1, N_WORDS)
    i, j, _ = pairs_within(hashes[:, 0], radius)
    dp, dd = distances(hashes[i], hashes[j])
    keep = (dp <= threshold) & (dd <= threshold)
    return NearPairs(i[keep], j[keep], dp[keep], dd[keep])


def groups_of(n: int, pairs: NearPairs) -> list[list[int]]:
    """Connected groups (of two or more samples, each in ascending order) that the pairs link, by first member."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not len(pairs):
        return []
    graph = coo_matrix((np.ones(len(pairs)), (pairs.i, pairs.j)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    members: dict[int, list[int]] = {}
    for k, c in enumerate(comp):
        members.setdefault(int(c), []).append(k)
    return sorted((g for g in members.values() if len(g) > 1), key=lambda g: g[0])


@dataclass(frozen=True)
class NearGroup:
    """Samples (indices, ascending) joined by near-copy pairs, and each one's distance to the first member in
    bits (the larger of its pHash and dHash distances; 0 for the first)."""

    members: tuple[int, ...]
    distance: tuple[int, ...]


def find_groups(hashes: np.ndarray, threshold: int = DEFAULT_THRESHOLD) -> list[NearGroup]:
    hashes = np.asarray(hashes, dtype=np.uint64).reshape(-1, N_WORDS)
    out = []
    for g in groups_of(len(hashes), near_pairs(hashes, threshold)):
        dp, dd = distances(hashes[g], hashes[g[0]])
        out.append(NearGroup(tuple(g), tuple(int(x) for x in np.maximum(dp, dd))))
    return out
