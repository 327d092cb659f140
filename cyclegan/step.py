"""One CycleGAN training step, from batch positions to updated networks: gather the images on the
device, jitter them, one generator and one discriminator update. ``gan-train`` and the benchmark both
run this. Eager, or (``train.cuda_graph``, CUDA only) captured once in a CUDA graph and replayed: at
batch 1 a step is bound by kernel launches, which a graph replays in one call."""
from __future__ import annotations

import torch

from augment.gpu import DeviceImages, resize_and_crop

from .inference import to_model_range
from .model import CycleGAN


class TrainStep:
    """``step(positions_a, positions_b)`` → the step's losses, with no host sync.

    With ``train.cuda_graph`` on CUDA, the first :attr:`WARMUP` calls run eagerly on a side stream
    (they create the optimiser state and pools, and let cuDNN pick its kernels); the next call captures
    the whole step (gather, jitter, forwards, backwards, both optimiser steps, pools, step count and
    learning rate) into a graph with static position buffers, and every call from then on replays it.
    Create it after a resumed run's state is restored: the graph holds the addresses of the weights,
    optimiser state, pools and step count, which later change only in place.

    Args:
        model: the CycleGAN, on the device of the images.
        images_a, images_b: the training images of domains A and B.
    """

    WARMUP = 3

    def __init__(self, model: CycleGAN, images_a: DeviceImages, images_b: DeviceImages):
        cfg = model.cfg
        self.model, self.images_a, self.images_b = model, images_a, images_b
        self.jitter = resize_and_crop(cfg.data.size, cfg.augment.load_size(cfg.data.size)).to(model.device)
        self.cuda_graph = cfg.train.cuda_graph and model.device.type == "cuda"
        batch = cfg.train.batch_size
        self.positions_a = torch.zeros(batch, dtype=torch.long, device=model.device)
        self.positions_b = torch.zeros(batch, dtype=torch.long, device=model.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.losses: torch.Tensor | None = None
        self.eager_calls = 0

    def __call__(self, positions_a: torch.Tensor, positions_b: torch.Tensor) -> torch.Tensor:
        """``positions_a``, ``positions_b``: ``int64 (B,)`` on the device, into each domain's images.
        Returns the detached losses ``(8,)`` in the order of :data:`cyclegan.model.LOSS_NAMES`; under a
        graph these are its output buffer, which the next call overwrites."""
        self.positions_a.copy_(positions_a)
        self.positions_b.copy_(positions_b)
        if self.graph is not None:
            self.graph.replay()
            return self.losses
        if not self.cuda_graph:
            return self._step()
        if self.eager_calls < self.WARMUP:
            self.eager_calls += 1
            side = torch.cuda.Stream(self.model.device)
            side.wait_stream(torch.cuda.current_stream(self.model.device))
            with torch.cuda.stream(side):
                losses = self._step()
            torch.cuda.current_stream(self.model.device).wait_stream(side)
            return losses
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.losses = self._step()
        self.graph.replay()
        return self.losses

    def _step(self) -> torch.Tensor:
        real_a = to_model_range(self.jitter(self.images_a.get(self.positions_a)[0]))
        real_b = to_model_range(self.jitter(self.images_b.get(self.positions_b)[0]))
        self.model.set_input(real_a, real_b)
        return self.model.optimize_parameters()
