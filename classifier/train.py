"""``classify-train``: two-phase transfer learning (head on the frozen backbone, then all layers at a
lower learning rate; Zebin et al.) or training from scratch, on GPU-resident (or streamed) data
augmented on the device, early stopping on validation macro-F1 and exact resume. The run folder keeps a
``history.csv`` of every epoch and the best epoch's validation metrics in ``best_metrics.json``."""
from __future__ import annotations

import copy
import csv
import dataclasses
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from augment.balance import keep_training_patients
from augment.batches import epoch_batches, image_sets
from augment.data import XrayDataset, load_dataset, write_csv
from augment.lungmask import LungMasker
from augment.runsplit import SPLIT_FILE, split_rows, write_split
from augment.transforms import build_augment
from foundation.checkpoints import resume_state, save_checkpoint
from foundation.config import config_to_dict
from foundation.devices import autocast, pick_device, rng_state, seed_everything, set_rng_state
from foundation.distributed import Dist, all_ranks, broadcast_buffers, close_distributed, init_distributed
from foundation.errors import UserError
from foundation.files import json_safe, write_text_atomic
from foundation.loop import TrainingLoop
from foundation.runs import new_run_dir, resolve_run_file, tensorboard_writer, write_run_info

from .backbones import has_normalisation
from .checkpoint import run_lung_masker
from .config import ClassifierConfig
from .inference import predict
from .metrics import classification_metrics, roc_curve
from .model import Classifier, create_model
from .plots import RocCurve, confusion_figure, roc_figure
from .recipe import EMA, LRSchedule, mix
from .usual_budget import usual_recipe_seconds

HISTORY_FILE = "history.csv"
RESUME_LAYOUT = 1
PLAN_STEPS = 6        # training steps timed (after one warm-up step) to plan a train.time_budget
BUDGET_SHARE = 0.9    # of the budget left the planned epochs may take: the rest for checkpoints and slower steps
"""What ``last.pt`` holds and how the run draws its augmentation. 0 (no ``layout`` key): kornia's random
crop and affine. 1: the one-warp augmentation of :mod:`augment.transforms`. Only the current layout resumes."""


@dataclass
class Phase:
    """Epochs ``[start, end)`` training either the head alone (``frozen`` backbone) or all layers."""
    start: int
    end: int
    frozen: bool
    lr: float


def phases(cfg: ClassifierConfig) -> list[Phase]:
    t = cfg.train
    if cfg.model.from_scratch or t.head_epochs <= 0:
        return [Phase(0, t.epochs, False, t.lr)]
    head = min(t.head_epochs, t.epochs)
    return [Phase(0, head, True, t.lr), Phase(head, t.epochs, False, t.lr * t.finetune_lr_factor)]


def model_args(cfg: ClassifierConfig, num_classes: int) -> dict:
    """What :func:`create_model` needs to rebuild the network of a checkpoint."""
    m = cfg.model
    return {"name": m.backbone, "num_classes": num_classes, "in_chans": 1, "head": m.head,
            "dropout": m.dropout, "width": m.width}


def input_size(cfg: ClassifierConfig, model: Classifier) -> int:
    return cfg.model.input_size or model.input_size


def warmup_epochs(cfg: ClassifierConfig, model: Classifier) -> float:
    """``train.warmup_epochs``, or at least ``train.warmup_epochs_unnormalised`` for a backbone without
    normalisation layers (VGG) trained from scratch."""
    t = cfg.train
    if cfg.model.from_scratch and not has_normalisation(model.backbone):
        return max(t.warmup_epochs, t.warmup_epochs_unnormalised)
    return t.warmup_epochs


