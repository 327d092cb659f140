"""The classifier: gray-channel normalisation, a backbone feature extractor and a head;
``create_model`` builds one by name."""
from __future__ import annotations

import torch
import torch.nn as nn

from foundation.errors import UserError

from .backbones import ShallowCNN, TimmFeatures, adapt_in_chans, cut_features, get_spec, timm_model, torchvision_model
from .heads import HEADS, build_head
from .weights import backbone_keys, imagenet_weights, load_into, load_pretrained


class Classifier(nn.Module):
    """``(B, in_chans, H, W)`` images in [0, 1] -> ``(B, K)`` logits.

    The gray channel is standardised with the training set's mean and std (buffers saved with the
    weights), not ImageNet's RGB statistics. ``cam_layer`` is the backbone output: the last
    convolutional feature map, which the head pools.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, input_size: int, in_chans: int = 1):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.input_size = input_size
        self.register_buffer("mean", torch.full((1, in_chans, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, in_chans, 1, 1), 0.25))

    @property
    def cam_layer(self) -> nn.Module:
        return self.backbone

    def set_normalisation(self, mean: float, std: float) -> None:
        self.mean.fill_(mean)
        self.std.fill_(max(std, 1e-3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone((x - self.mean) / self.std))


def create_model(name: str, num_classes: int, in_chans: int = 1, pretrained: str = "none",
                 head: str = "linear", dropout: float = 0.0, width: int = 32) -> Classifier:
    """A classifier with backbone ``name``.

    Args:
        name: a registered backbone (``list_backbones()``), any torchvision classification model or
            ``timm:<model>`` (any timm model with a convolutional ``forward_features``; needs timm).
        pretrained: ``none`` (random init), ``imagenet`` (torchvision's or timm's file, downloaded into its
            cache under ``$TORCH_HOME`` (timm: its own cache) unless offline, see :mod:`classifier.weights`; the
            first convolution's RGB kernels summed for gray input) or a path to a state dict.
        head: ``linear`` (pooling + linear), ``lstm`` or ``gru`` (feature map as a sequence).
        width: channels of the first block of the ``shallow`` CNN.
    """
    if head not in HEADS:
        raise UserError(f"unknown head '{head}'; choose one of {', '.join(HEADS)}")
    spec = get_spec(name)
    if spec.source == "torchvision":
        full = torchvision_model(name)
        adapt_in_chans(full, in_chans)
        backbone = cut_features(name, full)
    elif spec.source == "timm":
        full = timm_model(name, in_chans)
        backbone = TimmFeatures(full)
    else:
        if pretrained == "imagenet":
            raise UserError(f"backbone '{name}' has no ImageNet weights; use --pretrained none or a state dict path")
        full = backbone = ShallowCNN(in_chans, width)
    if pretrained == "imagenet":
        state, source = imagenet_weights(name)
        load_into(full, state, source, required=backbone_keys(full, backbone))
    elif pretrained not in ("none", "", None):
        load_pretrained(full, backbone, pretrained)
    channels = feature_channels(backbone, in_chans, 96 if spec.input_size >= 299 else 64)
    return Classifier(backbone, build_head(head, channels, num_classes, dropout), spec.input_size, in_chans)


def feature_channels(backbone: nn.Module, in_chans: int, size: int) -> int:
    """Channels of the backbone's feature map ``(1, C, h, w)``, found by one forward pass in eval mode;
    a backbone whose output is not such a map (a vision transformer's tokens) is a :class:`UserError`."""
    was = backbone.training
    backbone.eval()
    with torch.no_grad():
        shape = backbone(torch.zeros(1, in_chans, size, size)).shape
    backbone.train(was)
    if len(shape) != 4:
        raise UserError(f"backbone gives features of shape {tuple(shape)}, not a convolutional feature map "
                        "(B, C, h, w) for the heads and CAMs (vision transformers are not supported); choose a CNN")
    return shape[1]
