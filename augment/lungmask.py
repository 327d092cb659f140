"""Lung masks as data: the square box around the lungs, and the Maguolo–Nanni controls (the lungs
hidden, or everything but the lungs hidden). The masks come from a :class:`LungMasker` the caller passes
(a trained segmenter, wired by the CLI); this module imports no model."""
from __future__ import annotations

from typing import Literal, Protocol

import numpy as np
import torch

MaskMode = Literal["none", "keep-lungs", "hide-lungs"]
HIDDEN_VALUE = 0  # what replaces hidden pixels: black, as Maguolo and Nanni (2021), carrying nothing of them


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
