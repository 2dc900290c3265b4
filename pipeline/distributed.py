"""torchrun support: one process per device, data-parallel training, rank 0 writes everything.

Validation and test prediction run on every rank over the whole (small) validation set instead of a
DistributedSampler: that sampler pads with duplicated samples to equal shards, which biases the metrics, and
identical results on every rank keep the best-epoch decision the same everywhere without a broadcast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()


def select_device(name: str, local_rank: int | None = None) -> torch.device:
    """The one device policy: `auto` is CUDA when available, else CPU; under torchrun each process takes the
    GPU of its local rank."""
    cuda = name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: '{name}' requested but no CUDA device is available (use auto or cpu)")
    if not cuda:
        if name not in ("auto", "cpu"):
            try:
                return torch.device(name)
            except RuntimeError:
                raise ConfigError(f"train.device: '{name}' is not a device (auto, cpu, cuda, cuda:N)") from None
        return torch.device("cpu")
    if local_rank is not None:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name if name != "auto" else "cuda")


def init(device_name: str) -> tuple[Dist, torch.device]:
    """Starts the process group when launched by torchrun; returns (Dist, this process's device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), select_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_name, local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local), device


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, d: Dist, device: torch.device) -> torch.nn.Module:
    """DDP registers gradient hooks for the parameters trainable at wrap time, so wrap once per stage."""
    if not d.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    # broadcast_buffers (the default) keeps BatchNorm running stats equal on every rank, so every rank scores
    # validation identically
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def broadcast(obj, d: Dist):
    """Rank 0's value of a picklable object on every rank."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
