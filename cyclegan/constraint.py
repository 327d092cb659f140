"""Translation that may only change the lungs, and discriminators that judge only the lungs.

A CycleGAN matches whatever separates its two domains; when the covid films come from other hospitals than
the normal ones, the cheapest match is the hospital's look (borders, text, collimation, windowing), not the
disease (Cohen, Luck & Honari, MICCAI 2018). Three pieces stop that:

- :func:`augment.lungmask.feather_mask`: a lung mask grown a little and blurred into a weight in [0, 1], exactly 0
  away from the lungs;
- :func:`blend`: the generator's output inside that weight, its input outside it (``composite``), so nothing
  outside the lungs can change;
- :func:`lung_view`: what a discriminator sees: the square box around the lungs, with the intensity
  standardised inside them per image and everything outside them set to 0, so it cannot score borders, text,
  collimation, global windowing, or the film's framing of the chest.

Plus DiffAugment (Zhao et al., NeurIPS 2020, "Differentiable Augmentation for Data-Efficient GAN Training"):
translation and cutout applied to real and fake discriminator inputs alike, for small domains. Everything runs
on the images' device without a host sync, so a CUDA graph can capture it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

BOX_MARGIN = 0.05     # the lung box grows by this share of its side on every side


def blend(generated: torch.Tensor, source: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """``source + weight · (generated − source)`` in float32: the generated image where ``weight`` is 1, the
    source unchanged (bit for bit) where it is 0. ``weight`` None: ``generated`` as it is. All ``(B, 1, H, W)``."""
    if weight is None:
        return generated
    source = source.float()
    return source + weight * (generated.float() - source)


def lung_box_theta(weight: torch.Tensor, margin: float = BOX_MARGIN) -> torch.Tensor:
    """``(B, 2, 3)`` affine maps (``F.affine_grid``'s output → input, normalised coordinates) onto the square
    around each image's lungs (``weight (B, 1, H, W)`` > 0), grown by ``margin`` of its side; the whole image
    where there is no lung. The box may reach past the image (read as 0 there)."""
    _, _, h, w = weight.shape
    inside = weight[:, 0] > 0
    rows, cols = inside.any(2), inside.any(1)                      # (B, H), (B, W)
    top = rows.int().argmax(1)
    bottom = h - rows.flip(1).int().argmax(1)                       # one past the last lung row
    left = cols.int().argmax(1)
    right = w - cols.flip(1).int().argmax(1)
    empty = ~rows.any(1)
    top, left = torch.where(empty, 0, top), torch.where(empty, 0, left)
    bottom, right = torch.where(empty, h, bottom), torch.where(empty, w, right)
    side = torch.maximum(bottom - top, right - left).float() * (1 + 2 * margin)
    theta = weight.new_zeros(len(weight), 2, 3)
    theta[:, 0, 0] = side / w
    theta[:, 1, 1] = side / h
    theta[:, 0, 2] = (left + right).float() / w - 1
    theta[:, 1, 2] = (top + bottom).float() / h - 1
    return theta


def lung_view(images: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """What a lung-only discriminator sees of ``images (B, 1, H, W)`` (any range) with blend weights
    ``weight (B, 1, H, W)`` (:func:`augment.lungmask.feather_mask`): the intensity standardised to mean 0 and standard deviation 1
    inside the lungs (weighted by ``weight``), times ``weight`` (0 outside the lungs), cut to the square
    around the lungs and resized to ``(H, W)``. Differentiable in ``images``; float32 ``(B, 1, H, W)``."""
    x, w = images.float(), weight.float()
    total = w.sum((2, 3), keepdim=True).clamp_min(1e-6)
    mean = (w * x).sum((2, 3), keepdim=True) / total
    var = (w * (x - mean) ** 2).sum((2, 3), keepdim=True) / total
    z = (x - mean) / (var + eps).sqrt() * w
    grid = F.affine_grid(lung_box_theta(w), list(z.shape), align_corners=False)
    return F.grid_sample(z, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def diff_augment(images: torch.Tensor, translation: float = 0.125, cutout: float = 0.5) -> torch.Tensor:
    """DiffAugment's ``translation,cutout`` policy (Zhao et al. 2020), each image its own draw: a shift by up to
    ``translation`` of the side (whole pixels, 0 shifted in), then a square of ``cutout`` of the side set to 0
    at a random centre. ``(B, C, H, W)`` → same, differentiable in ``images``."""
    b, _, h, w = images.shape
    dev = images.device
    shift_y = torch.randint(-int(h * translation), int(h * translation) + 1, (b, 1, 1), device=dev)
    shift_x = torch.randint(-int(w * translation), int(w * translation) + 1, (b, 1, 1), device=dev)
    ys = torch.arange(h, device=dev).view(1, h, 1) - shift_y        # source row of each output row
    xs = torch.arange(w, device=dev).view(1, 1, w) - shift_x
    valid = ((ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)).unsqueeze(1)
    index = (ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)).view(b, 1, h * w).expand(-1, images.shape[1], -1)
    shifted = images.flatten(2).gather(2, index).view_as(images) * valid
    cut_h, cut_w = int(h * cutout + 0.5), int(w * cutout + 0.5)
    top = torch.randint(0, h, (b, 1, 1), device=dev) - cut_h // 2     # the hole's first row and column
    left = torch.randint(0, w, (b, 1, 1), device=dev) - cut_w // 2
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    hole = (rows >= top) & (rows < top + cut_h) & (cols >= left) & (cols < left + cut_w)
    return shifted * ~hole.unsqueeze(1)
