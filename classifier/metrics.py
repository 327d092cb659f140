"""Classification metrics in numpy, with bootstrap confidence intervals.

Every metric is computed from per-image *weights* ``(B, N)``: ones for the point estimate, bootstrap
counts (a multinomial resample of the test images) for the intervals. One vectorised code path
serves both, so the intervals measure exactly the reported numbers.
"""
from __future__ import annotations

import numpy as np


def confusion_counts(y: np.ndarray, pred: np.ndarray, k: int, w: np.ndarray) -> np.ndarray:
    """``(B, K, K)`` weighted confusion matrices (rows: true class, columns: predicted) from ``w (B, N)``."""
    onehot = np.zeros((len(y), k * k))
    onehot[np.arange(len(y)), y * k + pred] = 1
    return (w @ onehot).reshape(-1, k, k)


def rates(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy ``(B,)`` and per-class precision, sensitivity, specificity, F1 ``(B, K)`` of ``cm (B, K, K)``.

    A rate whose denominator is zero is NaN (e.g. precision of a class never predicted).
    """
    tp = np.diagonal(cm, axis1=1, axis2=2)
    total = cm.sum((1, 2))
    actual, predicted = cm.sum(2), cm.sum(1)
    fp, fn = predicted - tp, actual - tp
    tn = total[:, None] - tp - fp - fn
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / predicted
        sensitivity = tp / actual
        specificity = tn / (tn + fp)
        f1 = 2 * tp / (2 * tp + fp + fn)
        accuracy = tp.sum(1) / total
    return {"accuracy": accuracy, "precision": precision, "sensitivity": sensitivity,
            "specificity": specificity, "f1": f1}


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


def roc_curve(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``, one point per distinct score plus the origin; predicted positive
    means ``score >= threshold``."""
    order = np.argsort(-score, kind="stable")
    s, p = score[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tp, fp = np.cumsum(p)[last], np.cumsum(~p)[last]
    tpr = np.r_[0, tp] / max(p.sum(), 1)
    fpr = np.r_[0, fp] / max((~p).sum(), 1)
    return fpr, tpr, np.r_[np.inf, s[last]]


def pr_curve(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """``(precision, recall, average_precision)``; AP is the step-wise sum ``sum (R_n - R_{n-1}) P_n``."""
    order = np.argsort(-score, kind="stable")
    s, p = score[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp, seen = np.cumsum(p)[last], last + 1
    precision, recall = tp / seen, tp / max(p.sum(), 1)
    ap = float(np.sum(np.diff(np.r_[0, recall]) * precision))
    return np.r_[1, precision], np.r_[0, recall], ap


def sensitivity_at_specificity(positive: np.ndarray, score: np.ndarray, specificity: float) -> tuple[float, float]:
    """Best sensitivity among thresholds whose specificity is at least ``specificity``, and that threshold."""
    fpr, tpr, thr = roc_curve(positive, score)
    ok = np.flatnonzero(1 - fpr >= specificity - 1e-12)
    best = ok[np.argmax(tpr[ok])]
    return float(tpr[best]), float(thr[best])


def bootstrap_weights(n: int, rounds: int, seed: int) -> np.ndarray:
    """``(rounds, n)`` resampling counts: each row draws ``n`` test images with replacement."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=rounds).astype(np.float64)


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap ``samples (B,)``, NaN rounds (metric undefined) left out."""
    if np.isnan(samples).all():
        return float("nan"), float("nan")
    lo, hi = np.nanpercentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def nanmean(values: np.ndarray) -> float:
    """Mean over the defined (non-NaN) values; NaN when none is defined."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if len(defined) else float("nan")


def classification_metrics(y: np.ndarray, prob: np.ndarray, classes: tuple[str, ...], rounds: int = 1000,
                           level: float = 0.95, seed: int = 0) -> dict:
    """Accuracy, per-class precision/sensitivity/specificity/F1/AUC, macro averages, confusion matrix,
    with ``level`` bootstrap intervals (``rounds`` resamples, seeded) for accuracy, sensitivity,
    specificity and AUC. ``y (N,)`` class indices, ``prob (N, K)`` class probabilities."""
    k, n = len(classes), len(y)
    pred = prob.argmax(1)
    w = np.vstack([np.ones((1, n)), bootstrap_weights(n, rounds, seed)]) if rounds else np.ones((1, n))
    r = rates(confusion_counts(y, pred, k, w))
    auc = np.stack([weighted_auc(y == c, prob[:, c], w) for c in range(k)], 1)

    def ci(a):
        return list(interval(a[1:], level)) if rounds else None

    per_class = {}
    for c, name in enumerate(classes):
        per_class[name] = {
            "support": int((y == c).sum()),
            "precision": float(r["precision"][0, c]), "f1": float(r["f1"][0, c]),
            "sensitivity": float(r["sensitivity"][0, c]), "sensitivity_ci": ci(r["sensitivity"][:, c]),
            "specificity": float(r["specificity"][0, c]), "specificity_ci": ci(r["specificity"][:, c]),
            "auc": float(auc[0, c]), "auc_ci": ci(auc[:, c]),
        }
    return {
        "n": n, "accuracy": float(r["accuracy"][0]), "accuracy_ci": ci(r["accuracy"]),
        "macro": {m: nanmean(r[m][0]) for m in ("precision", "sensitivity", "specificity", "f1")}
        | {"auc": nanmean(auc[0])},
        "per_class": per_class,
        "confusion": confusion_counts(y, pred, k, np.ones((1, n)))[0].astype(int).tolist(),
        "ci_level": level, "bootstrap_rounds": rounds,
    }
