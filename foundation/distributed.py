"""One code path for one process and for ``torchrun``: where this process stands, gathering from every
rank, and rank 0's buffers for all."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Dist:
    """Where this process stands in a ``torchrun`` job (rank 0 of 1 when run plainly)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str = "auto") -> Dist:
    """Join the process group ``torchrun`` describes in the environment (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as td
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    if not td.is_initialized():
        td.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(td.get_rank(), td.get_world_size(), local)


def all_ranks(obj: Any, dist: Dist) -> list:
    """``obj`` of every rank, in rank order, on every rank (``[obj]`` on one process). Picklable objects
    only; tensors in them should be on the CPU."""
    if dist.world_size == 1:
        return [obj]
    import torch.distributed as td
    gathered = [None] * dist.world_size
    td.all_gather_object(gathered, obj)
    return gathered


def close_distributed() -> None:
    import torch.distributed as td
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def broadcast_buffers(module: torch.nn.Module, dist: Dist) -> None:
    """Give every rank rank 0's buffers (batch-norm running statistics): DDP copies them only at the
    start of a forward pass, so after the last step of an epoch each rank holds its own."""
    if dist.world_size > 1:
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer, src=0)
