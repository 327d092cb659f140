"""Pretrained weights: ImageNet files from ``$TORCH_HOME`` (torchvision's, or timm's under
``hub/checkpoints/timm/``; never downloaded here) or a local state dict, adapted to grayscale by summing
the RGB kernels of the first convolution."""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
import torch.nn as nn

from augment.errors import UserError
from augment.runtime import load_checkpoint

from .backbones import TIMM_PREFIX, import_timm


def adapt_tensor(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """A conv kernel ``(O, 3, k, k)`` summed over its input channels to ``(O, 1, k, k)``
    (or split evenly over ``dst``'s channels): a gray image ``g`` then gives the response the RGB
    kernel gives to ``(g, g, g)``."""
    if src.dim() != 4 or src.shape[1] != 3 or dst.shape[1] == 3 or src.shape[0] != dst.shape[0] \
            or src.shape[2:] != dst.shape[2:]:
        return src
    total = src.sum(1, keepdim=True)
    return total.expand(-1, dst.shape[1], -1, -1) / dst.shape[1]


def imagenet_file(name: str) -> Path:
    """Where torchvision looks for ``name``'s default ImageNet weights: ``$TORCH_HOME/hub/checkpoints``."""
    from torchvision.models import get_model_weights
    try:
        weights = get_model_weights(name).DEFAULT
    except (ValueError, KeyError) as e:
        raise UserError(f"backbone '{name}' has no ImageNet weights in torchvision; use --pretrained none") from e
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def imagenet_state_dict(name: str) -> dict:
    """The ImageNet state dict of torchvision model ``name``, read from the local hub cache only."""
    from torchvision.models import get_model_weights
    path = imagenet_file(name)
    if not path.is_file():
        url = get_model_weights(name).DEFAULT.url
        raise UserError(f"{path}: ImageNet weights for {name} are not there; download {url} to that path "
                        "(or set $TORCH_HOME), or use --pretrained none")
    state = get_model_weights(name).DEFAULT.get_state_dict(progress=False, weights_only=True)
    if name.startswith("densenet"):  # old-style keys 'norm.1' -> 'norm1', as torchvision's own loader does
        pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
        state = {(pattern.sub(r"\1\2", k) if pattern.match(k) else k): v for k, v in state.items()}
    return state


def timm_imagenet_file(name: str) -> Path:
    """Where the ImageNet weights of ``timm:<model>`` are read from:
    ``$TORCH_HOME/hub/checkpoints/timm/<model>.safetensors`` (or ``.pth``); a missing file is a
    :class:`UserError` saying where to put which file."""
    model = name[len(TIMM_PREFIX):]
    folder = Path(torch.hub.get_dir()) / "checkpoints" / "timm"
    for path in (folder / f"{model}.safetensors", folder / f"{model}.pth"):
        if path.is_file():
            return path
    cfg = import_timm(name).models.get_pretrained_cfg(model)
    hub = getattr(cfg, "hf_hub_id", None) if cfg else None
    where = f"download model.safetensors of https://huggingface.co/{hub} to that path" if hub else \
        "timm lists no ImageNet weights for it; put a state dict there"
    raise UserError(f"{folder / (model + '.safetensors')}: ImageNet weights for {name} are not there; {where} "
                    "(or set $TORCH_HOME), or use --pretrained none")


def imagenet_weights(name: str) -> tuple[dict, str]:
    """The ImageNet state dict of backbone ``name`` (torchvision or ``timm:``) from local files only,
    and the file it came from."""
    if not name.startswith(TIMM_PREFIX):
        return imagenet_state_dict(name), str(imagenet_file(name))
    path = timm_imagenet_file(name)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path)), str(path)
    return load_checkpoint(path), str(path)


def load_into(module: nn.Module, state: dict, source: str, required: set[str] | None = None) -> None:
    """Load the ``required`` keys (default: all of ``module``'s) from ``state`` into ``module``, RGB
    first-conv kernels adapted; other keys of ``state`` (a classifier head) are ignored. Missing keys
    or shapes that differ are a :class:`UserError` naming them."""
    own = module.state_dict()
    required = set(own) if required is None else required
    adapted = {k: adapt_tensor(v, own[k]) for k, v in state.items() if k in required and torch.is_tensor(v)}
    bad = [k for k, v in adapted.items() if v.shape != own[k].shape]
    missing = sorted(required - set(adapted))
    if missing or bad:
        what = (f"missing keys {', '.join(missing[:8])}{' …' if len(missing) > 8 else ''} ({len(missing)} in all)"
                if missing else f"shape mismatch at {', '.join(bad[:8])}")
        raise UserError(f"{source}: weights do not fit this backbone: {what}; "
                        "give weights saved from the same backbone")
    module.load_state_dict(adapted, strict=False)


def load_pretrained(full: nn.Module, backbone: nn.Module, source: str) -> None:
    """Load ``source`` (a local state dict file) into ``backbone``.

    Accepted: a classifier checkpoint or state dict of this toolkit (keys ``backbone.*``; head keys
    are ignored) or a torchvision-style state dict of the whole ``full`` model (its classifier is ignored).
    """
    state = load_checkpoint(source)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise UserError(f"{source}: not a state dict; give a .pt file saved with torch.save(model.state_dict())")
    if any(k.startswith("backbone.") for k in state):
        load_into(backbone, {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}, source)
    else:
        load_into(full, state, source, required=backbone_keys(full, backbone))


def backbone_keys(full: nn.Module, backbone: nn.Module) -> set[str]:
    """Keys of ``full``'s state dict whose tensors belong to ``backbone`` (they share modules)."""
    ids = {id(t) for t in backbone.state_dict(keep_vars=True).values()}
    return {k for k, t in full.state_dict(keep_vars=True).items() if id(t) in ids}
