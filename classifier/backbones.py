"""Backbones as feature extractors: ``(B, in_chans, H, W) -> (B, C, h, w)``, the last convolutional
feature map, with the original classifier removed.

A registry in timm's manner maps a name to a constructor, its default input size and how to cut the
torchvision model at its global pooling. Any other torchvision classification model is cut by the
same rules (``.features`` + classifier, or children up to ``avgpool``/``fc``). ``timm:<name>`` is any
model of the optional timm package (e.g. ``timm:inception_resnet_v2``, ``timm:xception``), built with
``in_chans`` input channels and cut at its ``forward_features``.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch.nn as nn

from foundation.errors import UserError

TIMM_PREFIX = "timm:"
TIMM_INSTALL = 'pip install -e ".[timm]"'


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: its name, default input size and where it comes from (``torchvision``,
    ``timm`` or ``own``); feature channels are found on build."""
    name: str
    input_size: int = 224
    source: str = "torchvision"


REGISTRY = {s.name: s for s in (
    BackboneSpec("efficientnet_b0"), BackboneSpec("resnet50"), BackboneSpec("vgg16"),
    BackboneSpec("vgg19"), BackboneSpec("resnet18"), BackboneSpec("densenet121"),
    BackboneSpec("squeezenet1_1"), BackboneSpec("inception_v3", input_size=299),
    BackboneSpec("shallow", source="own"),
)}


def list_backbones(all_torchvision: bool = False) -> list[str]:
    """Registered names; with ``all_torchvision`` also every torchvision classification model."""
    names = list(REGISTRY)
    if all_torchvision:
        import torchvision  # imported when needed: it takes a second or two, which the shallow CNN need not wait
        names += [n for n in torchvision.models.list_models(module=torchvision.models) if n not in REGISTRY]
    return names


def get_spec(name: str) -> BackboneSpec:
    if name.startswith(TIMM_PREFIX):
        model = name[len(TIMM_PREFIX):]
        timm = import_timm(name)
        if not timm.is_model(model):
            raise UserError(f"unknown timm model '{model}' in backbone '{name}'; list them with "
                            "python -c \"import timm; print(timm.list_models())\"")
        size = timm.models.get_pretrained_cfg(model)
        return BackboneSpec(name, size.input_size[-1] if size else 224, "timm")
    if name in REGISTRY:
        return REGISTRY[name]
    import torchvision
    if name in torchvision.models.list_models(module=torchvision.models):
        return BackboneSpec(name, input_size=299 if "inception" in name else 224)
    raise UserError(f"unknown backbone '{name}'; choose one of {', '.join(REGISTRY)}, "
                    "any torchvision classification model name or timm:<any timm model>")


def import_timm(name: str):
    """The timm module, or a :class:`UserError` saying how to install it."""
    try:
        import timm
    except ImportError as e:
        raise UserError(f"backbone '{name}' needs the timm package; install it with {TIMM_INSTALL}") from e
    return timm


class TimmFeatures(nn.Module):
    """A timm model's ``forward_features``: ``(B, in_chans, H, W) -> (B, C, h, w)``; ``model`` is the
    whole timm model (built without a classifier), so its state dict keys are timm's under ``model.``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_features(x)


def timm_model(name: str, in_chans: int) -> nn.Module:
    """timm model ``timm:<model>`` with random weights, ``in_chans`` input channels and no classifier."""
    return import_timm(name).create_model(name[len(TIMM_PREFIX):], pretrained=False, in_chans=in_chans,
                                          num_classes=0)


class ShallowCNN(nn.Sequential):
    """A small CNN trained from scratch: ``depth`` blocks of conv-BN-ReLU, max-pooling between them.

    ``(B, 1, H, W) -> (B, width * 2**(depth-1), H / 2**(depth-1), W / 2**(depth-1))``.
    """

    def __init__(self, in_chans: int = 1, width: int = 32, depth: int = 4):
        layers, c = OrderedDict(), in_chans
        for i in range(depth):
            out = width * 2 ** i
            layers[f"conv{i}"] = nn.Conv2d(c, out, 3, padding=1, bias=False)
            layers[f"bn{i}"] = nn.BatchNorm2d(out)
            layers[f"relu{i}"] = nn.ReLU(inplace=True)
            if i < depth - 1:
                layers[f"pool{i}"] = nn.MaxPool2d(2)
            c = out
        super().__init__(layers)
        self.out_channels = c


def torchvision_model(name: str) -> nn.Module:
    """The torchvision model with random weights (inception without its auxiliary classifier)."""
    import torchvision
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("inception_v3", "googlenet") else {}
    return torchvision.models.get_model(name, weights=None, **kwargs)


_NOT_FEATURES = {"avgpool", "fc", "dropout", "AuxLogits", "aux1", "aux2", "classifier", "head", "heads"}


def cut_features(name: str, model: nn.Module) -> nn.Module:
    """The part of a torchvision ``model`` that computes its last convolutional feature map.

    The modules are shared with ``model``, so its state dict (and pretrained weights) reach them.
    """
    if hasattr(model, "features") and isinstance(model.features, nn.Module):
        feats = model.features
        if name.startswith("vgg"):  # drop the last max-pool: a 14x14 map for CAM, as Zhou et al. did
            return nn.Sequential(OrderedDict(list(feats.named_children())[:-1]))
        if name.startswith("densenet"):  # densenet applies a ReLU after its last norm in forward()
            return nn.Sequential(OrderedDict(features=feats, relu=nn.ReLU()))
        return feats
    if hasattr(model, "layers") and name.startswith("mnasnet"):
        return model.layers
    if hasattr(model, "fc"):
        kept = [(n, m) for n, m in model.named_children() if n not in _NOT_FEATURES and m is not None]
        return nn.Sequential(OrderedDict(kept))
    raise UserError(f"backbone '{name}' has no convolutional feature map this toolkit can cut out "
                    f"(vision transformers are not supported); choose one of {', '.join(REGISTRY)}")


def has_normalisation(module: nn.Module) -> bool:
    """Whether ``module`` holds a batch, instance, group or layer normalisation layer (VGG and SqueezeNet
    hold none)."""
    kinds = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    return any(isinstance(m, kinds) for m in module.modules())


def first_conv(module: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """``(parent, attribute, conv)`` of the first ``Conv2d`` of ``module``."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            parent_name, _, attr = name.rpartition(".")
            return module.get_submodule(parent_name), attr, m
    raise UserError("backbone has no Conv2d layer to adapt to grayscale input")


def adapt_in_chans(module: nn.Module, in_chans: int) -> None:
    """Replace the first convolution by one with ``in_chans`` input channels (weights set on loading)."""
    parent, attr, conv = first_conv(module)
    if conv.in_channels == in_chans:
        return
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
    setattr(parent, attr, new)
