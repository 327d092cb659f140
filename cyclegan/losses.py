"""CycleGAN losses: least-squares GAN (Mao et al. 2017, "LSGAN") and L1 cycle / identity terms."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def lsgan_loss(scores: torch.Tensor, real: bool) -> torch.Tensor:
    """Mean of ``(scores - target)²`` with target 1 for real, 0 for fake; ``scores (B, 1, H', W')``."""
    target = torch.ones_like(scores) if real else torch.zeros_like(scores)
    return F.mse_loss(scores.float(), target.float())


def l1_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference in float32; both ``(B, 1, H, W)``."""
    return F.l1_loss(output.float(), target.float())
