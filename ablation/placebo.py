"""The placebo arm's films: normal films made to look like the covid collection without a GAN. Each is
histogram-matched to a randomly drawn covid training film, then lightly blurred and given a little noise, and
labelled covid. If synthetic films help only by adding covid-labelled films with the covid collection's gray
levels, the placebo helps as much."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from augment.data import load_dataset, write_csv
from foundation.errors import UserError
from foundation.files import write_bytes_atomic

BLUR_SIGMA = 0.5   # pixels of the Gaussian blur
NOISE_SD = 2.0     # gray levels of the Gaussian noise
MANIFEST_COLUMNS = ("path", "label", "split", "source", "group_id", "source_image", "target_image", "seed")


def match_histogram(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``source`` ``uint8 (H, W)`` with the gray-level distribution of ``target`` ``uint8 (H', W')``: each gray
    level of the source goes to the target's value at the same quantile (mid-rank of the level, interpolated
    between the target's levels), so the order of the pixels is kept."""
    levels, where, counts = np.unique(source.ravel(), return_inverse=True, return_counts=True)
    t_levels, t_counts = np.unique(target.ravel(), return_counts=True)
    quantile = (np.cumsum(counts) - counts / 2) / source.size
    t_quantile = (np.cumsum(t_counts) - t_counts / 2) / target.size
    mapped = np.interp(quantile, t_quantile, t_levels.astype(np.float64))
    return np.clip(np.rint(mapped[where]), 0, 255).astype(np.uint8).reshape(source.shape)


def placebo_film(source: np.ndarray, target: np.ndarray, rng: np.random.Generator, blur: float = BLUR_SIGMA,
                 noise: float = NOISE_SD) -> np.ndarray:
    """One placebo film ``uint8 (H, W)``: :func:`match_histogram`, a Gaussian blur of ``blur`` pixels and Gaussian
    noise of ``noise`` gray levels."""
    x = match_histogram(source, target)
    if blur > 0:
        x = np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(blur)))
    x = x.astype(np.float64) + rng.normal(0, noise, x.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def write_placebo(data: str | Path, gan_cfg, n: int, dest: str | Path, seed: int) -> Path:
    """``n`` placebo films under ``<dest>/<domain_b>/`` and ``<dest>/manifest.csv``, from the training split of
    ``data`` read as the CycleGAN reads it (``gan_cfg``: size, resize, its two domains and their sources): each a
    domain-A film (drawn as ``synthesize`` draws its sources) matched to a domain-B film drawn at random, both
    training films. The manifest names both, and the patient is the source film's, as for synthetic films."""
    from cyclegan.domains import domain_rows, require_domain
    from cyclegan.synthesize import choose_sources
    dest = Path(dest)
    t = gan_cfg.train
    ds = load_dataset(data, gan_cfg.data, required=(t.domain_a, t.domain_b), quiet=True)
    sources, targets = domain_rows(ds, "train", gan_cfg, "a"), domain_rows(ds, "train", gan_cfg, "b")
    require_domain(ds, sources, "train", gan_cfg, "a", data)
    require_domain(ds, targets, "train", gan_cfg, "b", data)
    if n < 1:
        raise UserError(f"placebo: asked for {n} films; give at least 1")
    picks, _ = choose_sources(len(sources), n, torch.Generator().manual_seed(seed))
    rng = np.random.default_rng([seed, 7])
    drawn = rng.integers(len(targets), size=n)
    (dest / t.domain_b).mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (pick, draw) in enumerate(zip(picks.tolist(), drawn.tolist())):
        s, g = int(sources[pick]), int(targets[draw])
        film = placebo_film(ds.images[s, 0].numpy(), ds.images[g, 0].numpy(), rng)
        name = f"{t.domain_b}/placebo_{i:05d}.png"
        write_bytes_atomic(dest / name, _png(film))
        rows.append({"path": name, "label": t.domain_b, "split": "train", "source": "placebo",
                     "group_id": ds.groups[s], "source_image": str(ds.root / ds.paths[s]),
                     "target_image": str(ds.root / ds.paths[g]), "seed": seed})
    write_csv(dest / "manifest.csv", rows, MANIFEST_COLUMNS)
    return dest


def _png(image: np.ndarray) -> bytes:
    import io
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
