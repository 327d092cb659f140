"""Checkpoints: written atomically, loaded as tensors and plain data only, and the checks a resumed run
makes (its layout, its config)."""
from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path
from typing import Any

import torch

from .config import config_from_dict, edited_keys, load_config
from .errors import UserError


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    A crash or a full disk leaves either the old checkpoint or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch's own file writer reports a full disk as a RuntimeError
        tmp.unlink(missing_ok=True)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"{path}: could not write checkpoint ({reason}); free disk space or choose another --out") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """Load a checkpoint or state dict with ``weights_only=True``: tensors and plain data only. With
    ``mmap`` the file is memory-mapped and a tensor is read from disk only when used.

    A file holding arbitrary Python objects (a pickle that could run code) is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file; give a run folder or a .pt file that exists")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise UserError(f"{path}: refused to load: it holds Python objects other than tensors and plain data, "
                        "which could run code; only load checkpoints and state dicts you trust, saved as tensors") from e
    except Exception as e:  # damaged files raise EOFError, KeyError, IndexError, RuntimeError, ...
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"{path}: not a readable checkpoint ({reason}); "
                        "the file is damaged or of another format") from e


def refuse_other_layout(path: Path, found: int, current: int, command: str) -> None:
    """Refuse to resume from a checkpoint of layout ``found`` (what it holds and how its run draws its
    augmentation) when ``command`` now writes layout ``current``: resuming could not be exact."""
    if found != current:
        raise UserError(f"{path}: written by an earlier {command} (checkpoint layout {found}, now {current}); "
                        "it can still be evaluated and used, but not resumed exactly: start a new run")


def resume_state(path: Path, command: str, keys: tuple[str, ...], layout: int, cls: type) -> tuple[dict, Any]:
    """The training checkpoint at ``path`` that a ``command`` run resumes from, and the config it was saved with.
    A file that is not one of ``command``'s training checkpoints (it lacks ``keys``) or holds another ``layout`` is
    a one-line :class:`UserError`."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or any(key not in ckpt for key in keys):
        raise UserError(f"{path}: not a {command} checkpoint; give a run folder of {command}")
    refuse_other_layout(path, ckpt.get("layout", 0), layout, command)
    return ckpt, resumed_config(cls, ckpt, path)


def resumed_config(cls: type, ckpt: dict, path: Path):
    """The config checkpoint ``path`` was saved with (its run's ``config.yaml`` when it stores none, as
    checkpoints of earlier versions may), warning in one line when that file was edited since."""
    if "config" not in ckpt:
        return load_config(cls, path.parent / "config.yaml")
    cfg = config_from_dict(cls, ckpt["config"], path)
    warn_edited_config(cfg, path.parent / "config.yaml")
    return cfg


def warn_edited_config(cfg: Any, file: Path) -> None:
    """One warning line naming what ``file`` (a run's ``config.yaml``) says otherwise than ``cfg``, the config
    a resumed run goes on with."""
    diff = edited_keys(cfg, file)
    if diff:
        print(f"warning: {file}: edited since the run started ({diff}); resuming with the config stored in "
              "the checkpoint, as the run began", file=sys.stderr)
