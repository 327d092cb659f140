"""Compiled code kept per machine: ``torch.compile`` costs minutes, so what it produced is written
once (``torch.compiler.save_cache_artifacts``) and later runs of the same set-up load it
(``load_cache_artifacts``) before they compile, which then finds its kernels ready."""
from __future__ import annotations

import hashlib
import json
import platform
import warnings
from pathlib import Path

import torch

from foundation.config import config_to_dict
from foundation.files import write_bytes_atomic

from .config import GanConfig


def compile_cache_path(out: str | Path, cfg: GanConfig, device: torch.device, world_size: int = 1) -> Path:
    """``<out>/cache/compile-<torch version>-<hash>.bin``; the hash covers what changes the compiled
    code: the device, the model, image size, batch size, precision, layout, graphs and process count."""
    t = cfg.train
    where = (torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)) \
        if device.type == "cuda" else (platform.machine(), platform.processor())
    key = {"device": where, "python": platform.python_version(), "model": config_to_dict(cfg.model),
           "size": cfg.data.size, "batch_size": t.batch_size, "bf16": t.bf16, "channels_last": t.channels_last,
           "cuda_graph": t.cuda_graph, "world_size": world_size}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(out) / "cache" / f"compile-{torch.__version__}-{digest}.bin"


def load_compiled(path: Path) -> bool:
    """Load the compiled code stored at ``path`` into torch's compile caches. False when there is none,
    or when it does not load (a warning says why; compiling then starts afresh), or torch is older than 2.7
    (no artifact caches: it compiles every run)."""
    if not path.is_file() or not hasattr(torch.compiler, "load_cache_artifacts"):
        return False
    try:
        torch.compiler.load_cache_artifacts(path.read_bytes())
    except Exception as e:  # a damaged file or one from another build of torch: compile instead
        warnings.warn(f"{path}: compiled code not loaded ({(str(e).splitlines() or [type(e).__name__])[0][:200]}); "
                      "compiling afresh, and the file is rewritten")
        return False
    return True


def save_compiled(path: Path) -> bool:
    """Write the code this process compiled to ``path`` (atomically); False when it compiled nothing (or
    torch is older than 2.7)."""
    if not hasattr(torch.compiler, "save_cache_artifacts"):
        return False
    artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is None:
        return False
    write_bytes_atomic(path, artifacts[0])
    return True
