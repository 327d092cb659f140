"""``lungseg-train``: a U-Net trained from scratch on image/mask pairs held on the device, with the same
one-warp augmentation (``augment.transforms.build_augment``) applied to image and mask, Dice + BCE loss, exact
resume, and Dice and IoU per source on the test split with patient-level bootstrap intervals."""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from augment.batches import epoch_batches
from augment.data import warn, write_csv
from augment.runsplit import SPLIT_FILE
from augment.transforms import build_augment
from foundation.checkpoints import resume_state, save_checkpoint
from foundation.config import config_to_dict
from foundation.devices import autocast, pick_device, rng_state, seed_everything, set_rng_state
from foundation.errors import UserError
from foundation.files import write_text_atomic
from foundation.loop import TrainingLoop
from foundation.runs import new_run_dir, recorded_data, tensorboard_writer, write_run_info

from .config import LungsegConfig
from .data import LungData, load_pairs
from .inference import CHECKPOINT_NAME, checkpoint_file, predict_probs
from .metrics import dice_iou, format_report, segmentation_report
from .unet import UNet

LOSS_NAMES = ("loss", "dice_loss", "bce")
SPLIT_COLUMNS = ("path", "mask", "split", "group_id", "source", "sha256")  # a lung manifest itself
RESUME_LAYOUT = 1
"""How a checkpoint's run draws its augmentation. 0 (no ``layout`` key): kornia's random crop and affine.
1: the one-warp augmentation of :mod:`augment.transforms`. Only the current layout resumes."""


@dataclass
class LungsegResult:
    run_dir: Path
    step: int                # steps done when the run ended
    model: UNet
    interrupted: bool        # stopped early by Ctrl-C / SIGTERM
    metrics: dict | None     # test report (None when interrupted)


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(3,)``: soft Dice loss (1 − Dice of the probabilities, per image, averaged) + BCE, then each term.
    ``logits``, ``target`` ``(B, 1, H, W)``, target in {0, 1}."""
    prob = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    dice = 1 - ((2 * (prob * t).sum(1) + 1) / (prob.sum(1) + t.sum(1) + 1)).mean()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    return torch.stack([dice + bce, dice, bce])


def joint_augment(augment, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float images ``(B, 1, S, S)`` in [0, 1] and masks ``(B, 1, S, S)`` in {0, 1} under one sampled geometric
    transform (intensity changes touch the images only); masks are thresholded back to {0, 1}."""
    images, masks = augment(images, masks)
    return images, (masks >= 0.5).float()


