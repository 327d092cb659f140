"""``gan-train``: the CycleGAN training loop over training-split images held on the device (or, beyond
``train.device_cache_share`` of its memory, streamed from host memory).

One code path for one process and for ``torchrun`` (DistributedDataParallel, each process drawing its
own share of every step's images). Each step is a :class:`cyclegan.step.TrainStep` (with
``train.cuda_graph``, replayed from a CUDA graph); losses stay on the device and are read every
``log_every`` steps.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from augment.batches import DeviceImages, StreamedImages, image_sets
from augment.data import load_dataset
from augment.lungmask import LungMasker
from augment.runsplit import SPLIT_FILE, split_rows, write_split
from foundation.checkpoints import warn_edited_config
from foundation.config import config_to_dict
from foundation.devices import pick_device, rng_state, seed_everything, set_rng_state
from foundation.distributed import Dist, all_ranks, close_distributed, init_distributed
from foundation.errors import UserError
from foundation.loop import TrainingLoop
from foundation.runs import new_run_dir, resolve_run_file, tensorboard_writer, write_run_info

from .checkpoint import CHECKPOINT_NAME, read_gan_checkpoint, save_gan_checkpoint
from .compile_cache import compile_cache_path, load_compiled, save_compiled
from .config import GanConfig
from .diagnostics import translation_grid
from .domains import check_masker, domain_name, domain_rows, lung_masks, require_domain
from .evaluate import GRID_FILMS, measure_translation
from .inference import in_batches, to_unit_range, translate_films
from .model import LOSS_NAMES, CycleGAN
from .step import TrainStep


@dataclass
class GanTrainResult:
    run_dir: Optional[Path]   # None on processes other than rank 0
    step: int                 # steps done when the run ended
    model: CycleGAN
    interrupted: bool         # stopped early by Ctrl-C / SIGTERM


def epoch_order(n: int, steps_per_epoch: int, dist: Dist, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Positions ``int64 (steps_per_epoch, batch_size)`` into a domain of ``n`` images for this rank:
    shuffled passes over the domain, repeated as needed when it is the smaller one."""
    need = steps_per_epoch * dist.world_size * batch_size
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(math.ceil(need / n))])[:need]
    return order.view(steps_per_epoch, dist.world_size, batch_size)[:, dist.rank]


def train_gan(cfg: Optional[GanConfig], data: str | Path, out: str | Path = "runs", device: str = "auto",
              seed: int = 0, resume: str | Path | None = None, compile: bool = False,
              lung_masker: Optional[LungMasker] = None) -> GanTrainResult:
    """Train a CycleGAN from ``train.domain_a`` to ``train.domain_b`` on the training split of ``data``.

    Args:
        cfg: the configuration; ignored (may be None) with ``resume``, which uses the checkpoint's.
        data: folder of class subfolders or a manifest CSV.
        out: runs are written to ``<out>/gan/<timestamp>/``.
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: seed of weights, batch order, augmentation and image pools.
        resume: a GAN checkpoint or run folder to continue (same folder, same config, same seed).
        compile: ``torch.compile`` the networks (minutes of compiling; worth it for long GPU runs). The
            compiled code is kept in ``<out>/cache/`` and reused by later runs of the same set-up.
        lung_masker: the lung masks of ``data.lungseg_run`` (e.g. ``lungs.LungSegmenter``), which
            ``train.lung_constraint`` needs; computed once per image and cached with the images.
    """
    dist = init_distributed(device)
    try:
        return _train(cfg, data, out, pick_device(device, dist.local_rank), dist, seed, resume, compile, lung_masker)
    finally:
        close_distributed()


