"""Batched prediction on uint8 images, shared by validation, evaluation and CAM."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from foundation.devices import autocast
from foundation.errors import UserError


def to_input(images_u8: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """uint8 ``(B, 1, S, S)`` -> float ``(B, 1, size, size)`` in [0, 1] on ``device``."""
    x = images_u8.to(device, non_blocking=True).float().div_(255)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


SHIFTS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1))  # right, left, down, up, diagonals


def shifted_views(x: torch.Tensor, views: int) -> list[torch.Tensor]:
    """``views`` copies of ``x (B, C, H, W)`` shifted by about 3 % of the side (:data:`SHIFTS` in order), the edge
    pixels repeated into the gap: test-time augmentation that keeps the whole film in view."""
    if views == 0:
        return []
    h, w = int(x.shape[-2]), int(x.shape[-1])  # constants when traced for export: the input size is fixed there
    s = max(1, round(0.03 * w))
    padded = F.pad(x, (s, s, s, s), mode="replicate")
    return [padded[..., s - dy * s:s - dy * s + h, s - dx * s:s - dx * s + w] for dx, dy in SHIFTS[:views]]


def mean_probabilities(model: nn.Module, x: torch.Tensor, tta: int = 0) -> torch.Tensor:
    """Softmax probabilities ``float32 (B, K)`` of ``x (B, 1, H, W)``, averaged over ``x`` and its ``tta`` shifted
    copies (:func:`shifted_views`)."""
    prob = model(x).float().softmax(1)
    for view in shifted_views(x, tta):
        prob = prob + model(view).float().softmax(1)
    return prob / (tta + 1)


@torch.no_grad()
def predict(model: nn.Module, images_u8: torch.Tensor, size: int, device: torch.device,
            batch_size: int = 64, bf16: bool = True, cpu_bf16: bool = False, tta: int = 0) -> torch.Tensor:
    """Class probabilities ``(N, K)`` (float32, CPU) of uint8 images ``(N, 1, S, S)``; bf16 autocast as
    :func:`foundation.devices.autocast` decides; with ``tta``, the mean over the film and ``tta`` shifted copies
    (:func:`shifted_views`)."""
    was = model.training
    model.eval()
    out = []
    for start in range(0, len(images_u8), batch_size):
        x = to_input(images_u8[start:start + batch_size], size, device)
        with autocast(device, bf16, cpu_bf16):
            out.append(mean_probabilities(model, x, tta).cpu())
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, 0)


def classifier_probe(model: nn.Module, size: int, classes: list[str], positive: str):
    """A trained classifier as gan-eval's yardstick: ``(features, calls_positive)``, two functions of
    ``(B, 1, H, W)`` images in [0, 1] giving the pooled last feature map ``(B, C)`` (the head's input)
    and a bool ``(B,)``, True where the classifier predicts ``positive``."""
    if positive not in classes:
        raise UserError(f"the classifier knows {', '.join(classes)}, not {positive!r}; give one trained with that class")
    k = classes.index(positive)
    model.eval()

    def resized(x):
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)

    @torch.no_grad()
    def classifier_penultimate_features(x):
        return model.backbone((resized(x) - model.mean) / model.std).float().mean((2, 3))

    @torch.no_grad()
    def calls_positive(x):
        return model(resized(x)).argmax(1) == k

    return classifier_penultimate_features, calls_positive
