"""The usual torchvision recipe's training time on this machine, so a preset can be held to "the same budget" on any
CPU (``train.time_budget: usual``).

The usual recipe (the CPU scale of the accuracy baseline the presets are compared with): torchvision's ResNet18 on
3-channel 112² inputs, batches of 64 in float32, AdamW, 12 epochs, each followed by a pass over the validation set.
Its steps are timed here on synthetic tensors (the median of a few, after warm-up steps); its data loader decodes
JPEGs in worker processes alongside the steps, which is not counted: on 2 CPU cores the estimate came 16 % below
the usual recipe's measured training time (benchmarks/RESULTS.md), so a preset held to it gets a little less time
than the baseline takes, not more.
"""
from __future__ import annotations

import math
import statistics
import time

import torch
from torch import nn

USUAL_RECIPE = {"model": "resnet18", "input_size": 112, "batch_size": 64, "epochs": 12, "in_chans": 3}
WARMUP_STEPS = 2  # the first steps are slower (allocations, oneDNN's kernel choice)
TIMED_STEPS = 5


def usual_recipe_seconds(n_train: int, n_val: int, device: torch.device, classes: int = 3) -> dict:
    """Seconds the usual recipe's training takes here on ``n_train`` training and ``n_val`` validation images, and
    the step times it comes from. Global RNG states are left as they were."""
    import torchvision
    r = USUAL_RECIPE
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        model = torchvision.models.get_model(r["model"], weights=None, num_classes=classes).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=0.05)
        x = torch.randn(r["batch_size"], r["in_chans"], r["input_size"], r["input_size"], device=device)
        y = torch.randint(0, classes, (r["batch_size"],), device=device)

        def step() -> None:
            loss = nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        step_s = _timed(step, device)
        model.eval()
        with torch.no_grad():
            val_batch_s = _timed(lambda: model(x).softmax(1), device)
    steps = max(n_train // r["batch_size"], 1)  # the usual loader drops the last partial batch
    seconds = r["epochs"] * (steps * step_s + math.ceil(n_val / r["batch_size"]) * val_batch_s)
    return {"seconds": round(seconds, 1), "step_s": round(step_s, 4), "val_batch_s": round(val_batch_s, 4),
            "steps_per_epoch": steps, "recipe": dict(r), "not_counted": "the usual recipe's JPEG decoding"}


def _timed(fn, device: torch.device) -> float:
    """The median seconds of :data:`TIMED_STEPS` calls of ``fn``, after :data:`WARMUP_STEPS` calls."""
    for _ in range(WARMUP_STEPS):
        fn()
    times = []
    for _ in range(TIMED_STEPS):
        _sync(device)
        start = time.monotonic()
        fn()
        _sync(device)
        times.append(time.monotonic() - start)
    return statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
