"""torch.distributed for evaluation, batch inference and training, launched by torchrun.

``init()`` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR / MASTER_PORT) and starts a process group — nccl when the device
is a GPU, gloo on CPU; without torchrun (or with one process) it does nothing
and every helper below works for a single process.

Exactness: work is split in whole global batches (``batch_shard``), so an image
is processed in the same batch whatever the number of processes, and what is
summed across processes is int64 (confusion matrices, PQ statistics), whose
sum does not depend on order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """True when started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str | torch.device | None = None) -> DistInfo:
    """Join the torchrun process group (once) and pick this process's device.

    ``device``: "cpu", "cuda" or None (cuda when available). On GPU each process
    uses ``cuda:LOCAL_RANK``."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device cuda was asked for but no GPU is available")
        device = torch.device("cuda", local if device.index is None else device.index)
        torch.cuda.set_device(device)
    if launched() and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device
                                if device.type == "cuda" else None)
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, device)
    return DistInfo(0, 1, 0, device)


def info() -> DistInfo:
    """The current rank / world size (no process group: 0 / 1)."""
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def batch_shard(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Indices 0..n-1 cut into global batches [k*B, (k+1)*B); process ``rank`` takes
    batches k with k % world == rank. Every image lands in the same batch whatever
    ``world`` is, so per-batch computations (and their results) do not change."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    starts = range(rank * batch_size, n, world * batch_size)
    return [list(range(s, min(s + batch_size, n))) for s in starts]


def _backend_device() -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all processes (a new tensor on ``t``'s device). Use integer
    tensors for results that must not depend on the number of processes."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t.clone()
    x = t.to(_backend_device()).clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x.to(t.device)


def all_gather_objects(obj) -> list:
    """Every process's ``obj`` (picklable), in rank order."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """``obj`` of process ``src`` on every process."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (if this process joined one)."""
    if dist.is_initialized():
        dist.destroy_process_group()
