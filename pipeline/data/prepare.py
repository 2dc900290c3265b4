"""The data a run trains on: the manifest checked, every image decoded once, the folds drawn and published.

Deterministic, so every torchrun rank and every `--fold` process computes the same samples and folds; `--aggregate`
reads them back (`prepare_from_run`). What was skipped is written to skipped.csv.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, replace

from pipeline.data import checks, near_check
from pipeline.data.cv import Splits, make_splits
from pipeline.data.datasets import Decoded, decode_samples
from pipeline.data.manifest import Manifest, Skipped, load_manifest
from pipeline.errors import ConfigError
from pipeline.logs import log
from pipeline.runfolder import RunFolder
from pipeline.schema import Config


@dataclass(frozen=True)
class Prepared:
    """Everything `--dry-run` validates: the manifest as loaded, the decoded samples and the splits."""

    manifest: Manifest
    decoded: Decoded
    splits: Splits

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        return self.manifest.skipped + self.decoded.skipped


def write_skipped(skipped, folder: RunFolder) -> None:
    # atomic: every --fold process of a run writes the same list
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=["image", "row", "reason"])
    w.writeheader()
    w.writerows(s.as_dict() for s in skipped)
    RunFolder.write_text(folder.skipped, buf.getvalue())


def _samples_text(samples) -> str:
    """samples.json: the samples the folds index, in order, as (manifest row, frame, CV group). The group is the
    patient id after copies were merged, so `--aggregate` and the audit read the groups training used instead
    of deriving them again; no file paths (privacy: the manifest has them)."""
    return json.dumps([{"row": s.row, "frame": s.frame, "group": s.patient_id} for s in samples])


def _publish(folder: RunFolder, splits: Splits, samples) -> None:
    """The first process writes splits.json and samples.json; the others (fold processes, --resume) must compute
    the same, or the fold results would index different samples."""
    for path, text in ((folder.samples, _samples_text(samples)), (folder.splits, json.dumps(splits.to_json(), indent=1))):
        existing = RunFolder.publish_once(path, text)
        if existing is not None and json.loads(existing) != json.loads(text):
            raise ConfigError(f"{path}: the folds of this run differ from the ones computed from the data now "
                              "(the manifest, the readable files or cv settings changed); use another --output-dir")


def read_skipped(folder: RunFolder) -> list[Skipped]:
    path = folder.skipped
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [Skipped(r["image"], int(r["row"]) if r["row"] not in ("", None) else None, r["reason"])
                for r in csv.DictReader(fh)]


def prepare_from_run(cfg: Config, folder: RunFolder) -> Prepared:
    """For --aggregate: the samples and folds the run trained on, read back from samples.json and splits.json
    (never derived again) with the manifest's rows; no image is decoded."""
    manifest = load_manifest(cfg)
    saved, splits = RunFolder.read_json(folder.samples), RunFolder.read_json(folder.splits)
    if saved is None or splits is None:
        raise ConfigError(f"{folder}: no {RunFolder.SAMPLES} / {RunFolder.SPLITS} (not a run folder of this version)")
    by_key = {(s.row, s.frame): s for s in manifest.samples}
    samples = []
    for rec in saved:
        s = by_key.get((rec["row"], rec["frame"]))
        if s is None:
            raise ConfigError(f"{folder}: manifest row {rec['row']} (frame {rec['frame']}) that the run trained on "
                              "is no longer in the manifest; the folds cannot be combined")
        samples.append(replace(s, patient_id=rec["group"]))
    in_manifest = {(m.image, m.row) for m in manifest.skipped}
    skipped = tuple(s for s in read_skipped(folder) if (s.image, s.row) not in in_manifest)
    return Prepared(manifest, Decoded(tuple(samples), None, skipped), Splits.from_json(splits))


def final_samples(cfg: Config, decoded: Decoded, n_skipped: int) -> tuple[Decoded, Splits]:
    """The samples the folds are drawn on (copies merged into one group by the checks after decoding) and
    their folds: training and the audit both call this, so the audit's folds are training's."""
    decoded = checks.after_decode(cfg, decoded, n_skipped)  # same pixels under two patients, emptied classes
    decoded = near_check.apply(cfg, decoded)  # near copies: one patient group, or a leak named (data.near_duplicates)
    splits = make_splits(decoded.samples, cfg)
    checks.check_folds(cfg, decoded.samples, splits)
    return decoded, splits


def prepare(cfg: Config, folder: RunFolder, *, main_rank: bool = True) -> Prepared:
    """Deterministic, so every torchrun rank (and every --fold process) computes the same samples and folds;
    only rank 0 writes them, and the first process of a run wins (splits.json is compared, never replaced)."""
    manifest = checks.before_decode(cfg, load_manifest(cfg))  # headers, rows, memory: before any pixel
    t0 = time.perf_counter()
    decoded = decode_samples(cfg, manifest.samples, progress=cfg.train.progress and main_rank)
    own = sum(not s.patient_known for s in decoded.samples)
    if own:
        log.warning(f"warning: {own} samples have no patient id and count as their own patient, so one patient's "
                    "images can land in different folds; add a patient_id column or set data.patient_regex")
    skipped = manifest.skipped + decoded.skipped
    log.info(f"decoded {len(decoded.samples)} samples in {time.perf_counter() - t0:.1f}s{decoded.cache_note}"
             + (f"; skipped {len(skipped)} (see {RunFolder.SKIPPED})" if skipped else ""))
    if main_rank and (skipped or cfg.data.on_error == "skip"):
        write_skipped(skipped, folder)  # with on_error=skip an empty list is news too
    decoded, splits = final_samples(cfg, decoded, len(skipped))
    if main_rank:
        _publish(folder, splits, decoded.samples)
    return Prepared(manifest, decoded, splits)
