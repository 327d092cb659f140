"""Run folders: making and finding them, what a run records of itself (``config.yaml``, ``run.json``) and
its TensorBoard writer."""
from __future__ import annotations

import datetime as _dt
import json
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from .about import source_checkout, toolkit_version
from .config import config_source, save_config
from .errors import UserError, cli_command
from .files import write_text_atomic


def new_run_dir(out: str | Path, kind: str) -> Path:
    """A fresh folder ``<out>/<kind>/<YYYYmmdd-HHMMSS>`` (suffixed if that exists)."""
    base = Path(out) / kind
    base.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    n = 0
    while True:  # mkdir claims the name, so two processes starting at once get two folders
        run = base / (f"{stamp}-{n}" if n else stamp)
        try:
            run.mkdir()
            return run
        except FileExistsError:
            n += 1


def latest_run(out: str | Path, kind: str, marker: str = "run.json", holding: tuple[str, ...] = ()) -> Path | None:
    """The newest run folder of ``kind`` under ``out`` that holds ``marker`` and, when ``holding`` names files,
    one of them (a checkpoint: a run that failed before writing one is not "the latest run"), or None."""
    base = Path(out) / kind
    runs = [p for p in base.glob("*") if (p / marker).exists()
            and (not holding or any((p / name).is_file() for name in holding))] if base.is_dir() else []
    return max(runs, key=_run_order, default=None)


def resolve_run_file(checkpoint: str | Path | None, out: str | Path, kind: str, names: tuple[str, ...],
                     marker: str = "run.json") -> Path:
    """The file a command reads from a run: ``checkpoint`` itself when it is a file; the first of ``names``
    in it when it is a run folder; with None, that file of the latest run of ``kind`` under ``out`` that
    holds ``marker`` and one of ``names``. Anything else is a one-line :class:`UserError` saying what to pass."""
    wanted = " or ".join(names)
    if checkpoint is None:
        checkpoint = latest_run(out, kind, marker, holding=names)
        if checkpoint is None:
            command = {"gan": "gan-train", "classifier": "classify-train"}.get(kind, "the training command")
            raise UserError(f"{Path(out) / kind}: no {kind} run with {wanted} yet; run `{cli_command()} {command}` "
                            "first or pass --checkpoint")
    path = Path(checkpoint)
    if path.is_dir():
        found = next((path / name for name in names if (path / name).is_file()), None)
        if found is None:
            raise UserError(f"{path}: no {wanted} here; give a {kind} run folder or a checkpoint file")
        return found
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint; give a {kind} run folder or a checkpoint file that exists")
    return path


def _run_order(run: Path) -> tuple[list[str], int]:
    """``<date>-<time>-10`` is newer than ``<date>-<time>-9``."""
    parts = run.name.split("-")
    return parts[:2], int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 0


def write_run_info(run_dir: str | Path, cfg: Any, seed: int, data_fingerprint: str = "", **extra) -> None:
    """``config.yaml`` (the resolved config) and ``run.json`` (what it takes to reproduce the run, with the
    config file the config was read from, ``null`` for the defaults in code, and the ``--set`` overrides)."""
    run_dir = Path(run_dir)
    save_config(cfg, run_dir / "config.yaml")
    source = config_source(cfg)
    info = {
        "command": sys.argv,
        "config_file": source["file"],
        "config_overrides": source["overrides"],
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "seed": seed,
        "data_fingerprint": data_fingerprint,
        "git_commit": git_commit(),
        "hostname": socket.gethostname(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "versions": package_versions(),
        **extra,
    }
    write_text_atomic(run_dir / "run.json", json.dumps(info, indent=2, default=str) + "\n")


def recorded_data(run_dir: str | Path) -> Path | None:
    """The data a run was trained on, as its ``run.json`` records it; None when it is missing or unreadable."""
    try:
        data = json.loads((Path(run_dir) / "run.json").read_text()).get("data")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(data) if isinstance(data, str) and data else None


def package_versions() -> dict:
    versions = {"cxrgan": toolkit_version(), "python": platform.python_version(), "torch": torch.__version__}
    for name in ("torchvision", "numpy", "skimage"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The commit of the source checkout the toolkit runs from; None as installed (a wheel in a
    virtual environment inside some other repository must not record that repository's commit)."""
    root = source_checkout()
    if root is None:
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class _NullWriter:
    """Stands in for a SummaryWriter on ranks other than 0."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def tensorboard_writer(run_dir: str | Path, enabled: bool = True):
    """A TensorBoard ``SummaryWriter`` logging into ``run_dir`` (a no-op writer when disabled)."""
    if not enabled:
        return _NullWriter()
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(run_dir))
