"""Lung masks as data: the square box around the lungs, the crop to it, and the Maguolo–Nanni controls
(the lungs hidden, or everything but the lungs hidden). The masks come from a :class:`LungMasker` the
caller passes (a trained segmenter, wired by the CLI); this module imports no model."""
from __future__ import annotations

import io
import math
import sys
from pathlib import Path
from typing import Literal, Protocol

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from foundation.files import write_bytes_atomic

from .transforms import Resize

MaskMode = Literal["none", "keep-lungs", "hide-lungs"]
HIDDEN_VALUE = 0  # what replaces hidden pixels: black, as Maguolo and Nanni (2021), carrying nothing of them
MIN_LUNG_FRACTION = 0.05  # lungs found on less of an image are not believed: it is kept whole


class LungMasker(Protocol):
    """Lung masks ``bool (N, 1, S, S)`` of ``uint8 (N, 1, S, S)`` images."""
    identity: str  # changes whenever the masks would (e.g. the segmenter checkpoint's sha256)

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def apply_lung_mask(images: torch.Tensor, masks: torch.Tensor, mode: MaskMode) -> torch.Tensor:
    """``uint8 (N, 1, S, S)`` images with the lungs (``hide-lungs``) or everything outside them
    (``keep-lungs``) set to :data:`HIDDEN_VALUE`; ``none`` returns them unchanged.

    Args:
        images: ``uint8 (N, 1, S, S)``.
        masks: ``bool (N, 1, S, S)``, true on the lungs.
    """
    if mode == "none":
        return images
    if masks.shape != images.shape:
        raise ValueError(f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)}")
    hide = masks if mode == "hide-lungs" else ~masks
    return images.masked_fill(hide, HIDDEN_VALUE)


def feather_mask(mask: torch.Tensor, dilate_px: int, blur_sigma: float) -> torch.Tensor:
    """A soft lung mask for blending: ``w * translated + (1 - w) * source`` changes the lungs and a margin
    around them, fading out, and leaves everything farther away exactly as it was.

    The mask is dilated by a disk of radius ``dilate_px`` (the binary mask filtered with the disk by
    ``kornia.filters.filter2d`` and thresholded: exact, and one convolution whatever the radius), then blurred
    by a Gaussian of ``blur_sigma`` (``kornia.filters.gaussian_blur2d``, window ±ceil(3σ), the image's edge
    replicated, so lungs that touch the border stay whole there). The result is exactly 0 where the blur
    window holds no pixel of the dilated mask (farther than ``dilate_px + ceil(3 * blur_sigma)`` from the
    mask) and exactly 1 where it holds nothing else.

    Args:
        mask: ``(N, 1, H, W)``, bool or numbers (lung where at least 0.5, as a bilinearly warped mask is).
        dilate_px: radius of the dilation in pixels, a whole number ``>= 0``.
        blur_sigma: standard deviation of the Gaussian in pixels, ``>= 0`` (0: the dilated mask as 0 and 1).

    Returns:
        ``(N, 1, H, W)`` in [0, 1]; float32, or the mask's own floating dtype.
    """
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (N, 1, H, W), got {tuple(mask.shape)}")
    if dilate_px < 0 or blur_sigma < 0 or dilate_px != int(dilate_px):
        raise ValueError(f"dilate_px must be a whole number >= 0 and blur_sigma >= 0, got {dilate_px} and {blur_sigma}")
    dtype = mask.dtype if mask.is_floating_point() else torch.float32
    weight = (mask.to(dtype) >= 0.5).to(dtype)
    if dilate_px:
        r = torch.arange(-int(dilate_px), int(dilate_px) + 1, device=mask.device)
        disk = ((r[:, None] ** 2 + r[None, :] ** 2) <= dilate_px ** 2).to(dtype)
        weight = (kornia.filters.filter2d(weight, disk[None], border_type="constant") > 0.5).to(dtype)
    if not blur_sigma:
        return weight
    size = 2 * math.ceil(3 * blur_sigma) + 1
    soft = kornia.filters.gaussian_blur2d(weight, (size, size), (blur_sigma, blur_sigma), border_type="replicate")
    touched = _square_max(weight, size) > 0.5    # the blur window holds a pixel of the dilated mask
    filled = _square_max(-weight, size) < -0.5   # ... and nothing else
    return torch.where(filled, 1.0, torch.where(touched, soft.clamp(0, 1), 0.0)).to(dtype)


