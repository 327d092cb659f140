"""Batches on the device and their augmentation there.

The cached uint8 images move to the GPU once (:class:`DeviceImages`), or, when they would take too much
of its memory, stay in host memory (for gan-train, the memory-mapped cache) and stream batch by batch (:class:`StreamedImages`); both
give the same batches in the same seeded order. Augmentation draws its parameters on the images' device
and warps each image once: no host sync, no host-to-device copy, so a CUDA graph can capture it. The
same code runs on the CPU.
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
    :func:`augment.runtime.rng_state` saves), with no host sync.

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
    :func:`augment.runtime.rng_state` replays it. When ``cfg.enabled`` is false it only resizes.
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


# ---------------------------------------------------------------- image sets and their batches
def fits_on_device(nbytes: int, device: torch.device | str, share: float) -> bool:
    """Whether a uint8 image cache of ``nbytes`` is held on ``device`` (:class:`DeviceImages`) rather than
    streamed (:class:`StreamedImages`): on a GPU while it takes at most ``share`` of the GPU's memory, on
    the CPU always; ``share`` 0 streams on both."""
    device = torch.device(device)
    if share <= 0:
        return False
    if device.type != "cuda":
        return True
    return nbytes <= share * torch.cuda.get_device_properties(device).total_memory


class DeviceImages:
    """A uint8 image set held on ``device``; batches are gathered there.

    Args:
        images: ``uint8 (N, 1, S, S)`` (the memory-mapped cache, say).
        labels: ``int64 (N,)``.
        device: where the set lives.
        rows: ``int64 (M,)``: the set is ``images[rows]``, ``labels[rows]`` (default: all of them).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device | str,
                 rows: torch.Tensor | None = None):
        if rows is not None:
            images, labels = images[rows], labels[rows]
        self.images = images.to(device, non_blocking=True).contiguous()
        self.labels = labels.to(device)
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float ``(B, 1, S, S)`` in [0, 1] and labels ``(B,)`` for positions ``idx``; no copy when
        ``idx`` is on the device already."""
        idx = idx.to(self.device)
        return self.images[idx].float().div_(255), self.labels[idx]

    def batches(self, order: torch.Tensor) -> EpochBatches:
        """The batches of positions ``order (steps, B)`` (an epoch, say), which moves to the device once
        here, so that fetching a batch copies nothing and never waits for the host."""
        return EpochBatches(self, order.to(self.device))


class StreamedImages:
    """A uint8 image set left in host memory (memory-mapped cache pages are read when a batch needs them),
    for sets too large for the device. Same interface and same batches as :class:`DeviceImages`: each
    batch is gathered on the host and copied to ``device`` (on a GPU through pinned buffers on a side
    stream, one batch ahead: :meth:`batches`).

    Args: as :class:`DeviceImages`; ``images`` and ``labels`` stay on the host.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device | str,
                 rows: torch.Tensor | None = None):
        self.images, self.rows = images, rows
        self.labels = labels if rows is None else labels[rows]
        self.device = torch.device(device)
        self.copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def __len__(self) -> int:
        return len(self.labels)

    def gather(self, idx: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor] | None = None):
        """uint8 images ``(B, 1, S, S)`` and labels ``(B,)`` of host positions ``idx``, on the host (into
        ``out`` when given)."""
        rows = idx if self.rows is None else self.rows[idx]
        x, y = out or (None, None)
        return torch.index_select(self.images, 0, rows, out=x), torch.index_select(self.labels, 0, idx, out=y)

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`DeviceImages.get`, without prefetching; an ``idx`` on a GPU costs a host sync."""
        x, y = self.gather(idx.cpu())
        return x.to(self.device).float().div_(255), y.to(self.device)

    def batches(self, order: torch.Tensor) -> EpochBatches:
        """The batches of host positions ``order (steps, B)``; on a GPU each one is copied while the one
        before it is used."""
        return PrefetchedBatches(self, order.cpu()) if self.copy_stream is not None else EpochBatches(self, order.cpu())


def image_sets(images: torch.Tensor, labels: torch.Tensor, device: torch.device | str, share: float,
               *rows: torch.Tensor | None) -> list[DeviceImages | StreamedImages]:
    """One image set per ``rows`` (``int64 (M,)`` positions in ``images``; None: all of them): all held on
    ``device`` when together they fit ``share`` of its memory (:func:`fits_on_device`), else all streamed."""
    n = sum(len(images) if r is None else len(r) for r in rows)
    kind = DeviceImages if fits_on_device(n * images[0].numel(), device, share) else StreamedImages
    return [kind(images, labels, device, r) for r in rows]


class EpochBatches:
    """``batches[pos]``: float images ``(B, 1, S, S)`` in [0, 1] and labels ``(B,)`` on the device, of the
    positions ``order[pos]`` of an image set."""

    def __init__(self, images: DeviceImages | StreamedImages, order: torch.Tensor):
        self.images, self.order = images, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images.get(self.order[pos])


class PrefetchedBatches(EpochBatches):
    """Batches of a :class:`StreamedImages` on a GPU: batch ``pos`` is gathered into one of two pinned host
    buffers and copied on the set's side stream; fetching it starts batch ``pos + 1``, so a loop reading
    in order finds each batch copied while the previous one trained."""

    def __init__(self, images: StreamedImages, order: torch.Tensor):
        super().__init__(images, order)
        shape = (order.shape[1], *images.images.shape[1:])
        self.host = [(torch.empty(shape, dtype=torch.uint8).pin_memory(),
                      torch.empty(order.shape[1], dtype=torch.long).pin_memory()) for _ in range(2)]
        self.copied = [torch.cuda.Event() for _ in range(2)]  # the last copy out of each buffer
        self.ahead: tuple[int, torch.Tensor, torch.Tensor] | None = None  # pos, images, labels in flight

    def __getitem__(self, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.ahead[1:] if self.ahead is not None and self.ahead[0] == pos else self._copy(pos)
        stream = torch.cuda.current_stream(self.images.device)
        stream.wait_stream(self.images.copy_stream)
        x.record_stream(stream)
        y.record_stream(stream)
        self.ahead = (pos + 1, *self._copy(pos + 1)) if pos + 1 < len(self) else None
        return x.float().div_(255), y

    def _copy(self, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather batch ``pos`` into a pinned buffer and start its copy to the device."""
        slot = self.host[pos % 2]
        self.copied[pos % 2].synchronize()  # that buffer's previous copy has finished
        x, y = self.images.gather(self.order[pos], out=slot)
        with torch.cuda.stream(self.images.copy_stream):
            x, y = x.to(self.images.device, non_blocking=True), y.to(self.images.device, non_blocking=True)
            self.copied[pos % 2].record()
        return x, y


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
