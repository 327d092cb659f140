"""Load a trained classifier from a checkpoint file."""
from __future__ import annotations

from pathlib import Path

import torch

from augment.data import DataConfig
from augment.errors import UserError
from augment.runtime import load_checkpoint

from .model import Classifier, create_model

CHECKPOINTS = ("best.pt", "last.pt")  # what a run folder gives, in order of preference


def load_classifier(path: Path, device: torch.device) -> tuple[Classifier, dict]:
    """The model of checkpoint ``path`` on ``device`` in eval mode, and the checkpoint's metadata
    (``classes``, ``input_size``, ``config`` ...)."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "model_args" not in ckpt:
        raise UserError(f"{path}: not a classifier checkpoint of this toolkit; give best.pt or last.pt of a classify-train run")
    model = create_model(pretrained="none", **ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def data_config(ckpt: dict) -> DataConfig:
    """The data settings (image size, classes, splits) the checkpoint was trained with."""
    saved = ckpt["config"]["data"]
    return DataConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
