"""CycleGAN for unpaired normal ↔ covid X-ray translation: networks, losses, image pool, training,
synthesis of extra training images, and quality measures."""
from .config import GanConfig, ModelConfig, SynthConfig, TrainConfig
from .evaluate import evaluate_gan, measure_translation
from .networks import Discriminators, Generators, PatchDiscriminator, ResnetGenerator
from .synthesize import synthesize
from .train import train_gan

__all__ = ["GanConfig", "ModelConfig", "SynthConfig", "TrainConfig", "evaluate_gan", "measure_translation",
           "Discriminators", "Generators", "PatchDiscriminator", "ResnetGenerator", "synthesize", "train_gan"]
