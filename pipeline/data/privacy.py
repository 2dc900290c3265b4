"""Patient ids and file names out of every output.

Applied once, where the manifest is loaded (`apply`), so splits, predictions, reports, logs and TensorBoard
only ever see what is safe to show: with `privacy.pseudonymize_ids` a patient id becomes HMAC-SHA256(key, id),
first 16 hex digits (stable across runs with the same key, so folds and evaluation still group by patient, and
re-linkable only by whoever holds the key); with `privacy.hide_file_names` an image is shown as `row<N>`.

The key is a file beside the run folders (default `<run folder>/../.graystem_key`, created 0600 when missing),
never inside a run folder: a run folder can be shared without it. config.yaml stores only the key file's path.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import replace
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.schema import Config, resolve_data_path

KEY_NAME = ".graystem_key"
PSEUDONYM_HEX = 16


def pseudonym(patient_id: str, key: str) -> str:
    return hmac.new(key.encode(), patient_id.encode(), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]


def bind_key(cfg: Config, run_dir: Path) -> None:
    """Fix the key file's path in the config before it is saved (beside the run, never inside it)."""
    if not cfg.privacy.pseudonymize_ids:
        return
    path = Path(cfg.privacy.key_file or Path(run_dir).resolve().parent / KEY_NAME).expanduser().resolve()
    if path.is_relative_to(Path(run_dir).resolve()):
        raise ConfigError(f"privacy.key_file: {path} is inside the run folder; keep the key beside it")
    cfg.privacy.key_file = str(path)


def _key(cfg: Config) -> str:
    path = Path(cfg.privacy.key_file) if cfg.privacy.key_file else resolve_data_path(cfg.output.dir) / KEY_NAME
    path = path.expanduser()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process (a torchrun rank) made it first
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
    try:
        key = path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"privacy.key_file: cannot read {path} ({e.strerror or e})") from None
    if not key:
        raise ConfigError(f"privacy.key_file: {path} is empty")
    return key


def apply(cfg: Config, manifest):
    """The manifest as outputs may show it: pseudonymised patient ids, image names replaced by row numbers."""
    p = cfg.privacy
    if not (p.pseudonymize_ids or p.hide_file_names):
        return manifest
    key = _key(cfg) if p.pseudonymize_ids else None
    samples = []
    for s in manifest.samples:
        change = {}
        if key is not None:
            change["patient_id"] = pseudonym(s.patient_id, key)
        if p.hide_file_names:
            change["image_text"] = f"row{s.row}"
            if not s.patient_known and key is None:  # the image is its own patient: its id is its name
                change["patient_id"] = f"row{s.row}"
        samples.append(replace(s, **change))
    skipped = manifest.skipped
    if p.hide_file_names:
        skipped = tuple(replace(k, image=f"row{k.row}", reason=k.reason.replace(k.image, f"row{k.row}"))
                        for k in skipped)
    return replace(manifest, samples=tuple(samples), skipped=skipped)


def shown_image(cfg: Config, sample) -> str:
    """What an output (skipped.csv) shows for a sample's file."""
    return sample.image_text if cfg.privacy.hide_file_names else sample.image
