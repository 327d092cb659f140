"""Running a generator over images held in [0, 1] (the range the data stage delivers)."""
from __future__ import annotations

import torch
from torch import nn

from augment.lungmask import feather_mask
from foundation.devices import autocast

from .config import GanConfig
from .constraint import blend


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
              channels_last: bool = False, cpu_bf16: bool = False) -> torch.Tensor:
    """``(B, 1, H, W)`` in [0, 1] on the generator's device → translated ``(B, 1, H, W)`` in [0, 1]; bf16
    autocast on CUDA (and with ``cpu_bf16`` on a CPU with native bf16); channels_last on CUDA only."""
    x = to_model_range(images).contiguous(memory_format=memory_format(channels_last, images.device))
    with autocast(images.device, bf16, cpu_bf16):
        return to_unit_range(generator(x))


@torch.no_grad()
def translate_films(generator: nn.Module, films: torch.Tensor, cfg: GanConfig) -> torch.Tensor:
    """``films (B, C, H, W)`` in [0, 1], the film in channel 0 and, for a lung-constrained GAN
    (``train.lung_constraint``), its lung mask in channel 1 → translations ``(B, 1, H, W)`` in [0, 1]; under a
    lung constraint each is :func:`cyclegan.constraint.blend`-ed with its film through the feathered mask, so
    outside the lungs it is the film, bit for bit."""
    x, t = films[:, :1], cfg.train
    out = translate(generator, x, t.bf16, t.channels_last, t.cpu_bf16)
    if t.lung_constraint == "none":
        return out
    return blend(out, x, feather_mask(films[:, 1:], *t.feathering(x.shape[-1])))


@torch.no_grad()
def in_batches(fn, images: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """``fn`` over ``images (N, ...)`` (any device) in chunks moved to ``device``; results on the CPU."""
    return torch.cat([fn(chunk.to(device)).cpu() for chunk in images.split(batch_size)])
