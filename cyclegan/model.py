"""The CycleGAN optimisation step, in junyanz's ``set_input → forward → optimize_parameters`` shape."""
from __future__ import annotations

import itertools

import torch
from torch import nn

from augment.lungmask import feather_mask
from foundation.devices import autocast

from .config import GanConfig
from .constraint import diff_augment, lung_view
from .inference import memory_format
from .losses import l1_loss, lsgan_loss
from .networks import Discriminators, Generators
from .pool import ImagePool

LOSS_NAMES = ("gan_ab", "gan_ba", "cycle_a", "cycle_b", "identity_a", "identity_b", "outside", "d_a", "d_b")


def decayed_lr(step: torch.Tensor, lr: float, total_steps: int, decay_start: float) -> torch.Tensor:
    """Zhu et al.'s schedule: ``lr`` for the first ``int(decay_start · total_steps)`` steps, then linearly
    down to 0 at ``total_steps``. ``step``: int64 0-dim tensor → float32 0-dim on its device (no host sync)."""
    constant = int(total_steps * decay_start)
    decay = max(total_steps - constant, 1)
    return lr * ((decay - (step - constant).clamp(min=0)) / decay)  # an exact integer over decay: no cancellation


class CycleGAN:
    """Two generators, two discriminators, their Adam optimisers, the lr schedule and the image pools.

    The step count, the learning rate and the pools live on the device and change in place, and the
    optimisers are fused (and capturable on CUDA), so :meth:`optimize_parameters` needs no host sync
    and can be captured in a CUDA graph.

    Args:
        cfg: the run's configuration (``model`` and ``train`` sections are used).
        device: where everything lives.
        total_steps: length of the lr schedule.
        distributed: wrap the networks in DistributedDataParallel (under ``torchrun``).
        compile: ``torch.compile`` the generator and discriminator calls.
    """

    def __init__(self, cfg: GanConfig, device: torch.device, total_steps: int, distributed: bool = False,
                 compile: bool = False):
        t = cfg.train
        self.cfg, self.device = cfg, device
        self.use_autocast = t.bf16
        fmt = self.memory_format = memory_format(t.channels_last, device)
        self.generators = Generators(cfg.model).to(device, memory_format=fmt)
        self.discriminators = Discriminators(cfg.model).to(device, memory_format=fmt)
        gens, discs = self.generators, self.discriminators
        if distributed:
            ids = [device.index] if device.type == "cuda" else None
            gens = nn.parallel.DistributedDataParallel(gens, device_ids=ids)
            discs = nn.parallel.DistributedDataParallel(discs, device_ids=ids)
        judge = self.discriminators  # scores fakes for the generator loss; its weights get no gradient there
        if compile:
            gens, discs, judge = torch.compile(gens), torch.compile(discs), torch.compile(judge)
        self._gens, self._discs, self._judge = gens, discs, judge

        self.total_steps = total_steps
        self.step = torch.zeros((), dtype=torch.long, device=device)  # optimisation steps done
        self.lr = self.scheduled_lr()  # float32 0-dim on the device, shared by both optimisers
        adam = dict(lr=self.lr, betas=(t.beta1, t.beta2), fused=True, capturable=device.type == "cuda")
        self.opt_g = torch.optim.Adam(self.generators.parameters(), **adam)
        self.opt_d = torch.optim.Adam(self.discriminators.parameters(), **adam)
        self.pool_a, self.pool_b = ImagePool(t.pool_size, device), ImagePool(t.pool_size, device)
        self.real_a = self.real_b = self.weight_a = self.weight_b = None
        self.out: dict[str, torch.Tensor] = {}
        self.losses: torch.Tensor | None = None

    def set_input(self, real_a: torch.Tensor, real_b: torch.Tensor, masks_a: torch.Tensor | None = None,
                  masks_b: torch.Tensor | None = None) -> None:
        """``real_a``, ``real_b``: ``(B, 1, H, W)`` in [-1, 1] from domains A and B; with ``train.lung_constraint``
        their lung masks ``masks_a``, ``masks_b`` ``(B, 1, H, W)`` (bool, or a warped float mask)."""
        self.real_a = real_a.to(self.device, memory_format=self.memory_format)
        self.real_b = real_b.to(self.device, memory_format=self.memory_format)
        self.weight_a = self.weight_b = None
        if self.cfg.train.lung_constraint != "none":
            dilate, sigma = self.cfg.train.feathering(real_a.shape[-1])
            self.weight_a = feather_mask(masks_a.to(self.device), dilate, sigma)
            self.weight_b = feather_mask(masks_b.to(self.device), dilate, sigma)

    def forward(self) -> dict[str, torch.Tensor]:
        """Translations, reconstructions and (when weighted) identity maps, each ``(B, 1, H, W)``; blended with
        their inputs outside the lungs under ``train.lung_constraint=composite``."""
        composite = self.cfg.train.lung_constraint == "composite"
        weights = dict(weight_a=self.weight_a, weight_b=self.weight_b) if composite else {}
        with autocast(self.device, self.use_autocast, self.cfg.train.cpu_bf16):
            self.out = self._gens(self.real_a, self.real_b, identity=self.cfg.train.lambda_identity > 0, **weights)
        return self.out

    def judged(self, images: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """What a discriminator is given of ``images (B, 1, H, W)``: with a lung constraint, their
        :func:`cyclegan.constraint.lung_view` through ``weight`` (the blend weight of the film they were made
        from); else the images."""
        return images if weight is None else lung_view(images, weight).to(memory_format=self.memory_format)

    def augmented(self, images: torch.Tensor) -> torch.Tensor:
        """Discriminator inputs under ``train.diff_augment`` (translation and cutout), else as they are."""
        return diff_augment(images) if self.cfg.train.diff_augment else images

    def optimize_parameters(self) -> torch.Tensor:
        """One generator step then one discriminator step. Returns the detached losses ``(9,)`` in
        the order of ``LOSS_NAMES``; reading them is left to the caller (no host sync here)."""
        t = self.cfg.train
        self.forward()
        o, a, b, wa, wb = self.out, self.real_a, self.real_b, self.weight_a, self.weight_b
        self.discriminators.requires_grad_(False)
        view_fake_a, view_fake_b = self.judged(o["fake_a"], wb), self.judged(o["fake_b"], wa)
        with autocast(self.device, self.use_autocast, t.cpu_bf16):
            score_a, score_b = self._judge(self.augmented(view_fake_a), self.augmented(view_fake_b))
        gan_ab, gan_ba = lsgan_loss(score_b, True), lsgan_loss(score_a, True)
        cycle_a = l1_loss(o["rec_a"], a) * t.lambda_cycle
        cycle_b = l1_loss(o["rec_b"], b) * t.lambda_cycle
        if "idt_a" in o:
            identity_a = l1_loss(o["idt_a"], a) * t.lambda_cycle * t.lambda_identity
            identity_b = l1_loss(o["idt_b"], b) * t.lambda_cycle * t.lambda_identity
        else:
            identity_a = identity_b = torch.zeros((), device=self.device)
        outside = torch.zeros((), device=self.device)
        if t.lung_constraint == "loss":
            outside = t.lambda_outside * (l1_loss(o["fake_b"] * (1 - wa), a * (1 - wa))
                                          + l1_loss(o["fake_a"] * (1 - wb), b * (1 - wb)))
        self.opt_g.zero_grad(set_to_none=True)
        (gan_ab + gan_ba + cycle_a + cycle_b + identity_a + identity_b + outside).backward()
        self.opt_g.step()

        self.discriminators.requires_grad_(True)
        fake_a = self.pool_a.query(view_fake_a.detach())
        fake_b = self.pool_b.query(view_fake_b.detach())
        real_a, real_b = self.judged(a, wa), self.judged(b, wb)
        n = a.shape[0]
        with autocast(self.device, self.use_autocast, t.cpu_bf16):
            score_a, score_b = self._discs(self.augmented(torch.cat([real_a, fake_a.to(real_a.dtype)])),
                                           self.augmented(torch.cat([real_b, fake_b.to(real_b.dtype)])))
        d_a = 0.5 * (lsgan_loss(score_a[:n], True) + lsgan_loss(score_a[n:], False))
        d_b = 0.5 * (lsgan_loss(score_b[:n], True) + lsgan_loss(score_b[n:], False))
        self.opt_d.zero_grad(set_to_none=True)
        (d_a + d_b).backward()
        self.opt_d.step()
        self.step.add_(1)
        self.lr.copy_(self.scheduled_lr())
        self.losses = torch.stack([gan_ab, gan_ba, cycle_a, cycle_b, identity_a, identity_b, outside,
                                   d_a, d_b]).detach()
        return self.losses

    def scheduled_lr(self) -> torch.Tensor:
        """The learning rate of the next step (:func:`decayed_lr` of :attr:`step`)."""
        t = self.cfg.train
        return decayed_lr(self.step, t.lr, self.total_steps, t.decay_start)

    def parameters(self):
        return itertools.chain(self.generators.parameters(), self.discriminators.parameters())

    def state_dict(self) -> dict:
        """Networks, optimisers and the step count (one host sync)."""
        return {"generators": self.generators.state_dict(), "discriminators": self.discriminators.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "step": int(self.step)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; the learning rate follows from the restored step count."""
        self.generators.load_state_dict(state["generators"])
        self.discriminators.load_state_dict(state["discriminators"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step.fill_(state["step"])
        self.lr.copy_(self.scheduled_lr())
        for group in self.opt_g.param_groups + self.opt_d.param_groups:
            group["lr"] = self.lr  # loading put the saved copy there
            group["capturable"] = self.device.type == "cuda"  # as built here, whatever device saved it

    def pool_state(self) -> dict:
        """This process's image pools (under torchrun each rank has its own), on the CPU."""
        return {"a": self.pool_a.state_dict(), "b": self.pool_b.state_dict()}

    def load_pool_state(self, state: dict) -> None:
        """Restore what :meth:`pool_state` returned."""
        self.pool_a.load_state_dict(state["a"])
        self.pool_b.load_state_dict(state["b"])
