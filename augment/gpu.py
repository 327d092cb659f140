"""Batches on the device: the cached uint8 images move to the GPU once, batches are indexed
there, and augmentation runs there with kornia. The same code runs on the CPU."""
from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AugmentConfig:
    """Classic augmentation of gray X-rays. Horizontal flips are off by default: they move the
    heart to the right, which no real frontal X-ray shows."""
    enabled: bool = True
    crop_scale: tuple[float, float] = (0.8, 1.0)   # random resized crop: area share kept
    crop_ratio: tuple[float, float] = (0.9, 1.1)   # and aspect ratio
    degrees: float = 10.0                           # rotation, ± degrees
    translate: float = 0.05                         # shift, ± share of the side
    brightness: float = 0.1                         # additive, ± (images in [0, 1])
    contrast: float = 0.1                           # multiplicative, 1 ± this
    gamma: tuple[float, float] = (0.9, 1.1)
    hflip: float = 0.0                              # probability

    def check(self):
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"augment.crop_scale must satisfy 0 < low <= high <= 1, got {list(self.crop_scale)}")
        lo, hi = self.crop_ratio
        if not 0 < lo <= hi:
            raise ValueError(f"augment.crop_ratio must satisfy 0 < low <= high, got {list(self.crop_ratio)}")
        lo, hi = self.gamma
        if not 0 < lo <= hi:
            raise ValueError(f"augment.gamma must satisfy 0 < low <= high, got {list(self.gamma)}")
        if not 0 <= self.translate <= 1:
            raise ValueError(f"augment.translate is a share of the side in [0, 1], got {self.translate}")
        if not 0 <= self.hflip <= 1:
            raise ValueError(f"augment.hflip is a probability in [0, 1], got {self.hflip}")
        if min(self.degrees, self.brightness, self.contrast) < 0:
            raise ValueError("augment.degrees, brightness and contrast must be >= 0")


def build_augment(cfg: AugmentConfig, size: int) -> nn.Module:
    """Float ``(B, 1, S, S)`` in [0, 1] → ``(B, 1, size, size)`` in [0, 1], random per image.

    Draws from torch's global RNG, so a saved :func:`augment.runtime.rng_state` replays it.
    When ``cfg.enabled`` is false it only resizes.
    """
    if not cfg.enabled:
        return Resize(size)
    ops = [K.RandomResizedCrop((size, size), scale=cfg.crop_scale, ratio=cfg.crop_ratio)]
    if cfg.degrees or cfg.translate:
        ops.append(K.RandomAffine(cfg.degrees, translate=(cfg.translate, cfg.translate), p=1.0))
    if cfg.brightness:
        ops.append(K.RandomBrightness((1 - cfg.brightness, 1 + cfg.brightness)))
    if cfg.contrast:
        ops.append(K.RandomContrast((1 - cfg.contrast, 1 + cfg.contrast)))
    if cfg.gamma != (1.0, 1.0):
        ops.append(K.RandomGamma(cfg.gamma))
    if cfg.hflip:
        ops.append(K.RandomHorizontalFlip(p=cfg.hflip))
    return K.AugmentationSequential(*ops)


def resize_and_crop(size: int, load_size: int) -> nn.Module:
    """Float ``(B, 1, S, S)`` → ``(B, 1, size, size)``: resized to ``load_size`` then cropped back to ``size``
    at a random place per image (Zhu et al.'s jitter: load 286, crop 256). Draws from torch's global RNG."""
    if load_size == size:
        return Resize(size)
    return nn.Sequential(Resize(load_size), K.RandomCrop((size, size)))


class Resize(nn.Module):
    """Bilinear resize to ``(size, size)``; the identity when the size already matches."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.size and x.shape[-2] == self.size:
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)


class DeviceImages:
    """A uint8 image set held on ``device``; batches are gathered there.

    Args:
        images: ``uint8 (N, 1, S, S)``.
        labels: ``int64 (N,)``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device | str):
        self.images = images.to(device, non_blocking=True).contiguous()
        self.labels = labels.to(device)
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float ``(B, 1, S, S)`` in [0, 1] and labels ``(B,)`` for positions ``idx``."""
        idx = idx.to(self.device)
        return self.images[idx].float().div_(255), self.labels[idx]


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, shuffle: bool = True,
                  drop_last: bool = True) -> list[torch.Tensor]:
    """One epoch of positions ``0..n-1`` as ``int64 (batch_size,)`` chunks, shuffled by ``generator``.

    With ``drop_last`` and ``n < batch_size`` one full batch is drawn with replacement, so a tiny
    set still trains.
    """
    if n == 0:
        return []
    if drop_last and n < batch_size:
        return [torch.randint(n, (batch_size,), generator=generator)]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    batches = list(order.split(batch_size))
    if drop_last and len(batches[-1]) < batch_size:
        batches.pop()
    return batches