def _square_max(x: torch.Tensor, size: int) -> torch.Tensor:
    """The maximum of ``x`` ``(N, 1, H, W)`` over the part inside the image of each pixel's ``size`` × ``size``
    window, as a row pass then a column pass."""
    x = F.max_pool2d(x, (1, size), stride=1, padding=(0, size // 2))
    return F.max_pool2d(x, (size, 1), stride=1, padding=(size // 2, 0))


def lung_box(mask: np.ndarray, margin: float) -> tuple[int, int, int, int] | None:
    """The square ``(top, left, side, side)`` around the lungs of ``mask`` ``bool (H, W)``, grown by
    ``margin`` × the box's longer side on every side, kept inside the image (shifted, then shrunk only
    if the image is smaller). None when the mask is empty.
    """
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    h, w = mask.shape
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    side = max(bottom - top, right - left)
    side = min(round(side * (1 + 2 * margin)), h, w)
    cy, cx = (top + bottom) / 2, (left + right) / 2
    y = int(min(max(round(cy - side / 2), 0), h - side))
    x = int(min(max(round(cx - side / 2), 0), w - side))
    return y, x, side, side


def crop_and_mask(images: torch.Tensor, masks: torch.Tensor, size: int, crop: bool, margin: float,
                  mode: MaskMode) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image cropped to its lungs' square :func:`lung_box` (with ``crop``), resized to ``size``, then
    masked as ``mode`` says (:func:`apply_lung_mask`, with the mask cropped and resized alike). An image
    whose lungs cover less than :data:`MIN_LUNG_FRACTION` of it is not cropped.

    Args:
        images: ``uint8 (N, 1, D, D)``, decoded larger than ``size`` when cropping, so the crop keeps detail.
        masks: ``bool (N, 1, D, D)``, true on the lungs.

    Returns:
        ``uint8 (N, 1, size, size)`` images and ``bool (N,)``, true where the lungs were too small to crop to.
    """
    faint = masks.flatten(1).float().mean(1) < MIN_LUNG_FRACTION
    resize, out_images, out_masks = Resize(size), [], []
    for image, mask, whole in zip(images, masks, faint.tolist()):
        box = lung_box(mask[0].numpy(), margin) if crop and not whole else None
        top, left, h, w = box or (0, 0, *image.shape[-2:])
        small_image, small_mask = (resize(x[None, :, top:top + h, left:left + w].float())[0] for x in (image, mask))
        out_images.append(small_image.round().clamp(0, 255).to(torch.uint8))
        out_masks.append(small_mask >= 0.5)
    if not out_images:
        return images.new_zeros((0, 1, size, size)), faint
    return apply_lung_mask(torch.stack(out_images), torch.stack(out_masks), mode), faint



def cached_lung_masks(images: torch.Tensor, key: str, cache_dir: str | Path, masker: LungMasker,
                      batch_size: int = 64, quiet: bool = False) -> torch.Tensor:
    """Lung masks ``bool (N, 1, S, S)`` of ``images`` ``uint8 (N, 1, S, S)`` (a dataset's cache), drawn by
    ``masker`` once and kept in ``cache_dir`` as packed bits named by ``key`` (the images' identity, e.g. the
    dataset's fingerprint) and the masker's identity, so another segmenter or other images draw them anew."""
    path = Path(cache_dir) / f"{key}-lungs-{masker.identity[:16]}.npy"
    shape = tuple(images.shape)
    if path.exists():
        bits = np.load(path)
        return torch.from_numpy(np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool))
    masks = torch.cat([masker(chunk) for chunk in tqdm(images.split(batch_size), desc="lung masks", disable=quiet,
                                                        file=sys.stderr)]) if len(images) else \
        torch.zeros(shape, dtype=torch.bool)
    buffer = io.BytesIO()
    np.save(buffer, np.packbits(masks.numpy().reshape(-1)))
    write_bytes_atomic(path, buffer.getvalue())
    return masks
