"""What the benchmark scripts share: the CPU's name for the results table, the baseline recipe imported
from its path (never copied), GPU timing and memory helpers, and the FLOPs of a step."""
from __future__ import annotations

import importlib.util
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


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


def count_flops(fn) -> int:
    """FLOPs of one call of ``fn`` as ``torch.utils.flop_counter`` counts them: convolutions and matrix
    products (2 per multiply-add, backward included), not the elementwise work beside them. Run it eagerly:
    a CUDA graph's replay or compiled code hides its operators from the counter. It counts the backward pass
    of a grouped (depthwise) convolution as a dense one: count such networks' forward passes only."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def tflop_s(img_s: float, flops_per_image: float) -> float:
    """The convolution and matrix work done per second at ``img_s``, in TFLOP/s."""
    return round(img_s * flops_per_image / 1e12, 1)


def gemm_gflop_s(dtype: torch.dtype, side: int = 1024, repeats: int = 20) -> float:
    """What this CPU's matrix multiply reaches in ``dtype``, GFLOP/s (``side``² by ``side``², after a warm-up):
    the attainable peak a row's FLOP rate is compared with, measured rather than read off a data sheet."""
    a, b = torch.randn(side, side, dtype=dtype), torch.randn(side, side, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * side ** 3 * repeats / (time.perf_counter() - start) / 1e9
