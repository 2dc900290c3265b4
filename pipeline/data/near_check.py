"""`data.near_duplicates`: what a run does with near copies among its decoded images (pipeline.data.near_duplicates
finds them).

group (default): near copies whose patient is not known join one patient group, so they land in one fold (as exact
  copies do in checks.after_decode): public sets without ids (BUSI) hold re-crops and re-annotations of one scan,
  and copies on both sides of a split inflate every figure. Near copies under two KNOWN patient ids stop the run
  (one image under two patients is a leak, or two patients' films that the threshold cannot tell apart: either
  way a person must look). Near copies under different labels are listed in a warning.
warn: one warning line with the counts; the groups are left as they are.
error: near copies under different patients stop the run.
off: no hashing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.data.checks import where
from pipeline.data.near_duplicates import NearGroup, find_groups, hash_store
from pipeline.errors import DataError
from pipeline.logs import log
from pipeline.schema import Config


def decoded_groups(cfg: Config, decoded) -> list[NearGroup]:
    """Near-copy groups among the decoded samples (their cached pixels; with data.cache none, decoded again)."""
    store = decoded.images
    if store is None:
        from pipeline.data.datasets import FileStore

        store = FileStore(cfg, decoded.samples)
    return find_groups(hash_store(store, len(decoded.samples)), cfg.data.near_duplicate_bits)


def _names(cfg: Config, samples, members) -> str:
    return "; ".join(f"{Path(samples[k].image_text).name if not cfg.privacy.hide_file_names else 'row'} "
                     f"(row {samples[k].row}, {samples[k].label})" for k in members)


def apply(cfg: Config, decoded):
    """Returns the decoded samples with near copies grouped by patient as `data.near_duplicates` says."""
    mode = cfg.data.near_duplicates
    if mode == "off" or len(decoded.samples) < 2:
        return decoded
    samples = list(decoded.samples)
    groups = decoded_groups(cfg, decoded)
    crossing = [g for g in groups if len({samples[k].patient_id for k in g.members}) > 1]
    mixed = [g for g in groups if len({samples[k].label for k in g.members}) > 1]
    merged = 0
    for g in crossing:
        known = sorted({samples[k].patient_id for k in g.members if samples[k].patient_known})
        if mode == "error" or (mode == "group" and len(known) > 1):
            pair = known[:2] if len(known) > 1 else sorted({samples[k].patient_id for k in g.members})[:2]
            a, b = (next(k for k in g.members if samples[k].patient_id == p) for p in pair)
            raise DataError(f"{where(cfg, samples[b].row, samples[b].image)}: near copy of row {samples[a].row} "
                            f"(perceptual hashes within {cfg.data.near_duplicate_bits} bits) but patient "
                            f"{samples[b].patient_id} vs {samples[a].patient_id}: one image under two patients is a "
                            "leak between folds; look at both, then remove the copy, give both one patient id, or "
                            "set data.near_duplicates: warn")
        if mode == "group":
            pid = known[0] if known else samples[g.members[0]].patient_id
            for k in g.members:
                if samples[k].patient_id != pid:
                    samples[k] = dataclasses.replace(samples[k], patient_id=pid, patient_known=bool(known))
            merged += 1
    if crossing:
        n_images = sum(len(g.members) for g in crossing)
        if merged:
            log.warning(f"warning: near copies: {merged} groups of near-identical images ({n_images} images) without "
                        "known patient ids were merged into one patient group each, so each group stays in one fold "
                        "(data.near_duplicates: group; `graystem audit` shows them)")
        else:
            log.warning(f"warning: near copies: {len(crossing)} groups of near-identical images ({n_images} images) "
                        "span different patients and may land in different folds (data.near_duplicates: warn)")
    if mixed:
        shown = " | ".join(_names(cfg, samples, g.members[:3]) for g in mixed[:3])
        log.warning(f"warning: near copies under different labels ({len(mixed)} groups): {shown}"
                    + (" | ..." if len(mixed) > 3 else "") + "; `graystem audit` lists them all")
    return dataclasses.replace(decoded, samples=tuple(samples)) if merged else decoded