def _train(cfg, data, out, dev, dist, seed, resume, compile, lung_masker) -> GanTrainResult:
    checkpoint = None
    if resume is not None:
        ckpt_path = resolve_run_file(resume, out, "gan", (CHECKPOINT_NAME,), CHECKPOINT_NAME)
        checkpoint, cfg = read_gan_checkpoint(ckpt_path, resume=True)
        seed, run_dir = checkpoint["seed"], ckpt_path.parent
        if dist.is_main:
            warn_edited_config(cfg, run_dir / "config.yaml")
    cfg = cfg or GanConfig()
    t = cfg.train
    if t.cuda_graph and dist.world_size > 1:
        raise UserError("train.cuda_graph captures one process's step; under torchrun (DistributedDataParallel) "
                        "set train.cuda_graph=false")
    dataset = load_dataset(data, cfg.data, required=(t.domain_a, t.domain_b), quiet=not dist.is_main)
    if checkpoint is not None and checkpoint["data_fingerprint"] != dataset.fingerprint:
        raise UserError(f"{data}: not the data {ckpt_path} was trained on; resume with the same --data and data config")
    rows = [domain_rows(dataset, "train", cfg, side) for side in ("a", "b")]
    for side, idx in zip("ab", rows):
        require_domain(dataset, idx, "train", cfg, side, data)
    masker = lung_masker if t.lung_constraint != "none" else None
    masks = lung_masks(dataset, cfg, masker, quiet=not dist.is_main)
    if checkpoint is not None:
        check_masker(checkpoint.get("lung_masker"), masker, ckpt_path)
    else:  # made once the data is known to be good: a refused run leaves no folder
        run_dir = new_run_dir(out, "gan") if dist.is_main else None
        ckpt_path = run_dir / CHECKPOINT_NAME if run_dir else None
    images = dataset.images if masks is None else torch.cat([dataset.images, masks.to(torch.uint8) * 255], 1)
    images_a, images_b = image_sets(images, dataset.labels, dev, t.device_cache_share, *rows)
    steps_per_epoch = max(1, max(len(images_a), len(images_b)) // (t.batch_size * dist.world_size))
    total = t.steps or t.epochs * steps_per_epoch

    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = t.cudnn_benchmark
    cache_file = compile_cache_path(out, cfg, dev, dist.world_size) if compile else None
    cached = cache_file is not None and load_compiled(cache_file)
    seed_everything(seed)
    model = CycleGAN(cfg, dev, total, distributed=dist.world_size > 1, compile=compile)
    step = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        step = checkpoint["step"]
        mine = checkpoint["ranks"][dist.rank % len(checkpoint["ranks"])]  # this rank's pools and RNG
        model.load_pool_state(mine["pools"])
        set_rng_state(mine["rng"])
    elif dist.rank:
        seed_everything(seed + 7919 * dist.rank)  # each rank its own augmentation and pool draws
    if run_dir is not None and checkpoint is None:
        write_run_info(run_dir, cfg, seed, dataset.fingerprint, data=str(Path(data).resolve()), total_steps=total,
                       world_size=dist.world_size, lung_masker=masker and masker.identity,
                       train_images={domain_name(cfg, "a"): len(images_a), domain_name(cfg, "b"): len(images_b)})
        write_split(run_dir / SPLIT_FILE, split_rows(dataset))
    train_step = TrainStep(model)  # after the restore: a CUDA graph holds the state's addresses

    def save(at_step: int) -> None:
        ranks = all_ranks({"rng": rng_state(), "pools": model.pool_state()}, dist)  # every rank joins
        if dist.is_main:
            save_gan_checkpoint({"step": at_step, "total_steps": total, "seed": seed, "config": config_to_dict(cfg),
                                 "data_fingerprint": dataset.fingerprint, "model": model.state_dict(),
                                 "lung_masker": masker and masker.identity, "ranks": ranks}, ckpt_path)

    def step_fn(i: int) -> torch.Tensor:
        nonlocal order_epoch, batches_a, batches_b
        epoch, pos = divmod(i, steps_per_epoch)
        if epoch != order_epoch:
            g = torch.Generator().manual_seed(seed * 100_003 + epoch)
            batches_a = images_a.batches(epoch_order(len(images_a), steps_per_epoch, dist, t.batch_size, g))
            batches_b = images_b.batches(epoch_order(len(images_b), steps_per_epoch, dist, t.batch_size, g))
            order_epoch = epoch
        return train_step(batches_a[pos][0], batches_b[pos][0])

    def on_log(at_step: int, losses: dict, bar) -> None:
        nonlocal tick, cached
        tick = _log_losses(losses, model, writer, bar, at_step, tick)
        if cache_file is not None and not cached and dist.is_main:  # compiled by now: keep it
            cached = save_compiled(cache_file)

    def after_step(at_step: int) -> bool:
        if dist.is_main and at_step % t.image_every == 0:
            writer.add_image("translation", _image_grid(model), at_step)
        if dist.is_main and t.eval_every and at_step % t.eval_every == 0:
            _log_quality(model, images_a, images_b, cfg, writer, at_step, run_dir)
        return False

    order_epoch, batches_a, batches_b, tick = None, None, None, (time.perf_counter(), step)
    writer = tensorboard_writer(run_dir, t.tensorboard and run_dir is not None)
    with TrainingLoop("gan-train", ckpt_path, save, LOSS_NAMES, dev, dist, t.log_every,
                      saved_step=step if checkpoint is not None else None, quiet=not dist.is_main) as loop, \
            contextlib.closing(writer):
        interrupted = loop.run(step_fn, step, total, save_every=t.checkpoint_every, on_log=on_log,
                               after_step=after_step)
    if interrupted:
        loop.say_stopped(ckpt_path, extra=f" --data {data}")
    elif dist.is_main:
        print(f"trained {loop.step} steps; checkpoint {ckpt_path}; TensorBoard: tensorboard --logdir {run_dir}")
    return GanTrainResult(run_dir, loop.step, model, interrupted)


def _log_losses(losses: dict, model: CycleGAN, writer, bar, step: int, tick: tuple) -> tuple:
    """The mean ``losses`` since the last log, the learning rate and steps per second since ``tick`` (time,
    step) to TensorBoard and the bar; returns the new tick."""
    now = time.perf_counter()
    rate = (step - tick[1]) / max(now - tick[0], 1e-9)
    for name, value in losses.items():
        writer.add_scalar(f"loss/{name}", value, step)
    writer.add_scalar("lr", float(model.lr), step)
    writer.add_scalar("speed/steps_per_s", rate, step)
    l = losses
    bar.set_postfix(G=f"{l['gan_ab'] + l['gan_ba']:.3g}", cycle=f"{l['cycle_a'] + l['cycle_b']:.3g}",
                    identity=f"{l['identity_a'] + l['identity_b']:.3g}", D=f"{l['d_a'] + l['d_b']:.3g}", refresh=False)
    return now, step


def _image_grid(model: CycleGAN) -> torch.Tensor:
    """``(3, H', W')`` grid: real A | fake B | rec A over real B | fake A | rec B (first image)."""
    from torchvision.utils import make_grid
    o = model.out
    tiles = [model.real_a, o["fake_b"], o["rec_a"], model.real_b, o["fake_a"], o["rec_b"]]
    return make_grid(torch.cat([to_unit_range(x[:1].detach()) for x in tiles]).cpu(), nrow=3, padding=2)


def _log_quality(model: CycleGAN, images_a: DeviceImages | StreamedImages, images_b: DeviceImages | StreamedImages,
                 cfg: GanConfig, writer, step: int, run_dir: Path) -> None:
    """gan-eval measures (fallback features) of the first ``eval_images`` domain-A training images, against
    the first ``eval_images`` domain-B ones, and ``translations-step<step>.png``/``.pdf`` of the first few."""
    t = cfg.train
    films = images_a.get(torch.arange(min(t.eval_images, len(images_a))))[0]  # with a lung mask in channel 1
    real_b = images_b.get(torch.arange(min(t.eval_images, len(images_b))))[0][:, :1]  # a streamed set may not fit whole
    translated = in_batches(lambda x: translate_films(model.generators.ab, x, cfg), films,
                            cfg.synth.batch_size, model.device)
    result = measure_translation(films[:, :1].cpu(), translated, real_b.cpu(), device=model.device)
    for key in ("fd", "kid", "ssim_mean"):
        writer.add_scalar(f"quality/{key}", result[key], step)
    tqdm.write(f"step {step}: FD {result['fd']:.4g}, KID {result['kid']:.4g}, SSIM {result['ssim_mean']:.3f}")
    k = GRID_FILMS
    masks = films[:k, 1:] >= 0.5 if films.shape[1] > 1 else None
    stem = run_dir / f"translations-step{step}"
    translation_grid(films[:k, :1].cpu(), translated[:k], None if masks is None else masks.cpu(),
                     stem.with_suffix(".png"), stem.with_suffix(".pdf"))
