"""What the benchmark scripts share: the CPU's name for the results table, the baseline recipe imported
from its path (never copied), and GPU timing and memory helpers."""
from __future__ import annotations

import importlib.util
import platform
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_usual(path: str):
    """The module ``usual_recipe.py`` at ``path``."""
    spec = importlib.util.spec_from_file_location("usual_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> int | None:
    """Peak memory reserved by PyTorch's allocator since :func:`reset_peak`: unlike the allocated peak, it
    counts a CUDA graph's private pool, whose intermediate tensors are never allocated during a replay."""
    return round(torch.cuda.max_memory_reserved(device) / 2**20) if device.type == "cuda" else None
