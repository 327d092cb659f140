"""Configuration of the CycleGAN stage. The defaults in code are the paper's (Zhu et al. 2017,
"Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial Networks"); YAML files in
``configs/`` only override them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from augment.data import DataConfig
from augment.transforms import AugmentConfig
from foundation.errors import cli_command


@dataclass
class ModelConfig:
    """ResNet generator and PatchGAN discriminator sizes (one channel in and out)."""
    ngf: int = 64          # generator filters in the first layer
    ndf: int = 64          # discriminator filters in the first layer
    n_blocks: int = 9      # residual blocks of the generator
    n_layers_d: int = 3    # strided layers of the PatchGAN; 3 gives 70x70 receptive fields
    init_std: float = 0.02  # weights drawn from N(0, init_std)
    # the generator's two upsamplings: "transposed" (the paper's), "subpixel" (the same transposed convolutions
    # computed as conv + pixel_shuffle: same parameters, same numbers) or "resize" (nearest-neighbour resize,
    # then a 3x3 convolution: Odena et al. 2016, "Deconvolution and Checkerboard Artifacts"; other parameters)
    upsample: Literal["transposed", "subpixel", "resize"] = "transposed"

    def check(self):
        if min(self.ngf, self.ndf, self.n_layers_d) < 1 or self.n_blocks < 0:
            raise ValueError("model.ngf, ndf and n_layers_d must be >= 1 and n_blocks >= 0")


@dataclass
class JitterConfig:
    """What the CycleGAN trains on: each image enlarged by ``load_scale`` and cropped back to
    ``data.size`` at a random place (Zhu et al.: load 286, crop 256; 1.0 turns it off). Nothing else:
    no intensity jitter, which the generator would learn to imitate as part of the covid films' look,
    and no horizontal flip, since on a chest X-ray the heart sits on the left."""
    load_scale: float = 286 / 256

    def load_size(self, size: int) -> int:
        return round(size * self.load_scale)

    def check(self):
        if self.load_scale < 1:
            raise ValueError(f"augment.load_scale enlarges before the crop: it must be >= 1, got {self.load_scale}")


@dataclass
class TrainConfig:
    """Optimisation, schedule, logging and checkpoints of ``gan-train``."""
    domain_a: str = "normal"       # class translated from (domain A)
    domain_b: str = "covid"        # class translated to (domain B)
    domain_a_sources: tuple[str, ...] = ()  # `source` values (manifest column) whose domain_a films form domain A;
    domain_b_sources: tuple[str, ...] = ()  # likewise for B; empty: every source
    # translation that may only change the lungs (cyclegan/constraint.py, masks of data.lungseg_run): "composite"
    # blends the generator's output with its input through the feathered lung mask, "loss" adds the L1 change
    # outside it (lambda_outside); with either, the discriminators judge the lungs only (lung_view)
    lung_constraint: Literal["none", "composite", "loss"] = "none"
    lambda_outside: float = 10.0   # weight of the change outside the lungs (lung_constraint=loss; joliGEN's out-of-mask loss)
    lung_dilate: float = 0.02      # the lung mask grows by this share of the side before it is feathered
    lung_feather: float = 0.01     # Gaussian sigma of the feathering, as a share of the side
    diff_augment: bool = False     # DiffAugment (Zhao et al. 2020): translation and cutout of every discriminator input
    batch_size: int = 1            # per process
    epochs: int = 200              # an epoch is max(|A|, |B|) images; ignored when steps is set
    steps: Optional[int] = None    # total optimisation steps; overrides epochs
    decay_start: float = 0.5       # share of the run at constant lr before it decays linearly to 0
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lambda_cycle: float = 10.0     # weight of the cycle-consistency L1 loss
    lambda_identity: float = 0.5   # identity loss weight, as a share of lambda_cycle
    pool_size: int = 50            # image history for the discriminators (0: none)
    bf16: bool = True              # bf16 autocast on CUDA
    cpu_bf16: bool = False         # also on a CPU that computes bf16 natively (AVX512-BF16, AMX): about 2x there
    channels_last: bool = False    # channels_last memory format (CUDA only). Off: on an H100, NCHW trained 5-21 %
                                   # faster at batch 1, 35 % at batch 8, and inferred 45 % faster; instance norm and
                                   # reflection padding convert channels_last back (benchmarks/RESULTS.md)
    cuda_graph: bool = False       # capture the whole step in a CUDA graph and replay it (CUDA, one process)
    cudnn_benchmark: bool = False  # let cuDNN time its kernels at the first steps (CUDA only; a resumed run
                                   # may then differ from a straight one in the last bits)
    log_every: int = 100           # steps between loss read-outs (the only host syncs)
    image_every: int = 1000        # steps between TensorBoard image grids
    checkpoint_every: int = 5000   # steps between checkpoints (one is always written at the end)
    eval_every: int = 0            # steps between quality measures (gan-eval); 0 turns them off
    eval_images: int = 200         # domain-A images translated (and domain-B images compared) per periodic measure
    device_cache_share: float = 0.5  # GPU memory share both domains may take; beyond, batches stream from the host
    tensorboard: bool = True

    def check(self):
        if self.domain_a == self.domain_b:
            raise ValueError(f"train.domain_a and train.domain_b must differ, both are {self.domain_a!r}")
        if self.batch_size < 1 or self.epochs < 1 or (self.steps is not None and self.steps < 1):
            raise ValueError("train.batch_size, epochs and steps must be >= 1")
        if self.lr <= 0 or not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"train.lr must be > 0 (got {self.lr}) and beta1, beta2 in [0, 1)")
        if not 0 <= self.decay_start <= 1:
            raise ValueError(f"train.decay_start is a share of the run in [0, 1], got {self.decay_start}")
        if min(self.log_every, self.image_every, self.checkpoint_every) < 1 or self.eval_every < 0:
            raise ValueError("train.log_every, image_every and checkpoint_every must be >= 1, eval_every >= 0")
        if not 0 <= self.device_cache_share <= 1:
            raise ValueError("train.device_cache_share is a share of the GPU's memory in [0, 1], "
                             f"got {self.device_cache_share}")
        if self.pool_size < 0 or self.eval_images < 1:
            raise ValueError("train.pool_size must be >= 0 and eval_images >= 1")
        if self.lambda_outside < 0 or not (0 <= self.lung_dilate <= 0.25 and 0 <= self.lung_feather <= 0.25):
            raise ValueError("train.lambda_outside must be >= 0, lung_dilate and lung_feather shares of the side in "
                             "[0, 0.25]")

    def feathering(self, size: int) -> tuple[int, float]:
        """The lung mask's growth in pixels and the feathering's sigma in pixels at images of side ``size``."""
        return round(self.lung_dilate * size), self.lung_feather * size


def light_augment() -> AugmentConfig:
    """Small geometric and intensity changes that make repeated translations of one source differ."""
    return AugmentConfig(crop_scale=(0.9, 1.0), degrees=4.0, translate=0.03, brightness=0.04,
                         contrast=0.04, gamma=(0.95, 1.05))


@dataclass
class SynthConfig:
    """``synthesize``: batch size and the augmentation of sources drawn more than once."""
    batch_size: int = 32
    augment: AugmentConfig = field(default_factory=light_augment)

    def check(self):
        if self.batch_size < 1:
            raise ValueError("synth.batch_size must be >= 1")


@dataclass
class GanConfig:
    data: DataConfig = field(default_factory=DataConfig)
    augment: JitterConfig = field(default_factory=JitterConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)

    def check(self):
        if self.data.size % 4:
            raise ValueError(f"data.size must be a multiple of 4 (the generator halves it twice), got {self.data.size}")
        if self.data.uses_lungs:
            raise ValueError(f"{self.data.lung_settings}: the CycleGAN translates whole images; lung cropping and "
                             "masking are for a classifier's data (classify-train), drop them here (to change only "
                             "the lungs, set train.lung_constraint=composite)")
        if self.train.lung_constraint != "none" and not self.data.lungseg_run:
            raise ValueError(f"train.lung_constraint={self.train.lung_constraint} needs the lung masks of "
                             "data.lungseg_run, a lungseg-train run folder or checkpoint (train one with "
                             f"`{cli_command()} lungseg-train`)")
        for name in (self.train.domain_a, self.train.domain_b):
            if name not in self.data.classes:
                raise ValueError(f"train domain {name!r} is not one of data.classes ({', '.join(self.data.classes)})")
