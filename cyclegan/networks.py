"""CycleGAN networks: the ResNet generator of Johnson et al. 2016 as used by Zhu et al. 2017, and the
70x70 PatchGAN discriminator of Isola et al. 2017 ("pix2pix"). Instance norm without affine
parameters, reflection padding, weights from N(0, 0.02) as in the paper.

A convolution directly followed by an affine-free instance norm has no bias: the norm subtracts each
channel's mean, so a constant added per channel cancels out. Only the generator's last convolution
(into tanh) and the discriminator's first (into LeakyReLU) and last (the scores) keep theirs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .constraint import blend


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


def _conv(c_in: int, c_out: int, kernel: int, **kwargs) -> nn.Conv2d:
    """A convolution that an instance norm follows: no bias."""
    return nn.Conv2d(c_in, c_out, kernel, bias=False, **kwargs)


class SubpixelConvTranspose2d(nn.ConvTranspose2d):
    """``ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1)`` computed in the sub-pixel
    form (Shi et al. 2016): a stride-1 2x2 convolution into ``4·c_out`` channels, then ``pixel_shuffle``.
    Same parameters (gathered from the transposed convolution's weight at each call), same numbers,
    without the multiplications by the zeros a transposed convolution inserts.

    Output pixel ``(2i + a, 2j + b)`` takes input rows ``i + dy`` (``dy`` 0 or 1) through kernel row
    1 (a = 0, dy = 0), 2 (a = 1, dy = 0) or 0 (a = 1, dy = 1); a = 0, dy = 1 has no tap. Columns alike.
    ``(B, c_in, H, W)`` → ``(B, c_out, 2H, 2W)``.
    """

    def __init__(self, c_in: int, c_out: int, bias: bool = True):
        super().__init__(c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=bias)

    def subpixel_weight(self) -> torch.Tensor:
        """``(4·c_out, c_in, 2, 2)``, output channel ``4o + 2a + b`` as ``pixel_shuffle`` reads it."""
        w = F.pad(self.weight, (0, 1, 0, 1))  # (c_in, c_out, 4, 4); row and column 3 are the missing taps
        rows = torch.stack([w[:, :, 1::2], w[:, :, 0:3:2].flip(2)], 2)              # (c_in, c_out, a, dy, 4)
        taps = torch.stack([rows[..., 1::2], rows[..., 0:3:2].flip(-1)], -2)        # (c_in, c_out, a, dy, b, dx)
        c_in, c_out = self.weight.shape[:2]
        return taps.permute(1, 2, 4, 0, 3, 5).reshape(4 * c_out, c_in, 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.repeat_interleave(4)
        return F.pixel_shuffle(F.conv2d(F.pad(x, (0, 1, 0, 1)), self.subpixel_weight(), bias), 2)


class ResidualBlock(nn.Module):
    """``x + F(x)`` with F = pad, conv3x3, norm, ReLU, pad, conv3x3, norm; ``(B, C, H, W)`` → same."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), _conv(channels, channels, 3), _norm(channels), nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), _conv(channels, channels, 3), _norm(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def upsampling(c_in: int, c_out: int, form: str) -> list[nn.Module]:
    """Twice the height and width, ``(B, c_in, H, W)`` → ``(B, c_out, 2H, 2W)``, without bias (a norm follows):
    the paper's 3x3 stride-2 transposed convolution, the same in the sub-pixel form, or a nearest-neighbour
    resize then a 3x3 convolution, which weights every output pixel alike and so cannot draw the checkerboard
    of uneven overlaps (Odena et al. 2016)."""
    if form == "transposed":
        return [nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=False)]
    if form == "subpixel":
        return [SubpixelConvTranspose2d(c_in, c_out, bias=False)]
    if form == "resize":
        return [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1), _conv(c_in, c_out, 3)]
    raise ValueError(f"unknown upsampling {form!r}: transposed, subpixel or resize")


