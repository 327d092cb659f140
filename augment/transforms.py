"""The classic augmentation, drawn and applied on the images' device.

Augmentation draws its parameters on the images' device and warps each image once: no host sync, no
host-to-device copy, so a CUDA graph can capture it. The same code runs on the CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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


# ---------------------------------------------------------------- augmentation
CROP_TRIES = 10  # candidate crops per image; the first that fits is kept (torchvision's and kornia's rule)


@dataclass
class AugmentDraw:
    """The sampled augmentation of a batch of ``B`` images.

    Attributes:
        theta: ``(B, 2, 3)``, the output → input map in ``F.affine_grid``'s normalised coordinates (the
            image's outer edges at ±1): crop, rotation, shift and flip in one.
        brightness, contrast, gamma: ``(B,)``; an image ``x`` becomes
            ``min(clamp(x + brightness, 0, 1) * contrast, 1) ** gamma``.
    """
    theta: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    gamma: torch.Tensor


def draw_augment(cfg: AugmentConfig, batch: int, device: torch.device | str) -> AugmentDraw:
    """Parameters of ``batch`` images from one ``torch.rand`` on ``device`` (its default generator, which
    :func:`foundation.devices.rng_state` saves), with no host sync.

    The distributions are those of kornia's ``RandomResizedCrop`` → ``RandomAffine`` → ``RandomBrightness``
    → ``RandomContrast`` → ``RandomGamma`` → ``RandomHorizontalFlip`` with the settings of ``cfg``: crop
    area share uniform in ``crop_scale``, log aspect ratio uniform in ``log(crop_ratio)`` (the first of
    ten candidates that fits, else the whole image), crop place uniform; angle uniform in ±``degrees``;
    shift uniform in ±``translate`` of the side per axis; brightness added, contrast multiplied, gamma as
    exponent, each uniform; a flip with probability ``hflip``. Crop sizes and places are continuous where
    kornia rounds them to whole pixels.
    """
    t = CROP_TRIES
    u = torch.rand(batch, 2 * t + 9, device=device)
    lo, hi = cfg.crop_scale
    area = lo + (hi - lo) * u[:, :t]
    log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * u[:, t:2 * t])
    w, h = torch.sqrt(area * ratio), torch.sqrt(area / ratio)  # crop width and height, shares of the side
    fits = (w <= 1) & (h <= 1)
    first = fits & (fits.cumsum(1) == 1)
    square = min(max(1.0, cfg.crop_ratio[0]), cfg.crop_ratio[1])  # fallback: the allowed ratio nearest 1
    any_fits = fits.any(1)
    w = torch.where(any_fits, (w * first).sum(1), min(1.0, square))
    h = torch.where(any_fits, (h * first).sum(1), min(1.0, 1 / square))
    cx, cy, angle, tx, ty, flip, brightness, contrast, gamma = u[:, 2 * t:].unbind(1)
    cx, cy = (1 - w) * (2 * cx - 1), (1 - h) * (2 * cy - 1)  # crop centre: anywhere the crop stays inside
    angle = math.radians(cfg.degrees) * (2 * angle - 1)
    tx, ty = 2 * cfg.translate * (2 * tx - 1), 2 * cfg.translate * (2 * ty - 1)  # the side is 2 long
    flip = 1 - 2 * (flip < cfg.hflip).to(u.dtype)
    cos, sin = angle.cos(), angle.sin()
    # output r -> flipped q = (flip r_x, r_y) -> before the rotation and shift p = R^T (q - t) -> input crop(p)
    theta = torch.stack([torch.stack([flip * w * cos, w * sin, cx - w * (cos * tx + sin * ty)], 1),
                         torch.stack([-flip * h * sin, h * cos, cy - h * (cos * ty - sin * tx)], 1)], 1)
    g_lo, g_hi = cfg.gamma
    return AugmentDraw(theta, cfg.brightness * (2 * brightness - 1), 1 + cfg.contrast * (2 * contrast - 1),
                       g_lo + (g_hi - g_lo) * gamma)


def adjust_intensity(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                     gamma: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` in [0, 1], in place: brightness added, contrast multiplied, gamma applied, per image
    (``(B,)`` each), clamped to [0, 1] after each as kornia does; one elementwise chain that
    ``torch.compile`` fuses into one kernel."""
    view = (-1,) + (1,) * (x.dim() - 1)
    return x.add_(brightness.view(view)).clamp_(0, 1).mul_(contrast.view(view)).clamp_(max=1).pow_(gamma.view(view))


