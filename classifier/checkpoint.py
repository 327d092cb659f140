"""Find and load a trained classifier from a run folder or checkpoint file."""
from __future__ import annotations

from pathlib import Path

import torch

from augment.data import DataConfig
from augment.errors import UserError
from augment.runtime import latest_run, load_checkpoint

from .model import Classifier, create_model


def find_checkpoint(checkpoint: str | Path | None, out: str | Path = "runs") -> Path:
    """``best.pt`` of a run folder, a checkpoint file as given, or (None) the latest classifier run's."""
    if checkpoint is None:
        run = latest_run(out, "classifier")
        if run is None:
            raise UserError(f"{Path(out) / 'classifier'}: no classifier run yet; run `python cli.py classify-train` "
                            "or give --checkpoint")
        checkpoint = run
    path = Path(checkpoint)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise UserError(f"{path}: no best.pt or last.pt here; give a classifier run folder or a checkpoint file")
    return path


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