def train_lungseg(cfg: LungsegConfig | None, data: str | Path | None, out: str | Path = "runs", device: str = "auto",
                  seed: int = 0, resume: str | Path | None = None, quiet: bool = False) -> LungsegResult:
    """Train a lung segmenter on the training split of ``data`` and report on its test split.

    Args:
        cfg: the configuration; ignored (may be None) with ``resume``, which uses the run's own.
        data: a lung manifest, a folder holding one, or a folder of ``images/`` + ``masks/``; None with
            ``resume``: the data the run recorded in its ``run.json``.
        out: runs are written to ``<out>/lungseg/<timestamp>/``.
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: seed of weights, batch order and augmentation.
        resume: a run folder or its checkpoint to continue exactly (same data, config and seed).
    """
    dev = pick_device(device)
    ckpt = None
    if resume is not None:
        ckpt_path = checkpoint_file(resume, out)
        ckpt, cfg = resume_state(ckpt_path, "lungseg-train", ("optimizer", "input"), RESUME_LAYOUT, LungsegConfig)
        seed, run_dir = ckpt["seed"], ckpt_path.parent
        data = data or recorded_data(run_dir)
        if data is None:
            raise UserError(f"{run_dir}: its run.json does not say which data the run was trained on; pass --data")
    elif data is None:
        raise UserError("give --data: image/mask pairs to train on")
    else:
        cfg = cfg or LungsegConfig()
    t = cfg.train
    ds = load_pairs(data, cfg.data, quiet)
    if ckpt is not None and ckpt["data_fingerprint"] != ds.fingerprint:
        raise UserError(f"{data}: not the data {ckpt_path} was trained on; resume with the same --data and config")
    train_idx = ds.indices("train")
    if len(train_idx) == 0:
        raise UserError(f"{data}: no training pair; give the manifest a split column with train rows or add pairs")
    images, masks = ds.images[train_idx].to(dev), ds.masks[train_idx].to(dev)
    if ckpt is None:  # made once the data is known to be good: a refused run leaves no folder
        run_dir = new_run_dir(out, "lungseg")
        ckpt_path = run_dir / CHECKPOINT_NAME
    batches_per_epoch = max(1, len(train_idx) // t.batch_size)  # as many as epoch_batches gives
    total = t.epochs * batches_per_epoch

    seed_everything(seed)
    model = UNet(1, cfg.model.width, cfg.model.depth).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / total, 1))))
    augment = build_augment(cfg.augment, cfg.data.size).to(dev) if cfg.augment.enabled else None
    step = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        set_rng_state(ckpt["rng"])
        step = ckpt["step"]
    else:
        write_run_info(run_dir, cfg, seed, ds.fingerprint, data=str(Path(data).resolve()), total_steps=total,
                       pairs={s: len(ds.indices(s)) for s in ("train", "val", "test")})
        write_csv(run_dir / SPLIT_FILE, split_rows(ds), SPLIT_COLUMNS)

    def save(at_step: int) -> None:
        save_checkpoint({"step": at_step, "total_steps": total, "seed": seed, "config": config_to_dict(cfg),
                         "data_fingerprint": ds.fingerprint, "model_args": {"width": cfg.model.width,
                                                                            "depth": cfg.model.depth},
                         "input": {"size": cfg.data.size, "resize": cfg.data.resize}, "model": model.state_dict(),
                         "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "rng": rng_state(),
                         "layout": RESUME_LAYOUT},
                        ckpt_path)

    def step_fn(i: int) -> torch.Tensor:
        nonlocal order_epoch, batches
        epoch, pos = divmod(i, batches_per_epoch)
        if epoch != order_epoch:
            batches = epoch_batches(len(train_idx), t.batch_size, torch.Generator().manual_seed(seed * 100_003 + epoch))
            order_epoch = epoch
        idx = batches[pos].to(dev)
        x, y = images[idx].float() / 255, masks[idx].float()
        if augment is not None:
            x, y = joint_augment(augment, x, y)
        with autocast(dev, t.bf16):
            logits = model(x)
        losses = dice_bce_loss(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        losses[0].backward()
        optimizer.step()
        schedule.step()
        return losses.detach()

    def on_log(at_step: int, means: dict, bar) -> None:
        for name, value in means.items():
            writer.add_scalar(f"loss/{name}", value, at_step)
        bar.set_postfix(loss=f"{means['loss']:.3g}", refresh=False)
        writer.add_scalar("lr", schedule.get_last_lr()[0], at_step)

    def after_step(at_step: int) -> bool:
        """Validation Dice at each epoch's end, which is also when the run saves."""
        if at_step % batches_per_epoch:
            return False
        if len(ds.indices("val")):
            writer.add_scalar("val/dice", float(evaluate(model, ds, "val", cfg, dev)[0].mean()), at_step)
            model.train()
        return True

    order_epoch, batches = None, []
    writer = tensorboard_writer(run_dir, t.tensorboard)
    model.train()
    with TrainingLoop("lungseg-train", ckpt_path, save, LOSS_NAMES, dev, log_every=t.log_every,
                      saved_step=step if ckpt is not None else None, quiet=quiet) as loop, contextlib.closing(writer):
        interrupted = loop.run(step_fn, step, total, on_log=on_log, after_step=after_step)
    if interrupted:
        loop.say_stopped(run_dir)
        return LungsegResult(run_dir, loop.step, model, True, None)
    metrics = report(model, ds, cfg, dev, run_dir, quiet)
    return LungsegResult(run_dir, loop.step, model, False, metrics)


@torch.no_grad()
def evaluate(model: UNet, ds: LungData, split: str, cfg: LungsegConfig, dev) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and IoU ``(M,)`` of the images of ``split``, at the cached size, lung where p ≥ 0.5."""
    model.eval()
    idx = ds.indices(split)
    pred = predict_probs(model, ds.images[idx], cfg.data.size, dev, cfg.train.batch_size) >= 0.5
    return dice_iou(pred, ds.masks[idx])


def report(model: UNet, ds: LungData, cfg: LungsegConfig, dev, run_dir: Path, quiet: bool = False) -> dict | None:
    """Dice and IoU per source on the test split (validation split when there is no test pair) with 95 %
    patient-level intervals: written to ``<run>/metrics.json`` and printed."""
    split = "test" if len(ds.indices("test")) else "val"
    idx = ds.indices(split).tolist()
    if not idx:
        warn(f"{ds.root}: no test or validation pair; no metrics written")
        return None
    dice, iou = (v.numpy() for v in evaluate(model, ds, split, cfg, dev))
    groups, sources = [ds.pairs[i].group for i in idx], [ds.pairs[i].source for i in idx]
    metrics = {"split": split, "size": cfg.data.size, "threshold": 0.5, "ci_level": 0.95,
               "bootstrap_rounds": cfg.eval.bootstrap,
               "per_source": segmentation_report(dice, iou, groups, sources, cfg.eval.bootstrap)}
    write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    if not quiet:
        print(f"lung segmentation on the {split} split ({cfg.data.size}² px, 95 % intervals over patients):\n"
              f"{format_report(metrics['per_source'])}\nwrote {run_dir / 'metrics.json'}")
    return metrics


def split_rows(ds: LungData) -> list[dict]:
    """``split.csv`` rows: every pair with its split; absolute paths, so the file is a lung manifest."""
    return [{"path": str((ds.root / p.image).resolve()), "mask": str((ds.root / p.mask).resolve()), "split": s,
             "group_id": p.group, "source": p.source, "sha256": h}
            for p, s, h in zip(ds.pairs, ds.splits, ds.hashes)]
