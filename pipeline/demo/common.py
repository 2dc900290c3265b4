"""Shared pieces of the demo generators: seeded generators, UIDs, smooth noise, patient splits.

Every generator is seeded by (seed, dataset, patient, image) so that two runs write byte-identical files.
"""

from __future__ import annotations

import datetime

import numpy as np
from pydicom.uid import generate_uid
from scipy import ndimage as ndi

TEST_FRACTION = 0.2  # of the patients of each class
BASE_DATE = datetime.date(2024, 1, 1)
UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's root; the suffix is a hash of the entropy below

_DS = {"chest_xray": 1, "ultrasound": 2}  # dataset code mixed into every seed


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _uid(seed: int, *parts) -> str:
    return generate_uid(UID_PREFIX, entropy_srcs=[f"graystem-demo-{seed}", *map(str, parts)])


def _sig(x):
    """Smooth step 0..1; the soft edges keep anatomy from looking cut out with scissors."""
    return 0.5 * (1.0 + np.tanh(x))


def _smooth_noise(rng, shape, sigma):
    """Unit-std Gaussian-correlated noise."""
    n = ndi.gaussian_filter(rng.standard_normal(shape, np.float32), sigma)
    return (n - n.mean()) / (n.std() + 1e-8)


def _lowfreq(rng, y, x, n: int = 4):
    """Smooth unit-ish field: a few random low-frequency plane waves over (y, x) in [0, 1]."""
    out = np.zeros_like(y)
    for _ in range(n):
        fy, fx, ph = rng.uniform(-1.5, 1.5), rng.uniform(-1.5, 1.5), rng.uniform(0, 2 * np.pi)
        out += np.cos(float(2 * np.pi * fy) * y + float(2 * np.pi * fx) * x + float(ph))
    return out / np.sqrt(n / 2)


def _split(labels: list[str], rng) -> list[str]:
    """Whole patients go to test, ~TEST_FRACTION of each class (at least one)."""
    split = ["train"] * len(labels)
    for lab in sorted(set(labels)):
        idx = [i for i, x in enumerate(labels) if x == lab]
        rng.shuffle(idx)
        for i in idx[: max(1, round(TEST_FRACTION * len(idx)))]:
            split[i] = "test"
    return split


def _exact_flags(rng, n: int, frac: float) -> np.ndarray:
    """Exactly round(frac*n) (>=1) True values in random order, so even small sets contain every format."""
    flags = np.zeros(n, bool)
    flags[: max(1, round(frac * n))] = True
    rng.shuffle(flags)
    return flags



def _patients(dataset: str, seed: int, n_base: int, positive_frac: float, n_scale: float, positive: str,
              negative: str):
    """(rng, n_patients, label per patient, split per patient) of one demo set, drawn in a fixed order so
    the generated files stay byte-identical."""
    rng = _rng(seed, _DS[dataset])
    n_pat = max(6, round(n_base * n_scale))
    n_pos = round(positive_frac * n_pat)
    labels = [positive] * n_pos + [negative] * (n_pat - n_pos)
    rng.shuffle(labels)
    return rng, n_pat, labels, _split(labels, rng)
