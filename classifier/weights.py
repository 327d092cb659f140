"""Pretrained weights: ImageNet weights through the ecosystem's own channels (torchvision's weights API and
``torch.hub``'s cache under ``$TORCH_HOME/hub/checkpoints``; timm's own download and cache for ``timm:``
models), refused when the network is off (``--offline``, ``CXRGAN_OFFLINE=1``, ``HF_HUB_OFFLINE=1``), or a
local state dict; the RGB kernels of the first convolution are summed for gray input."""
from __future__ import annotations

import os
import re
import urllib.error
from pathlib import Path
from typing import Iterable

import torch
import torch.nn as nn

from foundation.checkpoints import load_checkpoint, save_checkpoint
from foundation.errors import UserError, cli_command

from .backbones import TIMM_PREFIX, get_spec, import_timm

OFFLINE_VARIABLES = ("CXRGAN_OFFLINE", "HF_HUB_OFFLINE")  # either set to 1 (true, yes, on): no downloads


def adapt_tensor(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """A conv kernel ``(O, 3, k, k)`` summed over its input channels to ``(O, 1, k, k)``
    (or split evenly over ``dst``'s channels): a gray image ``g`` then gives the response the RGB
    kernel gives to ``(g, g, g)``."""
    if src.dim() != 4 or src.shape[1] != 3 or dst.shape[1] == 3 or src.shape[0] != dst.shape[0] \
            or src.shape[2:] != dst.shape[2:]:
        return src
    total = src.sum(1, keepdim=True)
    return total.expand(-1, dst.shape[1], -1, -1) / dst.shape[1]


def offline() -> str | None:
    """The variable that forbids downloads (``--offline`` sets ``CXRGAN_OFFLINE=1``; Hugging Face's
    ``HF_HUB_OFFLINE`` counts too), or None when the network may be used."""
    return next((name for name in OFFLINE_VARIABLES
                 if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")), None)


def checkpoints_dir() -> Path:
    """``torch.hub``'s cache of weight files: ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch`` by default)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_weights(name: str):
    """The default ImageNet weights entry (``torchvision.models.Weights``) of torchvision model ``name``."""
    from torchvision.models import get_model_weights
    try:
        return get_model_weights(name).DEFAULT
    except (ValueError, KeyError) as e:
        raise UserError(f"backbone '{name}' has no ImageNet weights in torchvision; use --pretrained none") from e


def imagenet_file(name: str) -> Path:
    """Where torchvision keeps ``name``'s default ImageNet weights: ``$TORCH_HOME/hub/checkpoints/<file of its URL>``."""
    return checkpoints_dir() / os.path.basename(torchvision_weights(name).url)


def imagenet_state_dict(name: str, progress: bool = True) -> dict:
    """The ImageNet state dict of torchvision model ``name``: the cached file, else downloaded from the URL
    torchvision's weights API gives into ``torch.hub``'s cache (its hash checked), unless :func:`offline`."""
    url, path = torchvision_weights(name).url, imagenet_file(name)
    if not path.is_file() and offline():
        raise UserError(f"{path}: ImageNet weights for {name} are not there and {offline()}=1 forbids downloading "
                        f"them; fetch them on a machine with internet (`{cli_command()} fetch-weights {name}`) and "
                        f"copy them to that path, or download {url} there (or set $TORCH_HOME), or use --pretrained none")
    state = download_state_dict(url, progress)
    if name.startswith("densenet"):  # old-style keys 'norm.1' -> 'norm1', as torchvision's own loader does
        pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
        state = {(pattern.sub(r"\1\2", k) if pattern.match(k) else k): v for k, v in state.items()}
    return state


def download_state_dict(url: str, progress: bool = True) -> dict:
    """``torch.hub.load_state_dict_from_url``: the file of ``url`` in ``torch.hub``'s cache, downloaded there
    first when missing (with a progress bar, the hash in its name checked; a failed download leaves nothing),
    loaded as tensors only. Failures are one-line :class:`UserError` s."""
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=progress, check_hash=True,
                                                  weights_only=True)
    except urllib.error.URLError as e:  # also HTTP errors
        raise UserError(f"{url}: could not download ({e.reason}); check the connection, or fetch the file on a machine "
                        f"with internet and copy it to {checkpoints_dir()}, or use --pretrained none") from e
    except OSError as e:  # time-outs, a full disk
        raise UserError(f"{url}: could not download into {checkpoints_dir()} ({e.strerror or e}); check the connection "
                        "and the free disk space, or use --pretrained none") from e
    except RuntimeError as e:  # a hash that does not match, a damaged file
        raise UserError(f"{url}: {str(e).splitlines()[0]}; the download was damaged or is not these weights: "
                        "try again, or use --pretrained none") from e


def timm_folder() -> Path:
    """Where this toolkit keeps timm ImageNet weights for use offline: ``$TORCH_HOME/hub/checkpoints/timm``."""
    return checkpoints_dir() / "timm"


def timm_local_file(name: str) -> Path | None:
    """``$TORCH_HOME/hub/checkpoints/timm/<model>.safetensors`` (or ``.pth``) of ``timm:<model>``, if there."""
    model = name[len(TIMM_PREFIX):]
    return next((p for p in (timm_folder() / f"{model}.safetensors", timm_folder() / f"{model}.pth") if p.is_file()), None)


def timm_imagenet_weights(name: str) -> tuple[dict, str]:
    """The ImageNet state dict of ``timm:<model>`` (without its classifier) and where it came from: the local
    file of :func:`timm_local_file`, else through timm's own download and cache (Hugging Face hub or URL)
    unless :func:`offline`. A model timm lists no weights for, or a failed download, is a :class:`UserError`."""
    path = timm_local_file(name)
    if path is not None:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path)), str(path)
        return load_checkpoint(path), str(path)
    model = name[len(TIMM_PREFIX):]
    timm = import_timm(name)
    cfg = timm.models.get_pretrained_cfg(model)
    hub, url = (cfg.hf_hub_id, cfg.url) if cfg else (None, None)
    target = timm_folder() / f"{model}.safetensors"
    if not (hub or url):
        raise UserError(f"{target}: timm lists no ImageNet weights for {name}; put a state dict there, "
                        "or use --pretrained none")
    if offline():
        where = f"model.safetensors of https://huggingface.co/{hub}" if hub else url
        raise UserError(f"{target}: ImageNet weights for {name} are not there and {offline()}=1 forbids downloading "
                        f"them; fetch them on a machine with internet (`{cli_command()} fetch-weights {name}`) and "
                        f"copy them to {timm_folder()}, or download {where} to that path (or set $TORCH_HOME), "
                        "or use --pretrained none")
    try:
        state = timm.create_model(model, pretrained=True, num_classes=0).state_dict()
    except Exception as e:  # timm's sources raise many kinds: URLError, OSError, huggingface_hub's HTTP errors
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"timm could not fetch the ImageNet weights of {name} from {hub or url} ({reason}); check the "
                        f"connection, or put a state dict at {target}, or use --pretrained none") from e
    return state, f"timm:{hub or url}"


