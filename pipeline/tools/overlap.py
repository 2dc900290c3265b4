"""Is an 'external' set external? The images and patients a manifest shares with a run's own data.

Three kinds, each enough to make an evaluation not external: the same file (resolved path), the same or nearly
the same pixels (a copy under another name or format: pipeline.data.near_duplicates on both sets decoded with
the run's pixel settings), and the same known patient id. The run's data is its config's manifest (development
and test rows alike), read as training read it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from pipeline.data.datasets import decode_samples
from pipeline.data.manifest import load_manifest
from pipeline.data.near_duplicates import hash_store, near_pairs


@dataclass(frozen=True)
class Overlap:
    by_path: tuple[str, ...] = ()  # external images that are files of the run's data
    by_pixels: tuple[tuple[str, str, int], ...] = ()  # (external image, run image, distance in bits)
    by_patient: tuple[str, ...] = ()  # known patient ids in both
    n_run_images: int = 0
    not_checked: str | None = None  # why the check could not run (the run's data is gone)
    allowed: bool = field(default=False, compare=False)

    def __bool__(self) -> bool:
        return bool(self.by_path or self.by_pixels or self.by_patient)

    def line(self, run_name: str) -> str:
        parts = [f"{len(self.by_path)} images are files of the run's data" if self.by_path else "",
                 f"{len({e for e, _, _ in self.by_pixels})} images repeat the pixels of the run's images (exactly "
                 f"or as near copies, e.g. {self.by_pixels[0][0]} ~ {self.by_pixels[0][1]})" if self.by_pixels else "",
                 f"{len(self.by_patient)} patient ids are the run's (e.g. {self.by_patient[0]})" if self.by_patient
                 else ""]
        return (f"this manifest is not external to run {run_name}: " + "; ".join(p for p in parts if p)
                + ": its figures would not be an external evaluation")

    def to_json(self) -> dict:
        return {"external": not self, "by_path": list(self.by_path), "by_patient": list(self.by_patient),
                "by_pixels": [{"image": e, "run_image": r, "distance": d} for e, r, d in self.by_pixels],
                "n_run_images": self.n_run_images, "not_checked": self.not_checked, "allowed": self.allowed}


def find_overlap(run_cfg, cfg, samples) -> Overlap:
    """What `samples` (read with `cfg`: the run's settings, another manifest) share with the run's manifest."""
    from pipeline.errors import DataError

    dev_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={
        "manifest": run_cfg.data.manifest, "root": run_cfg.data.root, "on_error": "skip"})})
    try:
        dev = load_manifest(dev_cfg).samples
    except DataError as exc:
        return Overlap(not_checked=f"the run's manifest could not be read ({exc})")
    dev_files = {os.path.realpath(s.image) for s in dev}
    by_path = tuple(dict.fromkeys(s.image_text for s in samples if os.path.realpath(s.image) in dev_files))
    dev_patients = {s.patient_id for s in dev if s.patient_known}
    by_patient = tuple(sorted({s.patient_id for s in samples if s.patient_known and s.patient_id in dev_patients}))

    scfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"on_error": "skip"})})
    ext_dec, dev_dec = decode_samples(scfg, samples), decode_samples(dev_cfg, dev)
    hashes = np.concatenate([hash_store(ext_dec.images or _files(scfg, ext_dec), len(ext_dec.samples)),
                             hash_store(dev_dec.images or _files(dev_cfg, dev_dec), len(dev_dec.samples))])
    n = len(ext_dec.samples)
    pairs = near_pairs(hashes, cfg.data.near_duplicate_bits)
    by_pixels = {}
    for i, j, dp, dd in zip(pairs.i, pairs.j, pairs.phash, pairs.dhash, strict=True):
        if i < n <= j:  # one external image, one of the run's (i < j always)
            e, r = ext_dec.samples[i].image_text, dev_dec.samples[j - n].image_text
            by_pixels.setdefault(e, (e, r, int(max(dp, dd))))
    return Overlap(by_path, tuple(by_pixels.values()), by_patient, len(dev_dec.samples))


def _files(cfg, decoded):
    from pipeline.data.datasets import FileStore

    return FileStore(cfg, decoded.samples)
