"""Stopping on Ctrl-C or SIGTERM at a step where the run can save, agreed by every rank."""
from __future__ import annotations

import signal
import threading

import torch

from .distributed import Dist


class GracefulStop:
    """Inside ``with GracefulStop() as stop:``, SIGINT and SIGTERM set ``stop.requested`` so the
    loop can save a checkpoint and exit cleanly; a second signal stops at once."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals can only be set there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def stop_agreed(stop: GracefulStop, dist: Dist, step: int, every: int, device: torch.device) -> bool:
    """Whether to stop after ``step``: at once on one process; under ``torchrun`` all ranks agree every
    ``every`` steps (one all-reduce), so every rank saves at the same step even when the signal reached
    them at different times."""
    if dist.world_size == 1:
        return stop.requested
    if step % every:
        return False
    import torch.distributed as td
    flag = torch.tensor([float(stop.requested)], device=device)
    td.all_reduce(flag, op=td.ReduceOp.MAX)
    return bool(flag.item())