def warp(x: torch.Tensor, theta: torch.Tensor, size: int, padding: str) -> torch.Tensor:
    """``(B, C, S, S)`` sampled bilinearly at ``theta (B, 2, 3)`` (output → input) into ``(B, C, size, size)``."""
    grid = F.affine_grid(theta.to(x.dtype), [len(x), x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


class Augment(nn.Module):
    """Random resized crop, rotation, shift and flip as one affine warp of each image (one ``grid_sample``),
    then brightness, contrast and gamma (one elementwise chain): the distributions of the kornia chain
    this replaces (:func:`draw_augment`), drawn on the images' device without a host sync.

    Two differences from warping in steps: where the rotated or shifted crop reaches past the crop
    window but not past the image, the image shows there instead of black; and the resize inside the
    crop does not antialias (neither did kornia's crop), harmless while the cache is not much larger than
    ``size`` (256 → 224 shrinks by at most 1.14). Outside the image the warp reads zeros, black as
    around a film, rather than smearing its edge pixels into streaks.
    """

    def __init__(self, cfg: AugmentConfig, size: int):
        super().__init__()
        self.cfg, self.size = cfg, size
        identity = (1.0, 1.0)
        self.moves = bool(tuple(cfg.crop_scale) != identity or tuple(cfg.crop_ratio) != identity or cfg.degrees
                          or cfg.translate or cfg.hflip)  # else the warp is a plain resize
        self.adjusts = bool(cfg.brightness or cfg.contrast or tuple(cfg.gamma) != identity)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        """Float ``(B, C, S, S)`` in [0, 1] → ``(B, C, size, size)`` in [0, 1], random per image.

        With ``mask (B, 1, S, S)`` it returns ``[x, mask]``, the mask under the same warp (bilinear:
        threshold it) and untouched by the intensity changes.
        """
        return self.apply(x, draw_augment(self.cfg, len(x), x.device), mask)

    def apply(self, x: torch.Tensor, draw: AugmentDraw, mask: torch.Tensor | None = None):
        """:meth:`forward` with the parameters ``draw``."""
        both = x if mask is None else torch.cat([x, mask.to(x.dtype)], 1)
        out = warp(both, draw.theta, self.size, "zeros") if self.moves else Resize(self.size)(both)
        c = x.shape[1]
        if self.adjusts:
            out = out.clone() if out is x else out  # the caller's images stay as they were
            adjust_intensity(out[:, :c], draw.brightness, draw.contrast, draw.gamma)
        return out if mask is None else [out[:, :c], out[:, c:]]


def build_augment(cfg: AugmentConfig, size: int) -> nn.Module:
    """Float ``(B, 1, S, S)`` in [0, 1] → ``(B, 1, size, size)`` in [0, 1], random per image (:class:`Augment`).

    Draws from torch's default generator of the images' device, so a saved
    :func:`foundation.devices.rng_state` replays it. When ``cfg.enabled`` is false it only resizes.
    """
    return Augment(cfg, size) if cfg.enabled else Resize(size)


class JitterCrop(nn.Module):
    """Zhu et al.'s jitter: an image enlarged to ``load_size`` and cropped back to ``size`` at a random
    whole-pixel place, as one bilinear warp per image. The crop never leaves the enlarged image and the
    edge is read as the resize reads it (replicated), so for images no larger than ``load_size`` (the
    GAN's cache is ``size``) the output is resize-then-crop, to float rounding."""

    def __init__(self, size: int, load_size: int):
        super().__init__()
        self.size, self.load_size = size, load_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float ``(B, C, S, S)`` → ``(B, C, size, size)``; one ``torch.rand`` on ``x``'s device."""
        free = self.load_size - self.size
        offset = (torch.rand(len(x), 2, device=x.device) * (free + 1)).floor_().clamp_(max=free)  # (x, y) pixels
        theta = torch.zeros(len(x), 2, 3, device=x.device)
        theta[:, 0, 0] = theta[:, 1, 1] = self.size / self.load_size
        theta[:, :, 2] = (2 * offset + self.size) / self.load_size - 1
        return warp(x, theta, self.size, "border")


def resize_and_crop(size: int, load_size: int) -> nn.Module:
    """Float ``(B, 1, S, S)`` → ``(B, 1, size, size)``: resized to ``load_size`` then cropped back to ``size``
    at a random place per image (:class:`JitterCrop`; Zhu et al.: load 286, crop 256). Draws from torch's
    default generator of the images' device."""
    if load_size == size:
        return Resize(size)
    return JitterCrop(size, load_size)


class Resize(nn.Module):
    """Bilinear resize to ``(size, size)``; the identity when the size already matches."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        """``(B, C, S, S)`` → ``(B, C, size, size)``; with ``mask`` ``[x, mask]`` both resized (as :class:`Augment`)."""
        if mask is not None:
            return [self(x), self(mask.to(x.dtype))]
        if x.shape[-1] == self.size and x.shape[-2] == self.size:
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
