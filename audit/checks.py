"""The measures of a classifier audit as pure functions of tensors and arrays (no files, no model): where a
class activation map falls relative to the lungs, a linear probe that predicts the image source from
features, cross-validated by patient, and means with patient-level bootstrap intervals."""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from foundation.bootstrap import group_index, mean_with_interval
from foundation.probes import group_folds, probe_predictions


# ---------------------------------------------------------------- where the map falls
def _check_shapes(maps: torch.Tensor, masks: torch.Tensor) -> None:
    if maps.shape != masks.shape or maps.dim() != 3:
        raise ValueError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} must both be (N, H, W)")


def cam_mass_in_lungs(maps: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Share of each map's mass inside the lungs, ``sum(map · mask) / sum(map)``, ``(N,)``; NaN for a map
    with no mass.

    Args:
        maps: ``float (N, H, W)``, non-negative (a CAM).
        masks: ``bool (N, H, W)``, true on the lungs.
    """
    _check_shapes(maps, masks)
    maps = maps.detach().double().cpu()
    total = maps.sum((1, 2))
    inside = (maps * masks.cpu()).sum((1, 2))
    return torch.where(total > 0, inside / total.clamp(min=1e-300), torch.nan).numpy()


def peak_in_lungs(maps: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """The pointing game (Zhang et al. 2016): 1.0 where a map's highest pixel (the first in row-major order
    when several share the top value) lies inside the lungs, else 0.0; NaN for a map with no mass.
    ``maps`` and ``masks`` as in :func:`cam_mass_in_lungs`."""
    _check_shapes(maps, masks)
    flat = maps.detach().cpu().flatten(1)
    hit = masks.cpu().flatten(1).gather(1, flat.argmax(1, keepdim=True))[:, 0].double()
    return torch.where(flat.amax(1) > 0, hit, torch.nan).numpy()


def lung_area(masks: torch.Tensor) -> np.ndarray:
    """Share of each image the lungs cover, ``(N,)``, of masks ``bool (N, H, W)``: where a map that ignores
    anatomy (uniform, or its peak anywhere) would put its mass inside the lungs."""
    return masks.detach().cpu().double().mean((1, 2)).numpy()


# ---------------------------------------------------------------- means with intervals
def cam_summary(share: np.ndarray, peak: np.ndarray, area: np.ndarray, groups, rounds: int, seed: int,
                level: float = 0.95) -> dict:
    """Check 1 on a set of images, each ``(N,)``: the mean CAM mass inside the lungs, the pointing-game hit
    rate, the lung area, and the mass in excess of the area (what a map that ignores anatomy would give),
    each a :func:`mean_with_interval`."""
    return {name: mean_with_interval(v, groups, rounds, seed, level) for name, v in
            (("share", share), ("peak", peak), ("area", area), ("share_minus_area", share - area))}


def accuracy_summary(y: np.ndarray, predicted: dict[str, np.ndarray], groups, rounds: int, seed: int,
                     level: float = 0.95) -> dict:
    """Check 3 on a set of images: the accuracy of each variant's predictions ``{name: (N,)}`` against
    ``y (N,)``, and each variant's difference from ``plain``, each a :func:`mean_with_interval`."""
    correct = {name: (p == y).astype(np.float64) for name, p in predicted.items()}
    out = {name: mean_with_interval(c, groups, rounds, seed, level) for name, c in correct.items()}
    for name in correct:
        if name != "plain":
            out[f"{name}_minus_plain"] = mean_with_interval(correct[name] - correct["plain"], groups, rounds, seed, level)
    return out


def majority_rate(labels) -> tuple[object, float]:
    """The commonest label of ``labels (N,)`` and its share (ties: the first in sorted order)."""
    counts = Counter(np.asarray(labels).tolist())
    top = max(sorted(counts), key=counts.__getitem__)
    return top, counts[top] / len(labels)


