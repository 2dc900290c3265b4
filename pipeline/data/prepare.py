"""The data a run trains on: the manifest checked, every image decoded once, the folds drawn and published.

Deterministic, so every torchrun rank and every `--fold` process computes the same samples and folds; `--aggregate`
rebuilds them without decoding (`prepare_without_decoding`). What was skipped is written to skipped.csv.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.data import checks
from pipeline.data.cv import Splits, make_splits
from pipeline.data.datasets import Decoded, decode_samples
from pipeline.data.manifest import Manifest, Skipped, load_manifest
from pipeline.errors import ConfigError
from pipeline.logs import log
from pipeline.runfolder import publish_once, replace_text
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


def write_skipped(skipped, run_dir: Path) -> None:
    # atomic: every --fold process of a run writes the same list
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=["image", "row", "reason"])
    w.writeheader()
    w.writerows(s.as_dict() for s in skipped)
    replace_text(run_dir / "skipped.csv", buf.getvalue())


def read_skipped(run_dir: Path) -> list[Skipped]:
    path = run_dir / "skipped.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [Skipped(r["image"], int(r["row"]) if r["row"] not in ("", None) else None, r["reason"])
                for r in csv.DictReader(fh)]


def _publish_splits(splits: Splits, path: Path) -> Splits:
    """The first process writes splits.json; the others (fold processes, --resume, --aggregate) must compute the
    same folds from their data, or the fold results would index different samples."""
    text = json.dumps(splits.to_json(), indent=1)
    existing = publish_once(path, text)
    if existing is not None and json.loads(existing) != json.loads(text):
        raise ConfigError(f"{path}: the folds of this run differ from the ones computed from the data now (the "
                          "manifest, the readable files or cv settings changed); use another --output-dir")
    return splits


def prepare_without_decoding(cfg: Config, run_dir: Path) -> Prepared:
    """For --aggregate: the samples the folds trained on, rebuilt from the manifest and the run's skipped.csv
    without decoding a single image; checked against splits.json."""
    manifest = load_manifest(cfg)
    in_manifest = {(m.image, m.row) for m in manifest.skipped}
    skipped = tuple(s for s in read_skipped(run_dir) if (s.image, s.row) not in in_manifest)
    dropped = {(s.image, s.row) for s in skipped}
    samples = tuple(s for s in manifest.samples if (s.image, s.row) not in dropped)
    splits = _publish_splits(make_splits(samples, cfg), run_dir / "splits.json")
    return Prepared(manifest, Decoded(samples, None, skipped), splits)


def prepare(cfg: Config, run_dir: Path, *, resume: bool = False, main_rank: bool = True) -> Prepared:
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
             + (f"; skipped {len(skipped)} (see skipped.csv)" if skipped else ""))
    if main_rank and (skipped or cfg.data.on_error == "skip"):
        write_skipped(skipped, run_dir)  # with on_error=skip an empty list is news too
    decoded = checks.after_decode(cfg, decoded, len(skipped))  # same pixels under two patients, emptied classes
    splits = make_splits(decoded.samples, cfg)
    checks.check_folds(cfg, decoded.samples, splits)
    if main_rank:
        _publish_splits(splits, run_dir / "splits.json")
    return Prepared(manifest, decoded, splits)
