"""Near-duplicate search: the multi-index search against brute force, and hashes of real pixels."""

import numpy as np
import pytest

from pipeline.data.near_duplicates import (
    groups_of,
    hamming,
    image_hashes,
    near_pairs,
    pairs_within,
    trim_padding,
)


def _hashes_with_near_copies(seed: int = 0) -> np.ndarray:
    """3000 random 64-bit hashes plus 1000 copies of some of them with 0-14 bits flipped."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**63, 3000, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, 3000, dtype=np.uint64)
    near = base[rng.integers(0, 3000, 1000)].copy()
    for k in range(len(near)):
        for bit in rng.choice(64, int(rng.integers(0, 15)), replace=False):
            near[k] ^= np.uint64(1) << np.uint64(bit)
    return np.concatenate([base, near])


@pytest.mark.parametrize("radius", [0, 2, 6, 10, 13])
def test_search_returns_exactly_the_brute_force_pairs(radius):
    h = _hashes_with_near_copies()
    i, j, d = pairs_within(h, radius)
    dist = hamming(h[:, None], h[None, :])
    bi, bj = np.nonzero(np.triu(dist <= radius, 1))
    assert len(bi) > 50  # the planted copies give real work at every radius
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_array_equal(j, bj)
    np.testing.assert_array_equal(d, dist[bi, bj])


def test_search_bounded_chunks_give_the_same_pairs():
    """Many hashes in one block (all-black images hash alike) are expanded in chunks, not all at once."""
    h = np.concatenate([np.zeros(300, np.uint64), _hashes_with_near_copies(1)[:500]])
    full = pairs_within(h, 4)
    small = pairs_within(h, 4, chunk=1000)
    assert len(full[0]) >= 300 * 299 // 2
    for a, b in zip(full, small, strict=True):
        np.testing.assert_array_equal(a, b)


def test_hashes_of_decoded_pixels_see_through_padding_and_gamma():
    from skimage import data

    cam = data.camera().astype(np.float64) / 255  # a real photograph, 512x512
    img = (cam[:, 64:448] * 65535).astype(np.uint16)  # non-square: the pipeline pads it to a square
    padded = np.zeros((1, 512, 512), np.uint16)
    padded[0, :, 64:448] = img
    assert trim_padding(padded).shape == img.shape
    p0, d0 = image_hashes(padded)
    p1, d1 = image_hashes((cam[:, 64:448] ** 1.2 * 65535).astype(np.uint16))  # gamma, unpadded
    assert bin(p0 ^ p1).count("1") <= 4 and bin(d0 ^ d1).count("1") <= 6
    p2, d2 = image_hashes((data.coins() / 255 * 65535).astype(np.uint16))  # another image
    assert bin(p0 ^ p2).count("1") > 20 and bin(d0 ^ d2).count("1") > 20


def test_groups_join_chains_of_pairs():
    hashes = np.array([[0, 0], [1, 1], [3, 3], [0xFF00, 0xFF00], [2**62 - 1, 2**62 - 1]], dtype=np.uint64)
    pairs = near_pairs(hashes, 1)
    assert sorted(zip(pairs.i.tolist(), pairs.j.tolist(), strict=True)) == [(0, 1), (1, 2)]
    assert groups_of(len(hashes), pairs) == [[0, 1, 2]]