def imagenet_weights(name: str) -> tuple[dict, str]:
    """The ImageNet state dict of backbone ``name`` (torchvision or ``timm:``), downloaded into the cache when
    it is not there and the network may be used, and the file or source it came from."""
    if not name.startswith(TIMM_PREFIX):
        return imagenet_state_dict(name), str(imagenet_file(name))
    return timm_imagenet_weights(name)


def fetch_weights(names: Iterable[str]) -> list[tuple[str, Path]]:
    """Stage the ImageNet weights of each backbone in ``names`` where ``--pretrained imagenet`` reads them
    without a network: torchvision's in ``torch.hub``'s cache, timm's as ``timm/<model>.pth`` beside them. Copy
    ``$TORCH_HOME/hub/checkpoints`` to an air-gapped machine afterwards. Returns ``(name, file)`` pairs."""
    if offline():
        raise UserError(f"fetch-weights downloads, and {offline()}=1 forbids it; run it on a machine with internet")
    staged = []
    for name in names:
        if get_spec(name).source == "own":
            raise UserError(f"backbone '{name}' has no ImageNet weights; it trains from scratch")
        if not name.startswith(TIMM_PREFIX):
            imagenet_state_dict(name)
            staged.append((name, imagenet_file(name)))
        elif (path := timm_local_file(name)) is not None:
            staged.append((name, path))
        else:
            state, _ = timm_imagenet_weights(name)
            path = timm_folder() / f"{name[len(TIMM_PREFIX):]}.pth"
            save_checkpoint(state, path)
            staged.append((name, path))
    return staged


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
