"""Class activation maps in the shape of pytorch-grad-cam: one small base class that hooks the
model's CAM layer (released by a ``with`` block); each method only says how channels are weighted.

- ``cam``: the linear head's weights of the class (Zhou et al. 2016; needs pooling + linear head).
- ``gradcam``: spatial mean of the gradients (Selvaraju et al. 2017).
- ``gradcampp``: gradients weighted by higher-order terms (Chattopadhyay et al. 2018).
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from foundation.errors import UserError

from .heads import LinearHead
from .model import Classifier


class BaseCAM:
    """``with Method(model) as cam: maps, target, prob = cam(x)``.

    Call args: ``x`` float ``(B, C, H, W)`` in [0, 1]; ``target`` None (predicted class), a class index
    or ``(B,)`` indices. Returns maps ``(B, H, W)`` in [0, 1], the target classes ``(B,)`` and the
    class probabilities ``(B, K)``.
    """
    uses_gradients = True
    label = ""  # the method's name in figure titles

    def __init__(self, model: Classifier):
        self.model = model
        self.handle = None
        self.activations = self.gradients = None

    def __enter__(self):
        self.handle = self.model.cam_layer.register_forward_hook(self._keep)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        self.handle = None
        self.activations = self.gradients = None
        return False

    def _keep(self, module, inputs, output):
        self.activations = output
        if output.requires_grad:
            output.register_hook(lambda g: setattr(self, "gradients", g))

    def channel_weights(self, acts: torch.Tensor, grads: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` weights of the activation channels ``acts (B, C, h, w)``."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, target=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.handle is None:
            raise RuntimeError("use a CAM method inside a `with` block")
        self.model.eval()
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)  # so the hooked activations have gradients
            logits = self.model(x).float()
            if target is None:
                target = logits.argmax(1)
            target = torch.as_tensor(target, device=logits.device).expand(len(x))
            if self.uses_gradients:
                self.model.zero_grad(set_to_none=True)
                logits.gather(1, target[:, None]).sum().backward()
        acts = self.activations.detach().float()
        weights = self.channel_weights(acts, None if self.gradients is None else self.gradients.float(), target)
        maps = F.relu((weights[:, :, None, None] * acts).sum(1, keepdim=True))
        maps = F.interpolate(maps, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        lo, hi = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
        maps = (maps - lo) / (hi - lo).clamp(min=1e-8)
        return maps.detach(), target, logits.detach().softmax(1)


class CAM(BaseCAM):
    uses_gradients = False
    label = "CAM"

    def channel_weights(self, acts, grads, target):
        return self.model.head.fc.weight.detach().float()[target]


class GradCAM(BaseCAM):
    label = "Grad-CAM"

    def channel_weights(self, acts, grads, target):
        return grads.mean((2, 3))


class GradCAMPlusPlus(BaseCAM):
    label = "Grad-CAM++"

    def channel_weights(self, acts, grads, target):
        g2, g3 = grads.pow(2), grads.pow(3)
        denom = 2 * g2 + acts.sum((2, 3), keepdim=True) * g3
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        return (alpha * F.relu(grads)).sum((2, 3))


METHODS = {"cam": CAM, "gradcam": GradCAM, "gradcampp": GradCAMPlusPlus}


def cam_method(name: str, model: Classifier) -> BaseCAM:
    """The CAM method ``name`` for ``model``; CAM proper on a recurrent head falls back to Grad-CAM."""
    if name not in METHODS:
        raise UserError(f"unknown CAM method '{name}'; choose one of {', '.join(METHODS)}")
    if name == "cam" and not isinstance(model.head, LinearHead):
        print("note: CAM needs a pooling + linear head; this model's head is recurrent, so Grad-CAM is used",
              file=sys.stderr)
        name = "gradcam"
    return METHODS[name](model)


@torch.no_grad()
def faithfulness(model: Classifier, x: torch.Tensor, maps: torch.Tensor, target: torch.Tensor,
                 prob: torch.Tensor) -> dict[str, float]:
    """Average drop and increase in confidence (Chattopadhyay et al. 2018) when the image is reduced
    to its explanation ``x * map``: lower drop and higher increase mean a more faithful map.

    Args: ``x (B, C, H, W)``, ``maps (B, H, W)``, ``target (B,)``, ``prob (B, K)`` on the full images.
    """
    full = prob.gather(1, target[:, None])[:, 0]
    kept = model(x * maps[:, None]).float().softmax(1).gather(1, target[:, None])[:, 0]
    drop = (full - kept).clamp(min=0) / full.clamp(min=1e-8)
    return {"average_drop_pct": float(100 * drop.mean()), "increase_in_confidence_pct": float(100 * (kept > full).float().mean())}
