"""The cluster bootstrap (Field & Welsh 2007) that every interval in the toolkit uses: images of one
patient are alike, so a resample draws patients and each image weighs its patient's draw count. Means and
the AUC under those weights live here too, so every package computes its intervals the same way."""
from __future__ import annotations

import numpy as np


def group_index(groups) -> tuple[np.ndarray, int]:
    """Each image's group number ``(N,)`` (in order of first appearance) and the number of groups."""
    number: dict = {}
    index = np.array([number.setdefault(g, len(number)) for g in groups], dtype=np.int64)
    return index, len(number)


def bootstrap_weights(n: int, rounds: int, seed: int, groups=None) -> np.ndarray:
    """``(rounds, n)`` resampling weights. Each round draws as many groups as there are, with
    replacement, and each image weighs its group's draw count; ``groups`` None: every image is its own
    group (images resampled one by one)."""
    index, g = group_index(groups) if groups is not None else (np.arange(n), n)
    if len(index) != n:
        raise ValueError(f"{len(index)} group ids for {n} images")
    counts = np.random.default_rng(seed).multinomial(g, np.full(g, 1 / g), size=rounds).astype(np.float64)
    return counts[:, index]


def bootstrap_mean_interval(values: np.ndarray, groups, rounds: int, seed: int = 0,
                            level: float = 0.95) -> list[float] | None:
    """Percentile interval of the mean of per-image ``values (N,)`` over ``rounds`` resamples of the
    ``groups`` (:func:`bootstrap_weights`: each drawn group brings all its images); None without rounds."""
    if not rounds:
        return None
    w = bootstrap_weights(len(values), rounds, seed, groups)  # (rounds, N)
    return list(interval(w @ values / w.sum(1), level))


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap ``samples (B,)``, NaN rounds (metric undefined) left out."""
    if np.isnan(samples).all():
        return float("nan"), float("nan")
    lo, hi = np.nanpercentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def mean_with_interval(values, groups, rounds: int, seed: int, level: float = 0.95) -> dict:
    """Mean of ``values (N,)`` (NaN left out) and its ``level`` interval from ``rounds`` bootstrap resamples
    of the ``groups`` (N patient ids; all images of a patient are drawn together).

    Returns ``{"value", "ci", "n", "n_groups"}``; ``value`` None when no value is defined, ``ci`` None
    without resamples. The same ``seed`` and groups give the same resamples, so means of paired
    differences are consistent with the means they compare.
    """
    v = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(v)
    v, groups = v[keep], [g for g, k in zip(groups, keep) if k]
    if not len(v):
        return {"value": None, "ci": None, "n": 0, "n_groups": 0}
    return {"value": float(v.mean()), "ci": bootstrap_mean_interval(v, groups, rounds, seed, level), "n": len(v),
            "n_groups": group_index(groups)[1]}


def weighted_auc(positive: np.ndarray, score: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ROC AUC ``(B,)``: the weighted probability that a positive outranks a negative, ties counting half
    (the Mann-Whitney statistic). ``positive`` bool ``(N,)``, ``score (N,)``, ``w (B, N)``."""
    levels, inverse = np.unique(score, return_inverse=True)
    onehot = np.zeros((len(score), len(levels)))
    onehot[np.arange(len(score)), inverse] = 1
    pos = (w * positive) @ onehot  # (B, U) positive weight at each score level
    neg = (w * ~positive) @ onehot
    below = np.cumsum(neg, 1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(1) / (pos.sum(1) * neg.sum(1))
