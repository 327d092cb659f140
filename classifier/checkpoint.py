"""Load a trained classifier from a checkpoint file."""
from __future__ import annotations

from pathlib import Path

import torch

from augment.data import DataConfig
from augment.lungmask import LungMasker
from foundation.checkpoints import load_checkpoint
from foundation.errors import UserError

from .model import Classifier, create_model

CHECKPOINTS = ("best.pt", "last.pt")  # what a run folder gives, in order of preference
CLASSIFIER_KEYS = {"model", "model_args", "classes", "input_size", "config"}  # what every classifier checkpoint holds


def load_classifier(path: Path, device: torch.device) -> tuple[Classifier, dict]:
    """The model of checkpoint ``path`` on ``device`` in eval mode, and the checkpoint's metadata
    (``classes``, ``input_size``, ``config`` ...)."""
    ckpt = require_classifier(load_checkpoint(path), path)
    model = create_model(pretrained="none", **ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def precision(ckpt: dict) -> dict:
    """``bf16`` and ``cpu_bf16`` of the run, as :func:`classifier.inference.predict` takes them: a model is
    evaluated at the precision its validation predictions (and thresholds) were computed at."""
    train = ckpt["config"]["train"]
    return {"bf16": train.get("bf16", True), "cpu_bf16": train.get("cpu_bf16", False)}


def tta_views(ckpt: dict) -> int:
    """The shifted copies the run averaged over when it chose its epoch and thresholds (``eval.tta``), so it is
    evaluated the same way."""
    return ckpt["config"].get("eval", {}).get("tta", 0)


def data_config(ckpt: dict) -> DataConfig:
    """The data settings (image size, classes, splits) the checkpoint was trained with."""
    saved = ckpt["config"]["data"]
    return DataConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})


def run_data_config(path: Path) -> DataConfig:
    """The data settings of checkpoint ``path``, read without loading its weights (memory-mapped), so a
    caller can build what the run's data needs (its lung segmenter) before loading the model."""
    return data_config(require_classifier(load_checkpoint(path, mmap=True), path))


def require_classifier(ckpt, path: Path) -> dict:
    """``ckpt`` when it is a classifier checkpoint of this toolkit, else a one-line :class:`UserError` (a lung
    segmenter's or a GAN's checkpoint also holds a model and a config, of other keys)."""
    if not isinstance(ckpt, dict) or not CLASSIFIER_KEYS <= ckpt.keys():
        other = ("a lung segmenter checkpoint (lungseg-train)" if isinstance(ckpt, dict) and "input" in ckpt else
                 "a CycleGAN checkpoint (gan-train)" if isinstance(ckpt, dict) and "total_steps" in ckpt else
                 "not a classifier checkpoint of this toolkit")
        raise UserError(f"{path}: {other}; give best.pt or last.pt of a classify-train run")
    return ckpt


def run_lung_masker(ckpt: dict, path: Path, lung_masker: LungMasker | None) -> LungMasker | None:
    """The lung masker the data of checkpoint ``path`` is built with: None for a run on whole images (whatever
    is given), else ``lung_masker``, which must be the segmenter the run was trained with (``ckpt["lung_masker"]``,
    its identity): another one would crop and mask its input otherwise, so it is refused in one line."""
    data = data_config(ckpt)
    if not data.uses_lungs:
        return None
    if lung_masker is None:
        raise UserError(f"{path}: trained with {data.lung_settings}; it needs the lung segmenter of its "
                        f"data.lungseg_run ({data.lungseg_run}) to see its input as it was trained")
    trained = ckpt.get("lung_masker")
    if trained is not None and trained != lung_masker.identity:
        raise UserError(f"{path}: trained on the lung masks of segmenter {trained[:16]}, not of {lung_masker.identity[:16]} "
                        f"(data.lungseg_run {data.lungseg_run}); restore that segmenter's checkpoint or retrain the classifier")
    return lung_masker
