"""Running a generator over images held in [0, 1] (the range the data stage delivers)."""
from __future__ import annotations

import torch
from torch import nn

from augment.runtime import autocast


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """``[0, 1]`` → ``[-1, 1]`` (the generator's tanh range)."""
    return x * 2 - 1


def memory_format(channels_last: bool, device: torch.device) -> torch.memory_format:
    """The layout of the networks and their inputs: channels_last when asked for and on CUDA (on the CPU
    it is slower), else contiguous NCHW."""
    return torch.channels_last if channels_last and device.type == "cuda" else torch.contiguous_format


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` → float32 ``[0, 1]``."""
    return ((x.float() + 1) / 2).clamp_(0, 1)


@torch.no_grad()
def translate(generator: nn.Module, images: torch.Tensor, bf16: bool = True,
              channels_last: bool = False) -> torch.Tensor:
    """``(B, 1, H, W)`` in [0, 1] on the generator's device → translated ``(B, 1, H, W)`` in [0, 1]; bf16
    autocast and the channels_last layout apply on CUDA only."""
    x = to_model_range(images).contiguous(memory_format=memory_format(channels_last, images.device))
    with autocast(images.device, bf16):
        return to_unit_range(generator(x))


@torch.no_grad()
def in_batches(fn, images: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """``fn`` over ``images (N, ...)`` (any device) in chunks moved to ``device``; results on the CPU."""
    return torch.cat([fn(chunk.to(device)).cpu() for chunk in images.split(batch_size)])