def training_set(ds: XrayDataset, synthetic: XrayDataset | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """uint8 images ``(N, 1, S, S)``, labels ``(N,)`` and the rows ``(M,)`` of them to train on. Without
    synthetic images: the data's memory-mapped cache itself and its training split's rows, so a streamed set
    reads only the pages its batches need. With them: the training split and the synthetic images joined in
    host memory, and rows None (all)."""
    idx = ds.indices("train")
    if synthetic is None:
        return ds.images, ds.labels, idx
    if synthetic.images.shape[-1] != ds.images.shape[-1]:
        raise UserError(f"{synthetic.root}: synthetic images were cached at another size; use the same data.size")
    return torch.cat([ds.images[idx], synthetic.images]), torch.cat([ds.labels[idx], synthetic.labels]), None


def gray_statistics(images_u8: torch.Tensor, rows: torch.Tensor | None = None, chunk: int = 256) -> tuple[float, float]:
    """Mean and std of the gray values in [0, 1] of ``(N, 1, S, S)`` uint8 images (only ``rows (M,)`` when
    given), read in chunks."""
    rows = torch.arange(len(images_u8)) if rows is None else rows
    total = sq = 0.0
    for start in range(0, len(rows), chunk):
        x = images_u8[rows[start:start + chunk]].double() / 255
        total, sq = total + x.sum().item(), sq + x.square().sum().item()
    n = len(rows) * images_u8[0].numel()
    mean = total / n
    return mean, max(sq / n - mean ** 2, 0.0) ** 0.5


def cross_entropy(prob: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of class probabilities ``prob (M, K)`` for labels ``y (M,)``."""
    return float(-np.log(np.clip(prob[np.arange(len(y)), y], 1e-12, None)).mean())


def read_history(path: Path, epochs: int) -> list[dict]:
    """The rows of ``history.csv`` of the first ``epochs`` epochs (later ones were not kept in last.pt)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [row for row in csv.DictReader(f) if int(row["epoch"]) <= epochs]


def balanced_batches(labels: torch.Tensor, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """An epoch of batches drawn with replacement so each class is equally likely."""
    counts = torch.bincount(labels).double()
    weights = (1 / counts)[labels]
    n = len(labels) // batch_size * batch_size or batch_size
    return list(torch.multinomial(weights, n, replacement=True, generator=generator).split(batch_size))


class Trainer:
    """One training run: set up from a config (or a checkpoint to resume), then :meth:`run`.

    ``lung_masker``: the lung masks that ``data.lung_crop`` and ``data.lung_mask`` need (the segmenter of
    ``data.lungseg_run``, e.g. ``lungs.masker_for(cfg.data)``); its identity is recorded in ``run.json``,
    ``best.pt`` and ``last.pt``, and a resumed run refuses another."""

    def __init__(self, cfg: ClassifierConfig, data: str | Path, out: str | Path = "runs",
                 synthetic: str | Path | None = None, resume: str | Path | None = None,
                 device: str = "auto", seed: int = 0, quiet: bool = False, lung_masker: LungMasker | None = None):
        self.started = time.monotonic()  # train.time_budget counts from here
        self.dist: Dist = init_distributed(device)
        self.device = pick_device(device, self.dist.local_rank)
        ckpt = None
        if resume is not None:
            path = resolve_run_file(resume, out, "classifier", ("last.pt",))
            # the config stored in the checkpoint, not config.yaml, which a hand may have edited
            ckpt, cfg = resume_state(path, "classify-train", ("optimizer", "classes"), RESUME_LAYOUT, ClassifierConfig)
            seed = ckpt["seed"]
            lung_masker = run_lung_masker(ckpt, path, lung_masker)
        if cfg.data.uses_lungs:  # the run's config names its segmenter for commands run from other folders
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(
                cfg.data, lungseg_run=str(Path(cfg.data.lungseg_run).resolve())))
        self.cfg, self.seed, self.quiet = cfg, seed, quiet or not self.dist.is_main
        seed_everything(seed + self.dist.rank)
        main = self.dist.is_main

        lung_masker = lung_masker if cfg.data.uses_lungs else None
        self.lung_masker = lung_masker.identity if lung_masker else None
        ds = load_dataset(data, cfg.data, quiet=self.quiet, lung_masker=lung_masker)
        syn = (load_dataset(synthetic, cfg.data, split="train", required=(), quiet=self.quiet, lung_masker=lung_masker)
               if synthetic else None)
        if syn is not None:
            syn = keep_training_patients(ds, syn, synthetic)
        if len(ds.indices("val")) == 0:
            raise UserError(f"{data}: no validation images; give the manifest a split column or more images per class")
        untrained = [c for c in ds.classes if len(ds.indices("train", c)) == 0 and not (syn and len(syn.indices(label=c)))]
        if untrained:  # the model would have an output it never learned
            raise UserError(f"{data}: no training image of class {', '.join(map(repr, untrained))} (only validation or "
                            "test images); put some of its patients in the train split or drop it from data.classes")
        self.classes = ds.classes
        fingerprint = ds.fingerprint + (f"+{syn.fingerprint}" if syn else "")
        if ckpt is not None and ckpt["data_fingerprint"] != fingerprint:
            raise UserError(f"{data}: these are not the images run {path.parent} was trained on; "
                            "resume with the same --data and --synthetic")
        images, labels, rows = training_set(ds, syn)
        self.n_synthetic = len(syn) if syn else 0
        (self.train_data,) = image_sets(images, labels, self.device, cfg.train.device_cache_share, rows)
        val = ds.indices("val")
        self.val_images, self.val_labels = ds.images[val], ds.labels[val].numpy()
        self.val_groups = [ds.groups[i] for i in val.tolist()]

        self.model = create_model(pretrained=cfg.model.pretrained if ckpt is None else "none",
                                  **model_args(cfg, len(self.classes)))
        self.model.set_normalisation(*gray_statistics(images, rows))
        self.size = input_size(cfg, self.model)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
        self.channels_last = cfg.train.channels_last and self.device.type == "cuda"  # slower on CPU
        self.model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        self.ema = EMA(self.model, cfg.train.ema) if cfg.train.ema else None
        self.augment = build_augment(cfg.augment, self.size).to(self.device)
        self.optimizer = torch.optim.AdamW(
            [{"params": self.model.backbone.parameters()}, {"params": self.model.head.parameters()}],
            lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=self.device.type == "cuda")
        counts = torch.bincount(self.train_data.labels.cpu(), minlength=len(self.classes)).double().clamp(min=1)
        self.class_weights = ((counts.sum() / (len(counts) * counts)).pow(cfg.train.class_weight_power)
                              .float().to(self.device)
                              if cfg.train.balance == "loss" else None)
        self.phases = phases(cfg)
        self.epoch = self.batch = self.step = 0
        self.best_f1, self.best_epoch, self.bad_epochs = -1.0, -1, 0
        self.schedule_state = None
        self.epoch_loss = torch.zeros((), device=self.device)  # sum of this epoch's step losses, on the device
        self.epoch_seconds = 0.0  # time this epoch took before a resume

        budget, usual = cfg.train.budget_seconds(), None
        if cfg.train.time_budget == "usual" and ckpt is None:
            usual = usual_recipe_seconds(len(self.train_data), len(self.val_labels), self.device, len(self.classes))
            budget = usual["seconds"]
        self.budget_plan = self._plan_budget(budget) if budget and ckpt is None else None
        if usual is not None:
            self.budget_plan["usual_recipe"] = usual
        cfg = self.cfg  # with the planned epochs
        if ckpt is not None:
            self.run_dir = path.parent
            self._restore(ckpt)
        else:
            self.run_dir = self._make_run_dir(out)
            if main:
                write_run_info(self.run_dir, cfg, seed, fingerprint, classes=list(self.classes), budget=self.budget_plan,
                               data=str(Path(data).resolve()), synthetic=str(synthetic) if synthetic else None,
                               n_synthetic=self.n_synthetic, world_size=self.dist.world_size, device=str(self.device),
                               lung_masker=self.lung_masker,
                               lungs_not_found=len(ds.no_lungs) + len(syn.no_lungs if syn else []))
                write_split(self.run_dir / SPLIT_FILE,
                            split_rows(ds) + (split_rows(syn, split="train", origin="synthetic") if syn else []))
        self.fingerprint = fingerprint
        self.tensorboard = main and cfg.train.tensorboard
        self.writer = tensorboard_writer(self.run_dir, self.tensorboard)
        self.history = read_history(self.run_dir / HISTORY_FILE, self.epoch) if main else []

    def _plan_budget(self, budget: float) -> dict:
        """Set ``train.epochs`` (and so the schedule's length) to what fits ``budget`` seconds from the start: the
        speed of :data:`PLAN_STEPS` training steps of the last phase (the whole network; their median, so a step
        that another process stalled does not shorten the run) and of one validation is measured, then the
        weights, optimiser state, EMA and RNG are put back, so the run trains as an unmeasured run of that many
        epochs would. Returns the plan and the figures it came from."""
        saved = copy.deepcopy((self.model.state_dict(), self.optimizer.state_dict(),
                               self.ema.state_dict() if self.ema else None))
        rng = rng_state()
        net = self._enter_phase(self.phases[-1])
        net.train()
        batches = self.train_data.batches(self._batches(0))
        float(self.train_step(net, batches[0], 0))  # warm-up: allocations, kernel choice
        step_times = []
        for i in range(1, max(2, min(PLAN_STEPS, len(batches)))):  # an epoch of one batch: that batch timed again
            start = time.monotonic()
            float(self.train_step(net, batches[i % len(batches)], i))  # waits for the device
            step_times.append(time.monotonic() - start)
        step_s = statistics.median(step_times)  # a step stalled by another process: ignored
        start = time.monotonic()
        self.validate()
        val_s = time.monotonic() - start
        self.model.load_state_dict(saved[0])
        self.optimizer.load_state_dict(saved[1])
        if self.ema:
            self.ema.load_state_dict(saved[2])
        set_rng_state(rng)
        epoch_s = len(batches) * step_s + val_s
        left = budget - (time.monotonic() - self.started)
        epochs = torch.tensor(max(1, int(left * BUDGET_SHARE / epoch_s)))
        if self.dist.world_size > 1:  # every rank trains the same epochs
            torch.distributed.all_reduce(epochs, op=torch.distributed.ReduceOp.MIN)
        t = self.cfg.train
        train = dataclasses.replace(t, epochs=int(epochs), head_epochs=min(t.head_epochs, int(epochs)))
        self.cfg = dataclasses.replace(self.cfg, train=train)
        self.phases = phases(self.cfg)
        plan = {"budget_s": budget, "epochs": int(epochs), "step_s": round(step_s, 4),
                "step_times_s": [round(t, 4) for t in step_times], "validation_s": round(val_s, 3),
                "steps_per_epoch": len(batches), "seconds_left_when_planned": round(left, 1), "share_planned": BUDGET_SHARE}
        if self.dist.is_main and not self.quiet:
            print(f"classify-train: train.time_budget {t.time_budget} ({budget:.0f} s): {step_s:.3f} s per step and "
                  f"{val_s:.1f} s per validation measured here, so {int(epochs)} epochs of {len(batches)} steps",
                  file=sys.stderr)
        return plan

    def _make_run_dir(self, out) -> Path:
        run = [str(new_run_dir(out, "classifier")) if self.dist.is_main else None]
        if self.dist.world_size > 1:
            import torch.distributed as td
            td.broadcast_object_list(run, src=0)
        return Path(run[0])

    # ------------------------------------------------------------ checkpoints
    def _state(self) -> dict:
        rng = all_ranks(rng_state(), self.dist)
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
                "epoch": self.epoch, "batch": self.batch, "step": self.step, "best_f1": self.best_f1,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "rng": rng, "seed": self.seed,
                "epoch_loss": float(self.epoch_loss),
                "epoch_seconds": time.monotonic() - self.clock if self.batch else 0.0,
                "data_fingerprint": self.fingerprint, "classes": list(self.classes),
                "model_args": model_args(self.cfg, len(self.classes)), "input_size": self.size,
                "config": config_to_dict(self.cfg), "lung_masker": self.lung_masker, "layout": RESUME_LAYOUT}

    def _restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.ema:
            self.ema.load_state_dict(ckpt["ema"])
        for key in ("epoch", "batch", "step", "best_f1", "best_epoch", "bad_epochs"):
            setattr(self, key, ckpt[key])
        self.schedule_state = ckpt["schedule"]
        self.epoch_loss.fill_(ckpt.get("epoch_loss", 0.0))  # absent from checkpoints of earlier versions
        self.epoch_seconds = ckpt.get("epoch_seconds", 0.0)
        set_rng_state(ckpt["rng"][self.dist.rank % len(ckpt["rng"])])

    def save_last(self, step: int) -> None:
        """``last.pt``: everything a resume needs, after ``step`` steps."""
        state = self._state()  # every rank joins the RNG gather
        if self.dist.is_main:
            save_checkpoint(state, self.run_dir / "last.pt")

    def save_best(self, m: dict) -> None:
        """``best.pt``: the weights and, so evaluation can choose thresholds on validation data, the
        validation labels ``(M,)``, probabilities ``(M, K)`` and group ids of this epoch; its validation
        metrics ``m`` beside it in ``best_metrics.json``."""
        f1, prob = m["macro"]["f1"], m["prob"]
        if self.dist.is_main:
            weights = (self.ema.module if self.ema else self.model).state_dict()
            validation = {"labels": torch.from_numpy(self.val_labels), "prob": torch.from_numpy(prob),
                          "groups": self.val_groups}
            save_checkpoint({"model": weights, "classes": list(self.classes), "epoch": self.epoch + 1,
                             "val_macro_f1": f1, "data_fingerprint": self.fingerprint,
                             "model_args": model_args(self.cfg, len(self.classes)),
                             "input_size": self.size, "config": config_to_dict(self.cfg),
                             "lung_masker": self.lung_masker, "validation": validation}, self.run_dir / "best.pt")
            best = {"epoch": self.epoch + 1, **{k: v for k, v in m.items() if k != "prob"}}
            write_text_atomic(self.run_dir / "best_metrics.json", json.dumps(json_safe(best), indent=2) + "\n")

    # ------------------------------------------------------------ one phase, one step
    def _enter_phase(self, phase: Phase) -> nn.Module:
        """Freeze or unfreeze the backbone, set the phase's schedule; the module the steps call."""
        self.model.backbone.requires_grad_(not phase.frozen)
        self.base_lr = [0.0 if phase.frozen else phase.lr, phase.lr]
        steps = len(self._batches(phase.start))
        t = self.cfg.train
        warmup = int(warmup_epochs(self.cfg, self.model) * steps)
        self.schedule = LRSchedule(t.schedule, warmup, (phase.end - phase.start) * steps, t.min_lr_factor,
                                   t.plateau_patience, t.plateau_factor)
        self.patience_from = phase.start + -(-warmup // max(steps, 1))  # first epoch that ends after the warmup
        if self.schedule_state is not None and (self.epoch, self.batch) != (phase.start, 0):
            self.schedule.load_state_dict(self.schedule_state)  # resumed inside this phase
        self.schedule_state = None
        net: nn.Module = self.model
        if self.dist.world_size > 1:
            net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return torch.compile(net) if t.compile else net

    def _batches(self, epoch: int) -> torch.Tensor:
        """This rank's batches of ``epoch``, positions ``(steps, B)``: the same seeded order on every rank, dealt
        round-robin."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        bs = self.cfg.train.batch_size
        if self.cfg.train.balance == "sampler":
            batches = balanced_batches(self.train_data.labels.cpu(), bs, g)
        else:
            batches = epoch_batches(len(self.train_data), bs, g)
        per_rank = max(len(batches) // self.dist.world_size, 1)
        return torch.stack(batches[self.dist.rank::self.dist.world_size][:per_rank])

    def train_step(self, net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], step_in_phase: int) -> torch.Tensor:
        """One optimiser step on ``batch`` (images ``(B, 1, S, S)`` in [0, 1], labels ``(B,)``, on the device),
        ``net`` already in the phase's training mode; returns the loss (no host sync)."""
        t = self.cfg.train
        factor = self.schedule.factor(step_in_phase)
        for group, base in zip(self.optimizer.param_groups, self.base_lr):
            group["lr"] = base * factor
        x, y = batch
        x = self.augment(x)
        target = torch.zeros(len(y), len(self.classes), device=y.device).scatter_(1, y[:, None], 1.0)
        x, target = mix(x, target, t.mixup, t.cutmix)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, t.bf16, t.cpu_bf16):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), target, weight=self.class_weights, label_smoothing=t.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.ema:
            self.ema.update(self.model, step_in_phase)
        return loss.detach()

    # ------------------------------------------------------------ validation
    def validate(self) -> dict:
        """Validation metrics, cross-entropy ``loss`` and ``prob (M, K)`` of the evaluated model, the same on
        every rank."""
        broadcast_buffers(self.model, self.dist)
        if self.ema:
            broadcast_buffers(self.ema.module, self.dist)
        model = self.ema.module if self.ema else self.model
        prob = predict(model, self.val_images, self.size, self.device, self.cfg.eval.batch_size, self.cfg.train.bf16,
                       self.cfg.train.cpu_bf16, self.cfg.eval.tta).numpy()
        return (classification_metrics(self.val_labels, prob, self.classes, rounds=0)
                | {"loss": cross_entropy(prob, self.val_labels), "prob": prob})

    def log_validation(self, m: dict) -> None:
        """Validation scalars, PR curves, and the confusion and ROC figures, to TensorBoard."""
        if not self.tensorboard:
            return
        w, e = self.writer, self.epoch
        w.add_scalar("val/loss", m["loss"], e)
        w.add_scalar("val/accuracy", m["accuracy"], e)
        w.add_scalar("val/macro_f1", m["macro"]["f1"], e)
        w.add_scalar("val/macro_auc", m["macro"]["auc"], e)
        rocs = []
        for c, name in enumerate(self.classes):
            w.add_scalar(f"val/sensitivity/{name}", m["per_class"][name]["sensitivity"], e)
            w.add_pr_curve(f"val/pr/{name}", torch.from_numpy(self.val_labels == c),
                           torch.from_numpy(m["prob"][:, c]), e)
            fpr, tpr, _ = roc_curve(self.val_labels == c, m["prob"][:, c])
            rocs.append(RocCurve(name, fpr, tpr, m["per_class"][name]["auc"]))
        title = f"{self.cfg.model.backbone} run {self.run_dir.name}; validation split, epoch {e + 1}"
        w.add_figure("val/confusion", confusion_figure(m["confusion"], self.classes, f"Confusion matrix\n{title}"), e)
        w.add_figure("val/roc", roc_figure(rocs, f"ROC, each class vs the rest\n{title}"), e)

    def log_history(self, m: dict) -> None:
        """Append this epoch's row to ``history.csv`` (the whole file rewritten atomically)."""
        loss = self.epoch_loss.clone()
        if self.dist.world_size > 1:  # the mean over every rank's batches
            torch.distributed.all_reduce(loss)
        row = {"epoch": self.epoch + 1, "train_loss": float(loss) / (self.batch * self.dist.world_size),
               "val_loss": m["loss"], "accuracy": m["accuracy"], "macro_f1": m["macro"]["f1"],
               **{f"sensitivity_{c}": m["per_class"][c]["sensitivity"] for c in self.classes},
               "macro_auc": m["macro"]["auc"], "lr": self.optimizer.param_groups[1]["lr"],
               "seconds": round(time.monotonic() - self.clock, 3)}
        if self.dist.is_main:
            self.history.append(row)
            write_csv(self.run_dir / HISTORY_FILE, self.history, list(row))

    # ------------------------------------------------------------ the loop
    def run(self) -> Path:
        """Train until the last epoch, early stopping, or a stop signal (then save, say how to resume
        and set :attr:`stopped`)."""
        main = self.dist.is_main
        if main and not self.quiet:
            print(f"classify-train: {self.cfg.model.backbone} ({self.cfg.model.head} head, pretrained "
                  f"{self.cfg.model.pretrained}) on {len(self.train_data)} training images "
                  f"({self.n_synthetic} of them from --synthetic), {len(self.val_labels)} validation, {self.size}² input, "
                  f"warmup {warmup_epochs(self.cfg, self.model):g} epochs, "
                  f"device {self.device}, run folder {self.run_dir}", file=sys.stderr)
        loop = TrainingLoop("classify-train", self.run_dir / "last.pt", self.save_last, ("loss",),
                            self.device, self.dist, self.cfg.train.log_every, self.step or None, self.quiet)
        try:
            with loop:
                self.stopped = self._train_phases(loop)
            if self.stopped:
                loop.say_stopped(self.run_dir, where=f"epoch {self.epoch + 1}, step {self.batch}",
                                 extra=" (and the same --data/--synthetic)")
                return self.run_dir
        finally:
            self.writer.close()
            close_distributed()
        if main and not self.quiet:
            print(f"best validation macro-F1 {self.best_f1:.3f} at epoch {self.best_epoch + 1}; "
                  f"checkpoint {self.run_dir / 'best.pt'}", file=sys.stderr)
        return self.run_dir

    def _train_phases(self, loop: TrainingLoop) -> bool:
        """Every remaining epoch of every phase; True when stopped by a signal. Early stopping ends only
        the current phase: a pretrained run always goes on to fine-tune, with patience counted afresh."""
        for phase in self.phases:
            if self.epoch >= phase.end:
                continue
            if self.epoch <= phase.start and self.batch == 0:  # a phase begins, maybe after an early stop
                self.epoch, self.bad_epochs = phase.start, 0
            net = self._enter_phase(phase)
            while self.epoch < phase.end and self.bad_epochs < self.cfg.train.patience:
                if self._train_epoch(net, phase, loop):
                    return True
                self._end_epoch(loop)
        return False

    def _train_epoch(self, net: nn.Module, phase: Phase, loop: TrainingLoop) -> bool:
        """Steps of the current epoch from ``self.batch`` on; True when a stop was requested (``last.pt`` then
        saved). A NaN or infinite loss raises a :class:`UserError` before any checkpoint is written from the
        diverged model."""
        batches = self.train_data.batches(self._batches(self.epoch))
        net.train()
        if phase.frozen:
            self.model.backbone.eval()  # batch-norm statistics stay those of the pretrained backbone
        self.clock = time.monotonic() - (self.epoch_seconds if self.batch else 0.0)

        def step_fn(i: int) -> torch.Tensor:
            loss = self.train_step(net, batches[i], (self.epoch - phase.start) * len(batches) + i)
            self.batch, self.step = i + 1, self.step + 1
            self.epoch_loss += loss
            return loss[None]

        def on_log(step: int, means: dict, bar) -> None:
            self.writer.add_scalar("train/loss", means["loss"], step)
            self.writer.add_scalar("train/lr", self.optimizer.param_groups[1]["lr"], step)
            bar.set_postfix(loss=f"{means['loss']:.3f}")

        return loop.run(step_fn, self.batch, len(batches), first_step=self.step - self.batch, save_at_end=False,
                        on_log=on_log, desc=f"epoch {self.epoch + 1}/{self.cfg.train.epochs}", leave=False)

    def _end_epoch(self, loop: TrainingLoop) -> None:
        m = self.validate()
        f1 = m["macro"]["f1"]
        self.schedule.epoch_end(f1)
        self.log_validation(m)
        self.log_history(m)
        if f1 > self.best_f1:
            self.best_f1, self.best_epoch, self.bad_epochs = f1, self.epoch, 0
            self.save_best(m)
        elif self.epoch >= self.patience_from:  # no early stop while the learning rate still rises
            self.bad_epochs += 1
        if self.dist.is_main and not self.quiet:
            print(f"epoch {self.epoch + 1}: val accuracy {m['accuracy']:.3f}, macro-F1 {f1:.3f}"
                  + (" (best)" if self.best_epoch == self.epoch else ""), file=sys.stderr)
        self.epoch, self.batch = self.epoch + 1, 0
        self.epoch_loss.zero_()
        loop.save_now()


def train(cfg: ClassifierConfig, data: str | Path, out: str | Path = "runs", synthetic: str | Path | None = None,
          resume: str | Path | None = None, device: str = "auto", seed: int = 0, quiet: bool = False,
          lung_masker: LungMasker | None = None) -> Path:
    """Train a classifier; returns its run folder (``best.pt``, ``best_metrics.json``, ``last.pt``,
    ``history.csv``, ``config.yaml``, ``run.json``, TensorBoard events). With ``resume`` (a run folder or
    ``last.pt``) the run continues exactly where it stopped, with its own saved config. ``lung_masker``: as
    for :class:`Trainer`."""
    return Trainer(cfg, data, out, synthetic, resume, device, seed, quiet, lung_masker).run()
