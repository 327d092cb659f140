"""Reading GAN checkpoints: config and generator out (:func:`augment.runtime.resolve_run_file` finds them)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import yaml

from augment.config import load_config
from augment.errors import UserError
from augment.runtime import load_checkpoint

from .config import GanConfig
from .networks import ResnetGenerator

CHECKPOINT_NAME = "checkpoint.pt"


def config_from_dict(values: dict) -> GanConfig:
    """A :class:`GanConfig` from the plain dict a checkpoint stores (checked like a YAML file)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(values, f)
        f.flush()
        return load_config(GanConfig, f.name)


def read_gan_checkpoint(path: Path, resume: bool = False) -> tuple[dict, GanConfig]:
    """The checkpoint dict (loaded with ``weights_only``) and its run's config.

    A checkpoint from before per-process state (no ``ranks``) trained with the classifier's
    augmentation: its generators still translate, but it cannot ``resume`` exactly."""
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise UserError(f"{path}: not a GAN checkpoint of this toolkit (no config/model); pass one written "
                        "by `python cli.py gan-train`")
    values = state["config"]
    if "ranks" not in state:
        if resume:
            raise UserError(f"{path}: written by an earlier gan-train (another augmentation, one process's state); "
                            "it can still synthesize and be evaluated, but not resume: start a new run")
        values = {k: v for k, v in values.items() if k != "augment"}
    return state, config_from_dict(values)


def load_generator_ab(path: Path, device: torch.device) -> tuple[ResnetGenerator, GanConfig, dict]:
    """The A→B generator of a checkpoint, in eval mode on ``device``, with the config and checkpoint dict."""
    state, cfg = read_gan_checkpoint(path)
    generator = ResnetGenerator(cfg.model.ngf, cfg.model.n_blocks)
    prefix = "ab."
    weights = {k[len(prefix):]: v for k, v in state["model"]["generators"].items() if k.startswith(prefix)}
    generator.load_state_dict(weights)
    return generator.to(device).eval(), cfg, state

