"""Devices and precision: which device a run uses, bf16 autocast where it pays, seeds and the RNG states
a resumed run restores."""
from __future__ import annotations

import random

import torch

from .errors import UserError


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` takes the GPU when one is visible; ``cuda`` takes GPU ``local_rank`` (under torchrun, this process's),
    ``cuda:N`` GPU N, ``mps`` Apple's GPU. One that is not there is a user error."""
    kind, _, index = name.partition(":")
    if kind not in ("auto", "cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise UserError(f"--device {name}: choose auto, cpu, cuda, cuda:N (a GPU's index) or mps")
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise UserError("--device mps: no Apple GPU (MPS) is available; use --device cpu or --device auto")
        return torch.device("mps")
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible; use --device cpu or --device auto")
    gpu = int(index) if index else local_rank
    if gpu >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0")
    return torch.device("cuda", gpu)


def autocast(device: torch.device, enabled: bool = True, cpu: bool = False):
    """bf16 autocast when ``enabled``: on CUDA, and on the CPU only with ``cpu`` and a CPU that computes
    bf16 natively (AVX512-BF16 or AMX; emulated bf16 is slower than float32); otherwise a no-op."""
    on = device.type == "cuda" or (cpu and device.type == "cpu" and cpu_bf16_native())
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and on)


def cpu_bf16_native() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def rng_state() -> dict:
    """The global RNG states a training step draws from (Python, torch CPU, torch CUDA)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
