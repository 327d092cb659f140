"""Typed configuration of ``lungseg-train`` (YAML files in ``configs/`` override these defaults)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from augment.transforms import AugmentConfig


@dataclass
class LungDataConfig:
    """How image/mask pairs become the cached tensors, and how they are split."""
    size: int = 256
    resize: Literal["crop", "pad"] = "pad"  # longer side to size + black pad keeps the whole lung field
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train, val, test for rows without a split
    split_seed: int = 0
    cache_dir: str = "runs/cache"

    def check(self):
        if self.size < 16:
            raise ValueError(f"data.size must be at least 16, got {self.size}")
        if any(f < 0 for f in self.split_fractions) or abs(sum(self.split_fractions) - 1) > 1e-6:
            raise ValueError(f"data.split_fractions must be non-negative and sum to 1, got {list(self.split_fractions)}")


@dataclass
class UNetConfig:
    width: int = 16  # channels of the first level, doubled at each level down
    depth: int = 4   # levels (depth - 1 poolings)

    def check(self):
        if self.width < 1 or not 2 <= self.depth <= 6:
            raise ValueError(f"model.width must be >= 1 and model.depth 2..6, got {self.width}, {self.depth}")


@dataclass
class LungTrainConfig:
    epochs: int = 40
    batch_size: int = 16
    lr: float = 2e-3          # AdamW, cosine decay to zero over the run
    weight_decay: float = 1e-4
    bf16: bool = True         # autocast on CUDA only
    log_every: int = 10       # steps between loss reads (host syncs)
    tensorboard: bool = True

    def check(self):
        if min(self.epochs, self.batch_size, self.log_every) < 1 or self.lr <= 0:
            raise ValueError("train.epochs, batch_size and log_every must be >= 1 and train.lr > 0")


@dataclass
class LungEvalConfig:
    bootstrap: int = 1000  # resamples of the test patients for the 95 % intervals


@dataclass
class LungsegConfig:
    data: LungDataConfig = field(default_factory=LungDataConfig)
    model: UNetConfig = field(default_factory=UNetConfig)
    train: LungTrainConfig = field(default_factory=LungTrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # applied to image and mask alike
    eval: LungEvalConfig = field(default_factory=LungEvalConfig)

    def check(self):
        if self.augment.hflip:  # the heart, which masks exclude, would change sides
            raise ValueError("augment.hflip must be 0 for lung segmentation: a flip moves the heart to the right")