class ResnetGenerator(nn.Module):
    """c7s1-ngf, two stride-2 downsamplings, ``n_blocks`` residual blocks at 4·ngf channels, two
    upsamplings (``upsample``: "transposed" as in the paper, "subpixel" for the same in the sub-pixel form,
    "resize" for resize-convolution), c7s1-1 and tanh.

    Input and output ``(B, 1, H, W)`` in [-1, 1]; H and W multiples of 4.
    """

    def __init__(self, ngf: int = 64, n_blocks: int = 9, channels: int = 1, upsample: str = "transposed"):
        super().__init__()
        layers = [nn.ReflectionPad2d(3), _conv(channels, ngf, 7), _norm(ngf), nn.ReLU(inplace=True)]
        for mult in (1, 2):
            layers += [_conv(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1), _norm(ngf * mult * 2),
                       nn.ReLU(inplace=True)]
        layers += [ResidualBlock(ngf * 4) for _ in range(n_blocks)]
        for mult in (4, 2):
            layers += [*upsampling(ngf * mult, ngf * mult // 2, upsample), _norm(ngf * mult // 2),
                       nn.ReLU(inplace=True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN: ``n_layers`` stride-2 4x4 convs, one stride-1 conv, then a 1-channel 4x4 conv.
    With 3 layers each output judges a 70x70 patch.

    Input ``(B, 1, H, W)`` in [-1, 1]; output raw scores ``(B, 1, H', W')`` (30x30 for 256x256).
    """

    def __init__(self, ndf: int = 64, n_layers: int = 3, channels: int = 1):
        super().__init__()
        layers = [nn.Conv2d(channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        mult = 1
        for i in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** i, 8)
            layers += [_conv(ndf * prev, ndf * mult, 4, stride=2 if i < n_layers else 1, padding=1),
                       _norm(ndf * mult), nn.LeakyReLU(0.2, inplace=True)]
        layers += [nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def drop_cancelled_biases(state: dict[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` without the biases of convolutions that ``module`` builds bias-free (those an instance
    norm follows, where a bias cancels out): a state dict of the earlier layout, which had them, then
    loads into ``module`` and computes the same outputs."""
    cancelled = {f"{name}.bias" for name, m in module.named_modules()
                 if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is None}
    return {k: v for k, v in state.items() if k not in cancelled}


def init_normal(module: nn.Module, std: float = 0.02) -> nn.Module:
    """Conv and transposed-conv weights from N(0, std), biases zero (the paper's init)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class Generators(nn.Module):
    """Both generators, run together so one call covers the whole cycle (one DDP forward per step).

    ``ab`` maps domain A to B, ``ba`` maps B to A. Identity inputs ride in the same batch as the
    translation inputs: instance norm works per image, so this changes no number and halves the calls.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ab = init_normal(ResnetGenerator(cfg.ngf, cfg.n_blocks, upsample=cfg.upsample), cfg.init_std)
        self.ba = init_normal(ResnetGenerator(cfg.ngf, cfg.n_blocks, upsample=cfg.upsample), cfg.init_std)

    def forward(self, real_a: torch.Tensor, real_b: torch.Tensor, identity: bool = True,
                weight_a: torch.Tensor | None = None, weight_b: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``real_a``, ``real_b``: ``(B, 1, H, W)``. Returns ``fake_b, fake_a, rec_a, rec_b`` and, with
        ``identity``, ``idt_b = ab(real_b)`` and ``idt_a = ba(real_a)``, each ``(B, 1, H, W)``.

        With blend weights ``weight_a``, ``weight_b`` ``(B, 1, H, W)`` (the feathered lung masks of ``real_a``
        and ``real_b``), every output is :func:`cyclegan.constraint.blend` of a generator's output with that
        generator's input, through the weight of the film it was made from: outside the lungs it is the input.
        """
        n = real_a.shape[0]
        out = {}
        if identity:
            fake_b, idt_b = self.ab(torch.cat([real_a, real_b])).split(n)
            fake_a, idt_a = self.ba(torch.cat([real_b, real_a])).split(n)
            out.update(idt_b=blend(idt_b, real_b, weight_b), idt_a=blend(idt_a, real_a, weight_a))
        else:
            fake_b, fake_a = self.ab(real_a), self.ba(real_b)
        fake_b, fake_a = blend(fake_b, real_a, weight_a), blend(fake_a, real_b, weight_b)
        out.update(fake_b=fake_b, fake_a=fake_a, rec_a=blend(self.ba(fake_b), fake_b, weight_a),
                   rec_b=blend(self.ab(fake_a), fake_a, weight_b))
        return out


class Discriminators(nn.Module):
    """``a`` judges domain-A images, ``b`` domain-B images; one call scores both batches."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.a = init_normal(PatchDiscriminator(cfg.ndf, cfg.n_layers_d), cfg.init_std)
        self.b = init_normal(PatchDiscriminator(cfg.ndf, cfg.n_layers_d), cfg.init_std)

    def forward(self, images_a: torch.Tensor, images_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``(B, 1, H', W')`` of ``images_a`` by ``a`` and of ``images_b`` by ``b``."""
        return self.a(images_a), self.b(images_b)
