"""How many CPU threads and processes a run uses: `train.threads` and `data.num_workers: auto`.

Two jobs on one 2-core machine each using 2 threads ran a Lite0 step at 4-13 images/s, against 29-30 with one
thread each: jobs side by side must share the cores, not each claim all of them.
"""

from __future__ import annotations

import os

import torch


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: taskset, cgroups, SLURM), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolved_threads(cfg) -> int:
    return cfg.train.threads or available_cores()


def apply_threads(cfg) -> int:
    """Set torch's intra-op threads once, at start; the decode pool uses as many processes."""
    n = resolved_threads(cfg)
    torch.set_num_threads(n)
    return n


def loader_workers(cfg, device: torch.device) -> int:
    """`data.num_workers`, with 'auto': min(4, threads - 1) loader processes where each sample costs file I/O or
    decoding (cache disk / none) or where a GPU waits on CPU augmentation; 0 for the memory cache on the CPU,
    where the workers would only take cores from the model's own threads."""
    if cfg.data.num_workers != "auto":
        return cfg.data.num_workers
    if cfg.data.cache == "memory" and device.type == "cpu":
        return 0
    return max(0, min(4, resolved_threads(cfg) - 1))
