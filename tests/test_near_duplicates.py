"""Near-duplicate search: the multi-index search against brute force, and hashes of real pixels."""

import numpy as np
import pytest

from pipeline.data.near_duplicates import (
    distances,
    find_groups,
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
    h0 = image_hashes(padded)
    h1 = image_hashes((cam[:, 64:448] ** 1.2 * 65535).astype(np.uint16))  # gamma, unpadded
    h2 = image_hashes((data.coins() / 255 * 65535).astype(np.uint16))  # another image
    assert h0.shape == (9,) and h0.dtype == np.uint64
    assert hamming(h0[0], h1[0]) <= 4 and max(distances(h0, h1)) <= 20
    assert hamming(h0[0], h2[0]) > 20 and min(distances(h0, h2)) > 80
    assert len(near_pairs(np.stack([h0, h1, h2]))) == 1


def test_groups_join_chains_of_pairs():
    """0~1 and 1~2 are near (0 and 2 are not), 3 shares 0's 64-bit key but not its detail, 4 is far."""
    rows = np.zeros((5, 9), np.uint64)
    rows[1, 1], rows[2, 1:3] = 2**40 - 1, 2**40 - 1  # 40 bits from 0, 40 from 1, 80 from 0
    rows[3, 5:9] = 2**64 - 1
    rows[4, :] = 2**64 - 1
    pairs = near_pairs(rows, threshold=40)
    assert sorted(zip(pairs.i.tolist(), pairs.j.tolist(), strict=True)) == [(0, 1), (1, 2)]
    groups = find_groups(rows, threshold=40)
    assert [g.members for g in groups] == [(0, 1, 2)] and groups[0].distance == (0, 40, 80)
