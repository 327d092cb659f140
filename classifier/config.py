"""Configuration of classifier training and evaluation (defaults in code; YAML overrides them)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from augment.data import DataConfig
from augment.transforms import AugmentConfig

from .backbones import TIMM_PREFIX, list_backbones


@dataclass
class ModelConfig:
    backbone: str = "efficientnet_b0"
    pretrained: str = "none"          # none | imagenet | path to a state dict
    head: Literal["linear", "lstm", "gru"] = "linear"
    dropout: float = 0.2
    input_size: Optional[int] = None  # default: the backbone's own (224; inception 299)
    width: int = 32                   # first-block channels of the shallow CNN

    @property
    def from_scratch(self) -> bool:
        """True when the weights start random (no ImageNet or other pretrained weights)."""
        return self.pretrained in ("none", "")

    def check(self):
        if (not self.backbone.startswith(TIMM_PREFIX) and self.backbone not in list_backbones()  # torchvision's last
                and self.backbone not in list_backbones(all_torchvision=True)):
            raise ValueError(f"model.backbone: unknown backbone {self.backbone!r}; choose one of "
                             f"{', '.join(list_backbones())}, any torchvision classification model name "
                             "or timm:<any timm model> (checked when the model is built)")


@dataclass
class TrainConfig:
    epochs: int = 30
    head_epochs: int = 3              # phase 1 (pretrained only): head alone on the frozen backbone
    batch_size: int = 32
    lr: float = 1e-3                  # phase 1 / from scratch
    finetune_lr_factor: float = 0.1   # phase 2 learning rate = lr * this
    weight_decay: float = 0.05
    schedule: Literal["cosine", "plateau"] = "cosine"
    warmup_epochs: float = 1.0
    warmup_epochs_unnormalised: float = 12.0  # the least warmup from scratch of a backbone without normalisation
                                              # layers (VGG): a short one leaves its ReLUs dead (configs/classify-train.yaml)
    min_lr_factor: float = 0.01       # cosine floor, share of the phase's lr
    plateau_patience: int = 3         # plateau: epochs without a better val macro-F1 before lr x plateau_factor
    plateau_factor: float = 0.1
    label_smoothing: float = 0.1
    balance: Literal["loss", "sampler", "none"] = "loss"  # class-weighted loss or class-balanced batches
    class_weight_power: float = 1.0   # balance loss: class c weighs (n / (classes * n_c)) ** this; 0.5 tempers
                                      # the weights (square root), 1 fully balances the classes
    ema: float = 0.0                  # decay of an exponential moving average of weights (0: off)
    mixup: float = 0.0                # Beta(alpha, alpha) of mixup (0: off)
    cutmix: float = 0.0               # Beta(alpha, alpha) of cutmix (0: off); with both, one per batch at random
    patience: int = 8                 # early stopping: epochs without a better val macro-F1, counted after
                                      # the warmup
    bf16: bool = True                 # autocast on CUDA
    cpu_bf16: bool = False            # also on a CPU with native bf16 (AVX512-BF16, AMX): about 2x faster there
    channels_last: bool = True       # on CUDA
    compile: bool = False
    cudnn_benchmark: bool = False     # let cuDNN time its kernels at the first steps (CUDA only; a resumed run
                                      # may then differ from a straight one in the last bits)
    device_cache_share: float = 0.5   # GPU memory share the image cache may take; beyond, batches stream from the host
    log_every: int = 20               # steps between logged losses
    tensorboard: bool = True
    time_budget: str = ""             # e.g. "10m", "600s", "1.5h": epochs (and the schedule) chosen from the first
                                      # steps' measured speed so the whole run, validation included, ends in time;
                                      # "usual": the usual torchvision recipe's time here (classifier.usual_budget)

    def budget_seconds(self) -> float | None:
        """``time_budget`` in seconds, None when unset or ``usual`` (measured when the data is known)."""
        if not self.time_budget or self.time_budget == "usual":
            return None
        number, unit = self.time_budget[:-1], self.time_budget[-1]
        scale = {"s": 1, "m": 60, "h": 3600}.get(unit)
        try:
            value = float(number) * scale if scale else float(self.time_budget)
        except ValueError:
            value = None
        if value is None or not (0 < value < float("inf")):
            raise ValueError("train.time_budget is a duration such as 600s, 10m or 1.5h, or usual, got "
                             f"{self.time_budget!r}")
        return value

    def check(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("train.epochs and train.batch_size must be at least 1")
        if not 0 <= self.ema < 1:
            raise ValueError(f"train.ema is a decay in [0, 1), got {self.ema}")
        if not 0 <= self.device_cache_share <= 1:
            raise ValueError("train.device_cache_share is a share of the GPU's memory in [0, 1], "
                             f"got {self.device_cache_share}")
        if min(self.lr, self.finetune_lr_factor, self.mixup, self.cutmix, self.warmup_epochs,
               self.warmup_epochs_unnormalised, self.class_weight_power) < 0:
            raise ValueError("train.lr, finetune_lr_factor, mixup, cutmix, warmup_epochs, "
                             "warmup_epochs_unnormalised and class_weight_power must be >= 0")
        self.budget_seconds()


MAX_TTA = 8  # the shifts classifier.inference.shifted_views knows


@dataclass
class EvalConfig:
    batch_size: int = 64
    bootstrap: int = 1000             # resamples of the test patients for 95 % intervals
    ci_level: float = 0.95
    positive_class: str = "covid"     # binary view: this class against the rest
    specificity: float = 0.9          # threshold chosen on validation for this specificity (Minaee et al.)
    cam_method: Literal["cam", "gradcam", "gradcampp"] = "gradcampp"
    tta: int = 0                      # test-time augmentation: the mean probabilities of the film and this many
                                      # copies shifted by about 3 % of the side (0 to 8), in validation and evaluation

    def check(self):
        if not 0 <= self.tta <= MAX_TTA:
            raise ValueError(f"eval.tta: the number of shifted copies, 0 to {MAX_TTA}; got {self.tta}")


@dataclass
class ClassifierConfig:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
