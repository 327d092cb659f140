"""``synthesize``: translate domain-A (normal) training images into domain B (covid) with a trained
generator, writing PNGs and a manifest the data stage reads as extra training images.

Only the generator's weights are read from the checkpoint, and its sha256 is the one stored when it was
saved. Each batch goes to pinned host memory without blocking, and a thread pool writes its PNGs while
the device translates the next batches."""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import torch
from PIL import Image

from augment.batches import DeviceImages
from augment.data import load_dataset, write_csv
from augment.lungmask import LungMasker
from augment.runsplit import SPLIT_FILE, changes, read_split
from augment.transforms import build_augment
from foundation.devices import pick_device
from foundation.errors import UserError
from foundation.outputs import output_path
from foundation.runs import resolve_run_file

from .checkpoint import CHECKPOINT_NAME, checkpoint_sha256, load_generator_ab
from .domains import check_masker, domain_rows, lung_masks, require_domain
from .inference import translate_films

MANIFEST_COLUMNS = ("path", "label", "split", "source", "group_id", "source_image", "checkpoint_sha256", "seed",
                    "lung_segmenter_sha256")
IN_FLIGHT = 3  # batches translated ahead of the PNG writers


def choose_sources(m: int, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Which of ``m`` sources each of ``n`` outputs translates, and whether it is augmented first.

    ``n <= m``: ``n`` distinct sources, none augmented. ``n > m``: every source once as it is, then
    ``n - m`` drawn with replacement and augmented so repeats differ. Returns ``int64 (n,)``, ``bool (n,)``.
    """
    order = torch.randperm(m, generator=generator)[:n]
    extra = torch.randint(m, (max(n - m, 0),), generator=generator)
    augmented = torch.cat([torch.zeros(len(order), dtype=torch.bool), torch.ones(len(extra), dtype=torch.bool)])
    return torch.cat([order, extra]), augmented


def synthesize(n: int, data: str | Path, out: str | Path = "runs", checkpoint: str | Path | None = None,
               dest: str | Path | None = None, overwrite: bool = False, batch_size: Optional[int] = None,
               device: str = "auto", seed: int = 0, lung_masker: Optional[LungMasker] = None) -> Path:
    """Write ``n`` synthetic domain-B PNGs under ``<dest>/<domain_b>/`` and ``<dest>/manifest.csv``.

    Args:
        n: number of images.
        data: the data the GAN was trained on; its training-split domain-A images are the sources.
        out: runs folder; the default checkpoint is its latest GAN run.
        checkpoint: a GAN run folder or checkpoint file.
        dest: output folder, default ``<out>/synthetic/<gan run name>``.
        overwrite: replace the images and manifest of an earlier synthesis in ``dest``.
        batch_size: images per generator call (default ``synth.batch_size`` of the run's config).
        seed: choice and augmentation of sources; the same seed and batch size give the same files.
        lung_masker: the segmenter a lung-constrained GAN was trained with (``data.lungseg_run``): each
            translation is blended with its source through the source's feathered lung mask.
    Returns:
        ``dest``.
    """
    if n < 1:
        raise UserError(f"--n {n}: give the number of images to write, at least 1")
    path = resolve_run_file(checkpoint, out, "gan", (CHECKPOINT_NAME,), CHECKPOINT_NAME)
    dev = pick_device(device)
    generator, cfg, state = load_generator_ab(path, dev)
    t = cfg.train
    dest = Path(dest) if dest is not None else Path(out) / "synthetic" / path.parent.name
    folder = dest / t.domain_b
    dataset = load_dataset(data, cfg.data, required=(t.domain_a,))
    _same_data(path, state, dataset, data)  # before an earlier synthesis is cleared
    masker = lung_masker if t.lung_constraint != "none" else None
    check_masker(state.get("lung_masker"), masker, path)
    sources = domain_rows(dataset, "train", cfg, "a")
    require_domain(dataset, sources, "train", cfg, "a", data)
    masks = lung_masks(dataset, cfg, masker)
    _clear_or_refuse(dest, folder, overwrite)

    picks, augmented = choose_sources(len(sources), n, torch.Generator().manual_seed(seed))
    picks_on_device = picks.to(dev)
    films = dataset.images[sources]
    if masks is not None:  # the lung mask rides in channel 1 and moves with its film
        films = torch.cat([films, masks[sources].to(torch.uint8) * 255], 1)
    images = DeviceImages(films, dataset.labels[sources], dev)
    augment = build_augment(cfg.synth.augment, cfg.data.size).to(dev)
    batch_size = batch_size or cfg.synth.batch_size
    sha = checkpoint_sha256(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{folder}: cannot create the output folder ({e.strerror or e}); choose another --dest") from e
    rows, writing, pool = [], deque(), ThreadPoolExecutor(8)
    try:  # a failed or interrupted synthesis leaves no images without a manifest
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, n, batch_size):
                x, _ = images.get(picks_on_device[start:start + batch_size])
                chosen = augmented[start:start + batch_size].nonzero().squeeze(1).to(dev)
                if len(chosen):
                    film, mask = augment(x[chosen, :1], x[chosen, 1:])
                    x[chosen] = torch.cat([film, mask], 1)
                pngs, ready = _to_host((translate_films(generator, x, cfg) * 255 + 0.5).to(torch.uint8))
                names = [f"{t.domain_b}/syn_{start + i:05d}.png" for i in range(len(pngs))]
                writing.append([pool.submit(_write_png, output_path(dest, name), png, ready)
                                for name, png in zip(names, pngs)])
                if len(writing) > IN_FLIGHT:
                    _wait(writing.popleft())  # a writer's error is raised here
                for name, pick in zip(names, picks[start:start + batch_size].tolist()):
                    k = int(sources[pick])
                    rows.append({"path": name, "label": t.domain_b, "split": "train", "source": "synthetic",
                                 "group_id": dataset.groups[k],
                                 "source_image": str(dataset.root / dataset.paths[k]),
                                 "checkpoint_sha256": sha, "seed": seed,
                                 "lung_segmenter_sha256": masker.identity if masker else ""})
            for batch in writing:
                _wait(batch)
        write_csv(dest / "manifest.csv", rows, MANIFEST_COLUMNS)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # no writer runs while the images are removed
        for p in folder.glob("syn_*.png"):
            p.unlink()
        raise
    finally:
        pool.shutdown(wait=True)
    print(f"wrote {n} synthetic {t.domain_b} images to {folder}/ and {dest / 'manifest.csv'} "
          f"(from {path}, step {state['step']}, seed {seed})")
    return dest


def _same_data(checkpoint: Path, state: dict, dataset, data) -> None:
    """Refuse data other than the GAN's: compared by content with its run's ``split.csv`` (same images,
    labels and splits; moving the folder is fine), else by the checkpoint's data fingerprint."""
    rows = read_split(checkpoint.parent / SPLIT_FILE)
    if rows is not None:
        diff = changes(rows, dataset)
    else:
        diff = "" if state.get("data_fingerprint") == dataset.fingerprint else "other files, labels or splits"
    if diff:
        raise UserError(f"{data}: not the data GAN checkpoint {checkpoint} was trained on ({diff}); "
                        "pass the GAN's --data")


def _clear_or_refuse(dest: Path, folder: Path, overwrite: bool) -> None:
    """Refuse to write over an earlier synthesis unless ``overwrite``; then remove its files."""
    old = sorted(folder.glob("syn_*.png")) if folder.is_dir() else []
    manifest = dest / "manifest.csv"
    if not old and not manifest.exists():
        return
    if not overwrite:
        raise UserError(f"{dest}: holds an earlier synthesis ({len(old)} images); pass --overwrite to replace it "
                        "or --dest for another folder")
    for p in old:
        p.unlink()
    manifest.unlink(missing_ok=True)


def _wait(futures) -> None:
    for future in futures:
        future.result()


def _to_host(images: torch.Tensor) -> tuple[torch.Tensor, Callable[[], None]]:
    """``images`` on the CPU, and a function that returns once they are there: from CUDA, a copy into
    pinned memory that does not block this thread, and a wait on its event."""
    if images.device.type != "cuda":
        return images, lambda: None
    host = torch.empty(images.shape, dtype=images.dtype, pin_memory=True)
    host.copy_(images, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    return host, copied.synchronize


def _write_png(path: Path, image: torch.Tensor, ready: Callable[[], None]) -> None:
    """``uint8 (1, H, W)`` → 8-bit grayscale PNG, written to a temporary name then renamed, once ``ready()``
    has returned (the image has reached host memory)."""
    ready()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        Image.fromarray(image[0].numpy()).save(tmp, format="PNG")
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"{path}: could not write ({e.strerror or e}); free disk space or choose another --dest") from e
    finally:
        tmp.unlink(missing_ok=True)
