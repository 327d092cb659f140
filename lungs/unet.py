"""U-Net (Ronneberger et al. 2015), small: batch norm, bilinear upsampling, any input size."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def double_conv(cin: int, cout: int) -> nn.Sequential:
    """Two 3×3 convolutions, each followed by batch norm and ReLU; the size is kept."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """Encoder of ``depth`` levels (width doubling, 2×2 max pooling between them) and a decoder that
    upsamples bilinearly and concatenates the encoder's features of the same level.

    Args:
        width: channels of the first level.
        depth: levels; the input side should be at least ``2 ** (depth - 1)``.
    Shape:
        images ``(B, in_chans, H, W)`` in [0, 1] → logits ``(B, 1, H, W)`` (any ``H, W``: odd sizes are upsampled to the
        encoder's size of that level).
    """

    def __init__(self, in_chans: int = 1, width: int = 16, depth: int = 4):
        super().__init__()
        chans = [width * 2 ** i for i in range(depth)]
        self.down = nn.ModuleList([double_conv(cin, cout) for cin, cout in zip([in_chans, *chans[:-1]], chans)])
        self.up = nn.ModuleList([double_conv(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(depth - 1))])
        self.head = nn.Conv2d(chans[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 2 - 1
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.head(x)

