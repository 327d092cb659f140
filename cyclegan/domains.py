"""Which films form the GAN's two domains (a class, optionally only some sources), and their lung masks."""
from __future__ import annotations

from typing import Literal, Optional

import torch

from augment.data import XrayDataset, warn
from augment.lungmask import MIN_LUNG_FRACTION, LungMasker, cached_lung_masks
from foundation.errors import UserError

from .config import GanConfig

Side = Literal["a", "b"]


def domain_name(cfg: GanConfig, side: Side) -> str:
    """``normal`` or, with sources chosen, ``normal (nihcxr8, kermany)``."""
    t = cfg.train
    label, sources = (t.domain_a, t.domain_a_sources) if side == "a" else (t.domain_b, t.domain_b_sources)
    return f"{label} ({', '.join(sources)})" if sources else label


def domain_rows(dataset: XrayDataset, split: str, cfg: GanConfig, side: Side) -> torch.Tensor:
    """``int64 (M,)`` positions of the ``split`` images of domain ``side``: its class, from its chosen sources."""
    t = cfg.train
    label, sources = (t.domain_a, t.domain_a_sources) if side == "a" else (t.domain_b, t.domain_b_sources)
    return dataset.indices(split, label, sources)


def require_domain(dataset: XrayDataset, rows: torch.Tensor, split: str, cfg: GanConfig, side: Side, data) -> None:
    """A one-line :class:`UserError` when domain ``side`` has no ``split`` image, naming the sources there are."""
    if len(rows):
        return
    t = cfg.train
    label, key = (t.domain_a, "domain_a_sources") if side == "a" else (t.domain_b, "domain_b_sources")
    present = sorted({dataset.sources[k] for k in dataset.indices(split, label).tolist()})
    hint = (f"its {split} images come from: {', '.join(s or '(none)' for s in present)}; change train.{key}"
            if present else "add images or change split_fractions")
    raise UserError(f"{data}: no {split}-split image of {domain_name(cfg, side)}; {hint}")


def lung_masks(dataset: XrayDataset, cfg: GanConfig, masker: Optional[LungMasker],
               quiet: bool = False) -> Optional[torch.Tensor]:
    """Lung masks ``bool (N, 1, S, S)`` of every image of ``dataset`` from ``masker`` (cached next to the
    images), or None without a masker. A lung-constrained GAN without one is a one-line :class:`UserError`.
    Images whose lungs cover less than :data:`augment.lungmask.MIN_LUNG_FRACTION` are counted in a warning:
    a composite leaves them almost unchanged."""
    if masker is None:
        if cfg.train.lung_constraint != "none":
            raise UserError(f"train.lung_constraint={cfg.train.lung_constraint} needs the lung masks of "
                            f"data.lungseg_run ({cfg.data.lungseg_run}), and none were given (in Python: "
                            "lung_masker=lungs.LungSegmenter(cfg.data.lungseg_run))")
        return None
    masks = cached_lung_masks(dataset.images, dataset.fingerprint, cfg.data.cache_dir, masker, quiet=quiet)
    faint = int((masks.flatten(1).float().mean(1) < MIN_LUNG_FRACTION).sum())
    if faint and not quiet:
        warn(f"{faint} of {len(masks)} images have lungs over less than {MIN_LUNG_FRACTION:.0%} of them in the masks "
             f"of {cfg.data.lungseg_run}; a lung-constrained translation leaves them almost unchanged")
    return masks


def check_masker(recorded: Optional[str], masker: Optional[LungMasker], checkpoint) -> None:
    """Refuse a segmenter other than the one a GAN checkpoint recorded (``recorded``: its identity, None when
    the GAN used none)."""
    if recorded is not None and masker is not None and masker.identity != recorded:
        raise UserError(f"{checkpoint}: trained with the lung masks of a segmenter with sha256 {recorded[:12]}, but "
                        f"data.lungseg_run now holds {masker.identity[:12]}; restore that segmenter checkpoint")
