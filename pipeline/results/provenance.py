"""What a run's numbers came from, for summary.json: package versions, the git commit, hashes of the manifest and
of the resolved config, the machine and the wall time."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

# distribution names (what `pip show` knows), keyed by the name the report uses
PACKAGES = {"torch": "torch", "timm": "timm", "monai": "monai", "pydicom": "pydicom", "numpy": "numpy",
            "sklearn": "scikit-learn", "graystem": "graystem"}


def package_versions(packages: dict[str, str] | None = None, *, missing: bool = True) -> dict:
    """{name: installed version} of the given distributions (default: what trained a run); a package that is
    not installed maps to None, or is left out with missing=False."""
    out = {}
    for name, dist in (packages or PACKAGES).items():
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            if missing:
                out[name] = None
    return out


def git_commit(path: Path | None = None) -> str | None:
    """HEAD of the checkout the package runs from, or None outside one (an installed wheel, no git)."""
    where = path or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def sha256_file(path) -> str | None:
    p = Path(path)
    if not p.is_file():
        return None  # a folder manifest (class folders) has no single file to hash
    h = hashlib.sha256()
    with p.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def config_sha256(cfg) -> str:
    """Of the resolved config as canonical JSON (sorted keys), without `source` (where the YAML was read from),
    so the same settings hash alike wherever the file lives."""
    dump = cfg.model_dump(mode="json")
    dump.pop("source", None)
    return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": _cpu_model(),
            "cores": os.cpu_count(), "gpu": gpu}


def provenance(cfg, manifest_path, started: float | None, fold_seconds: dict[int, float | None]) -> dict:
    now = time.time()
    return {
        "versions": package_versions(),
        "git_commit": git_commit(),
        "manifest": str(manifest_path) if manifest_path else None,
        "manifest_sha256": sha256_file(manifest_path) if manifest_path else None,
        "config_sha256": config_sha256(cfg),
        "machine": machine(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)),
        # this invocation (a resumed run counts only what it did); fold_seconds adds up each fold's training
        "wall_time_s": round(now - started, 1) if started else None,
        "fold_seconds": {str(k): v for k, v in fold_seconds.items()},
    }
