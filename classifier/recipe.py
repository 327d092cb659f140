"""Training levers: learning-rate schedule with warmup, EMA of weights, mixup and cutmix.

All randomness comes from Python's and torch's global RNGs, which a checkpoint saves, so a resumed
run draws the same numbers.
"""
from __future__ import annotations

import copy
import math
import random

import torch
import torch.nn as nn


class LRSchedule:
    """Multiplier of a phase's learning rate at each step: linear warmup, then a cosine decay to
    ``min_factor`` or, for ``plateau``, a factor cut by ``plateau_factor`` whenever the validation
    score has not improved for ``patience`` epochs."""

    def __init__(self, kind: str, warmup_steps: int, total_steps: int, min_factor: float = 0.01,
                 patience: int = 3, plateau_factor: float = 0.1):
        self.kind, self.warmup, self.total = kind, warmup_steps, max(total_steps, 1)
        self.min_factor, self.patience, self.plateau_factor = min_factor, patience, plateau_factor
        self.scale, self.best, self.bad = 1.0, -math.inf, 0

    def factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        if self.kind == "cosine":
            t = min(step / self.total, 1.0)
            return warm * (self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * t)))
        return warm * self.scale

    def epoch_end(self, score: float) -> None:
        if score > self.best:
            self.best, self.bad = score, 0
        else:
            self.bad += 1
            if self.kind == "plateau" and self.bad >= self.patience:
                self.scale, self.bad = self.scale * self.plateau_factor, 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best, self.bad = state["scale"], state["best"], state["bad"]


class EMA:
    """Exponential moving average of a model's weights (buffers copied), evaluated in place of the model.

    The decay warms up as ``min(decay, (1 + step) / (10 + step))`` (TensorFlow's
    ExponentialMovingAverage with ``num_updates``), so short runs are not averaged with the random start.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Average in ``model`` after its optimiser step number ``step`` (0-based) of the phase."""
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.module.parameters()), list(model.parameters()), 1 - decay)
        buffers = list(self.module.buffers())
        if buffers:  # batch-norm statistics, copied as they are
            torch._foreach_copy_(buffers, list(model.buffers()))

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)


def mix(x: torch.Tensor, target: torch.Tensor, mixup: float, cutmix: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018) or cutmix (Yun et al. 2019) of a batch with a shuffled copy of itself.

    Args:
        x: ``(B, C, H, W)`` images; target: ``(B, K)`` class probabilities.
        mixup, cutmix: Beta concentration of each (0: off); with both on, each batch picks one.
    Returns:
        mixed images and targets, shapes unchanged.
    """
    use_cut = cutmix > 0 and (mixup <= 0 or random.random() < 0.5)
    alpha = cutmix if use_cut else mixup
    if alpha <= 0:
        return x, target
    lam = random.betavariate(alpha, alpha)
    perm = torch.randperm(x.shape[0], device=x.device)
    if use_cut:
        h, w = x.shape[-2:]
        ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = random.randrange(h), random.randrange(w)
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch - ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw - cw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * target + (1 - lam) * target[perm]
