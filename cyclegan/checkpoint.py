"""GAN checkpoints: writing them with their sha256 beside them, reading the config and the generator
back (:func:`foundation.runs.resolve_run_file` finds them)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
import yaml

from augment.data import file_sha256
from foundation.checkpoints import load_checkpoint, refuse_other_layout, save_checkpoint
from foundation.config import load_config
from foundation.errors import UserError, cli_command
from foundation.files import write_text_atomic

from .config import GanConfig
from .inference import memory_format
from .networks import ResnetGenerator, drop_cancelled_biases

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_LAYOUT = 2
"""What a checkpoint holds. 0 (no ``layout`` key, no ``ranks``): one process's state and the classifier's
augmentation config. 1 (no ``layout`` key): each process's pools and RNG states, biases on the
convolutions before instance norms, LambdaLR schedulers. 2: no such biases, the step count in ``model``
(the learning rate follows from it). Every layout synthesizes and is evaluated; only the current one
resumes."""


def config_from_dict(values: dict) -> GanConfig:
    """A :class:`GanConfig` from the plain dict a checkpoint stores (checked like a YAML file)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(values, f)
        f.flush()
        return load_config(GanConfig, f.name)


def save_gan_checkpoint(state: dict, path: Path) -> None:
    """Write ``state`` (stamped with :data:`CHECKPOINT_LAYOUT`) atomically to ``path``, then its sha256,
    size and modification time to ``<stem>.sha256.json`` beside it, so ``synthesize`` need not hash it."""
    save_checkpoint({**state, "layout": CHECKPOINT_LAYOUT}, path)
    stat = path.stat()
    write_text_atomic(sha256_path(path), json.dumps({"sha256": file_sha256(path), "size": stat.st_size,
                                                     "mtime_ns": stat.st_mtime_ns}) + "\n")


def sha256_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(f"{checkpoint.stem}.sha256.json")


def checkpoint_sha256(path: Path) -> str:
    """The checkpoint file's sha256: the one stored when it was saved while the file's size and
    modification time are still those stored with it, else (no record, or a file replaced or copied
    since) hashed now."""
    try:
        stored = json.loads(sha256_path(path).read_text())
        stat = path.stat()
        if (stored["size"], stored["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
            return stored["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return file_sha256(path)


def read_gan_checkpoint(path: Path, resume: bool = False, mmap: bool = False) -> tuple[dict, GanConfig]:
    """The checkpoint dict (loaded with ``weights_only``; with ``mmap`` its tensors are read from disk
    only when used) and its run's config. ``resume`` refuses a layout other than the current one."""
    state = load_checkpoint(path, mmap=mmap)
    if not isinstance(state, dict) or "config" not in state or "generators" not in (state.get("model") or {}):
        what = ("a classifier checkpoint (classify-train)" if isinstance(state, dict) and "classes" in state else
                "a lung segmenter checkpoint (lungseg-train)" if isinstance(state, dict) and "input" in state else
                "not a GAN checkpoint of this toolkit (no config and generators)")
        raise UserError(f"{path}: {what}; pass a run folder or checkpoint.pt written by `{cli_command()} gan-train`")
    values = state["config"]
    layout = state.get("layout", 1 if "ranks" in state else 0)
    if resume:
        refuse_other_layout(path, layout, CHECKPOINT_LAYOUT, "gan-train")
    if "ranks" not in state:
        values = {k: v for k, v in values.items() if k != "augment"}
    model = dict(values.get("model", {}))
    if "subpixel_upsample" in model:  # before model.upsample, a flag chose between the transposed forms
        model["upsample"] = "subpixel" if model.pop("subpixel_upsample") else "transposed"
        values = {**values, "model": model}
    return state, config_from_dict(values)


def load_generator_ab(path: Path, device: torch.device) -> tuple[ResnetGenerator, GanConfig, dict]:
    """The A→B generator of a checkpoint, in eval mode on ``device`` (channels_last on CUDA when the run
    trained so), with the config and checkpoint dict. Only the generator's tensors are read from disk."""
    state, cfg = read_gan_checkpoint(path, mmap=True)
    generator = ResnetGenerator(cfg.model.ngf, cfg.model.n_blocks, upsample=cfg.model.upsample)
    prefix = "ab."
    weights = {k[len(prefix):]: v for k, v in state["model"]["generators"].items() if k.startswith(prefix)}
    generator.load_state_dict(drop_cancelled_biases(weights, generator))
    return generator.to(device, memory_format=memory_format(cfg.train.channels_last, device)).eval(), cfg, state
