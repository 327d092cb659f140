"""Classification metrics in numpy, with bootstrap confidence intervals over patients.

Every metric is computed from per-image *weights* ``(B, N)``: ones for the point estimate, bootstrap
counts for the intervals. The bootstrap resamples groups (patients), not images (the cluster bootstrap,
Field & Welsh 2007): images of one patient are correlated, and resampling them one by one makes the
intervals too narrow. A group drawn k times gives each of its images weight k. One vectorised code path
serves point estimate and intervals, so the intervals measure exactly the reported numbers.
"""
from __future__ import annotations

import numpy as np

from foundation.bootstrap import bootstrap_weights, group_index, interval, weighted_auc


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


def roc_band(positive: np.ndarray, score: np.ndarray, w: np.ndarray, grid: np.ndarray,
             level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise ``level`` percentile band ``(lo, hi)``, each ``(G,)``, of the sensitivity at the false positive
    rates ``grid (G,)`` over the resampled sets of weights ``w (B, N)`` (bootstrap weights of groups).

    Each resampled ROC curve is read off by linear interpolation between its points, as it is drawn;
    at a vertical step the top is taken (the sensitivity reachable at that false positive rate). Rounds
    without positives or negatives are left out."""
    levels, inverse = np.unique(-score, return_inverse=True)  # highest score first
    onehot = np.zeros((len(score), len(levels)))
    onehot[np.arange(len(score)), inverse] = 1
    tp, fp = np.cumsum((w * positive) @ onehot, 1), np.cumsum((w * ~positive) @ onehot, 1)
    tpr = np.full((len(w), len(grid)), np.nan)
    for b in np.flatnonzero((tp[:, -1] > 0) & (fp[:, -1] > 0)):
        tpr[b] = np.interp(grid, np.r_[0, fp[b] / fp[b, -1]], np.r_[0, tp[b] / tp[b, -1]])
    if np.isnan(tpr).all():
        return np.full(len(grid), np.nan), np.full(len(grid), np.nan)
    lo, hi = np.nanpercentile(tpr, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return lo, hi


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


def rates_at_threshold(positive: np.ndarray, score: np.ndarray, threshold: float,
                       w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity ``(B,)`` of calling ``score >= threshold`` positive, under weights ``w (B, N)``."""
    called = score >= threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = (w * (positive & called)).sum(1) / (w * positive).sum(1)
        spec = (w * (~positive & ~called)).sum(1) / (w * ~positive).sum(1)
    return sens, spec


def transferred_threshold(choose_positive: np.ndarray, choose_score: np.ndarray, positive: np.ndarray,
                          score: np.ndarray, specificity: float, w: np.ndarray) -> dict:
    """Choose the threshold on one set (validation) and apply it unchanged to another (test).

    The threshold gives the best sensitivity on the choosing set among those with specificity at least
    ``specificity``. Returns ``threshold``, the choosing set's ``chosen_sensitivity`` and
    ``chosen_specificity`` (floats), and ``sensitivity``, ``specificity`` ``(B,)`` on the other set under
    weights ``w (B, N)``."""
    sens, thr = sensitivity_at_specificity(choose_positive, choose_score, specificity)
    chosen_spec = rates_at_threshold(choose_positive, choose_score, thr, np.ones((1, len(choose_score))))[1]
    test_sens, test_spec = rates_at_threshold(positive, score, thr, w)
    return {"threshold": thr, "chosen_sensitivity": sens, "chosen_specificity": float(chosen_spec[0]),
            "sensitivity": test_sens, "specificity": test_spec}


def nanmean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the defined (non-NaN) values; NaN where none is defined."""
    defined = ~np.isnan(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(defined, values, 0).sum(-1) / defined.sum(-1)


def calibration(y: np.ndarray, prob: np.ndarray, w: np.ndarray, bins: int = 15) -> dict[str, np.ndarray]:
    """How far the probabilities can be trusted, for each row of resampling weights ``w (R, N)``: the expected
    calibration error of the top class (Guo et al. 2017: ``bins`` equal-width bins of the highest probability,
    the weighted mean gap between its mean and the accuracy in each bin) ``ece (R,)``, the multiclass Brier score
    (mean squared distance of ``prob (N, K)`` to the one-hot label, Brier 1950) ``brier (R,)``, and the first
    row's bins: ``confidence``, ``accuracy`` and ``count (bins,)`` (NaN where a bin is empty)."""
    confidence, correct = prob.max(1), (prob.argmax(1) == y).astype(np.float64)
    onehot = np.eye(prob.shape[1])[y]
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    member = np.eye(bins)[which]                                            # (N, bins)
    count = w @ member                                                      # (R, bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = (w @ (member * confidence[:, None])) / count
        accuracy = (w @ (member * correct[:, None])) / count
    gap = np.where(count > 0, np.abs(mean_conf - accuracy), 0.0)
    return {"ece": (count * gap).sum(1) / w.sum(1), "brier": w @ ((prob - onehot) ** 2).sum(1) / w.sum(1),
            "confidence": mean_conf[0], "accuracy": accuracy[0], "count": count[0]}


def classification_metrics(y: np.ndarray, prob: np.ndarray, classes: tuple[str, ...], rounds: int = 1000,
                           level: float = 0.95, seed: int = 0, groups=None) -> dict:
    """Accuracy, per-class precision/sensitivity/specificity/F1/AUC, macro averages, confusion matrix and
    :func:`calibration` (expected calibration error, Brier score, reliability bins), with ``level`` bootstrap intervals (``rounds`` resamples of the groups, seeded) for all but the macro
    precision, sensitivity and specificity. ``y (N,)`` class indices, ``prob (N, K)`` class probabilities,
    ``groups`` N group (patient) ids, None: each image its own group. A class without images in ``y`` (an
    external test set of some classes) has undefined sensitivity and AUC, and the macro figures average the
    classes present; the confusion matrix keeps all ``K`` classes."""
    k, n = len(classes), len(y)
    pred = prob.argmax(1)
    w = np.ones((1, n))
    if rounds:
        w = np.vstack([w, bootstrap_weights(n, rounds, seed, groups)])
    r = rates(confusion_counts(y, pred, k, w))
    auc = np.stack([weighted_auc(y == c, prob[:, c], w) for c in range(k)], 1)

    def ci(a):
        return list(interval(a[1:], level)) if rounds else None

    per_class = {}
    for c, name in enumerate(classes):
        per_class[name] = {"support": int((y == c).sum())}
        for m in ("precision", "sensitivity", "specificity", "f1"):
            per_class[name] |= {m: float(r[m][0, c]), f"{m}_ci": ci(r[m][:, c])}
        per_class[name] |= {"auc": float(auc[0, c]), "auc_ci": ci(auc[:, c])}
    cal = calibration(y, prob, w)
    present = np.bincount(y, minlength=k)[:k] > 0  # macro figures average the classes the images hold
    macro = {m: float(nanmean(r[m][0, present])) for m in ("precision", "sensitivity", "specificity", "f1")}
    macro |= {"f1_ci": ci(nanmean(r["f1"][:, present])), "auc": float(nanmean(auc[0, present])),
              "auc_ci": ci(nanmean(auc[:, present]))}
    return {
        "n": n, "n_groups": group_index(groups)[1] if groups is not None else n,
        "accuracy": float(r["accuracy"][0]), "accuracy_ci": ci(r["accuracy"]),
        "macro": macro, "per_class": per_class,
        "confusion": confusion_counts(y, pred, k, np.ones((1, n)))[0].astype(int).tolist(),
        "calibration": {"ece": float(cal["ece"][0]), "ece_ci": ci(cal["ece"]), "brier": float(cal["brier"][0]),
                        "brier_ci": ci(cal["brier"]), "bins": {key: [None if np.isnan(v) else float(v) for v in cal[key]]
                                                              for key in ("confidence", "accuracy", "count")}},
        "ci_level": level, "bootstrap_rounds": rounds,
    }
