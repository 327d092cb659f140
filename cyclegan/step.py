"""One CycleGAN training step, from a batch of images to updated networks: jitter them, one generator
and one discriminator update. ``gan-train`` and the benchmark both
run this. Eager, or (``train.cuda_graph``, CUDA only) captured once in a CUDA graph and replayed: at
batch 1 a step is bound by kernel launches, which a graph replays in one call."""
from __future__ import annotations

import torch

from augment.transforms import resize_and_crop

from .inference import to_model_range
from .model import CycleGAN


class TrainStep:
    """``step(real_a, real_b)`` → the step's losses, with no host sync.

    With ``train.cuda_graph`` on CUDA, the first :attr:`WARMUP` calls run eagerly on a side stream
    (they create the optimiser state and pools, and let cuDNN pick its kernels); the next call captures
    the whole step (jitter, forwards, backwards, both optimiser steps, pools, step count and learning
    rate) into a graph with static input buffers, and every call from then on replays it.
    Create it after a resumed run's state is restored: the graph holds the addresses of the weights,
    optimiser state, pools and step count, which later change only in place.

    Args:
        model: the CycleGAN, on its device.
    """

    WARMUP = 3

    def __init__(self, model: CycleGAN):
        cfg = model.cfg
        self.model = model
        self.jitter = resize_and_crop(cfg.data.size, cfg.augment.load_size(cfg.data.size)).to(model.device)
        self.cuda_graph = cfg.train.cuda_graph and model.device.type == "cuda"
        self.input_a: torch.Tensor | None = None  # a graph's static input buffers, made at its first call
        self.input_b: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.losses: torch.Tensor | None = None
        self.eager_calls = 0

    def __call__(self, real_a: torch.Tensor, real_b: torch.Tensor) -> torch.Tensor:
        """``real_a``, ``real_b``: float ``(B, C, S, S)`` in [0, 1] on the device, a batch of each domain
        (e.g. from :meth:`augment.batches.DeviceImages.batches`): the film in channel 0 and, for a lung-constrained
        GAN, its lung mask in channel 1. Returns the detached losses ``(9,)`` in the order of
        :data:`cyclegan.model.LOSS_NAMES`; under a graph these are its output buffer, which the next call
        overwrites."""
        if not self.cuda_graph:
            return self._step(real_a, real_b)
        if self.input_a is None:
            self.input_a, self.input_b = torch.empty_like(real_a), torch.empty_like(real_b)
        self.input_a.copy_(real_a)
        self.input_b.copy_(real_b)
        if self.graph is not None:
            self.graph.replay()
            return self.losses
        if self.eager_calls < self.WARMUP:
            self.eager_calls += 1
            side = torch.cuda.Stream(self.model.device)
            side.wait_stream(torch.cuda.current_stream(self.model.device))
            with torch.cuda.stream(side):
                losses = self._step(self.input_a, self.input_b)
            main = torch.cuda.current_stream(self.model.device)
            main.wait_stream(side)
            losses.record_stream(main)  # made on the side stream, read on this one: keep its memory until then
            return losses
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.losses = self._step(self.input_a, self.input_b)
        self.graph.replay()
        return self.losses

    def _step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> torch.Tensor:
        a, b = self.jitter(real_a), self.jitter(real_b)  # a lung mask in channel 1 moves with its image
        self.model.set_input(to_model_range(a[:, :1]), to_model_range(b[:, :1]), a[:, 1:], b[:, 1:])
        return self.model.optimize_parameters()
