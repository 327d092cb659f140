"""The loss meter: running sums of named losses on the device, and the first step whose losses were
not finite."""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import UserError


class LossMeter:
    """Running sums of named losses on the device, and the first step whose losses were not finite.

    :meth:`add` never syncs with the host; :meth:`read` and :meth:`check_finite` do, so a loop calls
    them only at its logging steps. Under ``torchrun`` every rank must call :meth:`check_finite` at the
    same steps: the ranks agree on the first bad step, so all of them stop.
    """

    def __init__(self, names: tuple[str, ...], device: torch.device):
        self.names = names
        self.sums = torch.zeros(len(names), device=device)
        self.count = 0
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def add(self, losses: torch.Tensor, step: int) -> None:
        """``losses (K,)`` (one per name) of ``step``; no host sync."""
        self.sums += losses
        self.count += 1
        newly_bad = ~torch.isfinite(losses).all() & (self.first_bad < 0)
        self.first_bad = torch.where(newly_bad, torch.full_like(self.first_bad, step), self.first_bad)

    def read(self) -> dict[str, float]:
        """Mean of each loss since the last read (one host sync), then start over."""
        means = (self.sums / max(self.count, 1)).tolist()
        self.sums.zero_()
        self.count = 0
        return dict(zip(self.names, means))

    def check_finite(self, checkpoint: Path | None, saved_step: int | None) -> None:
        """Raise a :class:`UserError` naming the first step with a NaN or infinite loss, and the last good
        ``checkpoint`` (written at ``saved_step``; None when none was written), which the caller keeps."""
        bad = self.first_bad.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # all ranks stop together
            none = torch.iinfo(torch.long).max
            bad = torch.where(bad < 0, torch.full_like(bad, none), bad)
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MIN)
            bad = torch.where(bad == none, torch.full_like(bad, -1), bad)
        bad = int(bad)
        if bad < 0:
            return
        kept = (f"the last good checkpoint, {checkpoint} (step {saved_step}), is kept" if saved_step is not None
                else "no checkpoint had been written yet")
        raise UserError(f"a loss became NaN or infinite at step {bad}; training stopped and {kept}; "
                        "lower train.lr or check the images")