# ---------------------------------------------------------------- the source probe
def source_probe(features: np.ndarray, sources: list[str], groups, folds: int, rounds: int, seed: int,
                 level: float = 0.95, l2: float = 1.0) -> dict:
    """Check 2: how well a linear probe on ``features (N, D)`` predicts each image's source, cross-validated
    over ``folds`` folds of patients (:func:`group_folds`, stratified by source), against always guessing the
    commonest source.

    Returns ``{"n", "n_groups", "folds", "sources": {source: images}, "majority_source", "accuracy",
    "majority_rate", "accuracy_minus_majority"}`` (the last three :func:`mean_with_interval`), or
    ``{"skipped": why}`` with a single source or fewer patients than folds.
    """
    names = sorted(set(sources))
    n_groups = group_index(groups)[1]
    if len(names) < 2:
        return {"skipped": f"all {len(sources)} images come from one source ({names[0] if names else 'none'}), "
                           "so there is no source to predict"}
    if n_groups < folds:
        return {"skipped": f"{n_groups} patients, fewer than the {folds} folds of the probe"}
    y = np.array([names.index(s) for s in sources])
    predicted = probe_predictions(features, y, group_folds(groups, sources, folds, seed), l2)
    top, _ = majority_rate(sources)
    correct, guess = (predicted == y).astype(np.float64), (y == names.index(top)).astype(np.float64)
    return {"n": len(y), "n_groups": n_groups, "folds": folds, "sources": dict(Counter(sources)),
            "majority_source": top, "accuracy": mean_with_interval(correct, groups, rounds, seed, level),
            "majority_rate": mean_with_interval(guess, groups, rounds, seed, level),
            "accuracy_minus_majority": mean_with_interval(correct - guess, groups, rounds, seed, level)}


# ---------------------------------------------------------------- the four checks together
def audit_checks(y: np.ndarray, predicted: dict[str, np.ndarray], share: np.ndarray, peak: np.ndarray,
                 area: np.ndarray, features: np.ndarray, groups: list, sources: list[str], classes: tuple[str, ...],
                 folds: int, rounds: int, seed: int, level: float = 0.95) -> dict:
    """The four checks on N images: true classes ``y (N,)``, predictions ``{"plain", "hidden", "kept"}``
    each ``(N,)``, per-image CAM mass inside the lungs, pointing-game hits and lung areas ``(N,)``,
    pooled features ``(N, D)``, patient ids and sources (N each).

    Returns ``{"cam", "source_probe", "lungs_hidden", "per_source"}``: check 1 for all images, per class and
    per source; check 2 for all images and within each class; check 3 with chance (1/K) and the
    commonest class's rate; check 4, accuracy (as is, lungs hidden, only lungs) and check 1 per source.
    """
    groups, sources = np.asarray(groups, dtype=object), np.asarray(sources, dtype=object)
    by_class = {c: y == k for k, c in enumerate(classes) if (y == k).any()}
    by_source = {s: sources == s for s in sorted(set(sources))}

    def cam(keep):
        return cam_summary(share[keep], peak[keep], area[keep], groups[keep].tolist(), rounds, seed, level)

    def probe(keep):
        return source_probe(features[keep], sources[keep].tolist(), groups[keep].tolist(), folds, rounds, seed,
                            level)

    def accuracy(keep):
        return accuracy_summary(y[keep], {k: p[keep] for k, p in predicted.items()}, groups[keep].tolist(), rounds,
                                seed, level)

    everything = np.ones(len(y), dtype=bool)
    top, rate = majority_rate(y)
    return {
        "cam": {"all": cam(everything), "per_class": {c: cam(k) for c, k in by_class.items()},
                "per_source": {s: cam(k) for s, k in by_source.items()}},
        "source_probe": {"all": probe(everything), "per_class": {c: probe(k) for c, k in by_class.items()}},
        "lungs_hidden": accuracy(everything) | {"chance": 1 / len(classes), "majority_class": classes[top],
                                                "majority_rate": rate},
        "per_source": {s: {"n": int(k.sum()), "n_groups": len(set(groups[k].tolist())), "accuracy": accuracy(k),
                           "cam": cam(k)} for s, k in by_source.items()},
    }
