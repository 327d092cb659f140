"""Linear probes on features, cross-validated by patient: folds that keep each patient's images together,
multinomial logistic regression, and out-of-fold logits and predictions. Below the model packages and the audit, so
that all of them can use the probes."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .bootstrap import group_index


def group_folds(groups, strata, k: int, seed: int) -> np.ndarray:
    """Fold number in ``0..k-1`` of each image ``(N,)``: all images of a patient (``groups``, N ids) share a
    fold. Patients are dealt out largest first (ties in random order), each to the fold holding the fewest
    images of its commonest stratum (``strata``, N labels), then the fewest images, so every stratum spreads
    over the folds."""
    index, n_groups = group_index(groups)
    stratum, n_strata = group_index(strata)
    counts = np.zeros((n_groups, n_strata), dtype=np.int64)
    np.add.at(counts, (index, stratum), 1)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_groups)
    order = order[np.argsort(-counts.sum(1)[order], kind="stable")]
    per_stratum, total = np.zeros((k, n_strata)), np.zeros(k)
    fold_of = np.empty(n_groups, dtype=np.int64)
    for g in order:
        s = counts[g].argmax()
        f = np.lexsort((rng.random(k), total, per_stratum[:, s]))[0]
        fold_of[g] = f
        per_stratum[f] += counts[g]
        total[f] += counts[g].sum()
    return fold_of[index]


def fit_softmax_regression(x: torch.Tensor, y: torch.Tensor, k: int, l2: float = 1.0,
                           max_iter: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by L-BFGS: weights ``(D, k)`` and biases ``(k,)`` minimising the mean
    cross-entropy of ``x (n, D)`` against ``y (n,)`` plus ``l2 / (2n)`` times the squared weights (the biases
    are not penalised); the objective of scikit-learn's ``LogisticRegression(C=1 / l2)``."""
    x = x.double()
    w = torch.zeros(x.shape[1], k, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def objective():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 / (2 * len(x)) * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(objective)
    return w.detach(), b.detach()


def probe_logits(features: np.ndarray, labels: np.ndarray, folds: np.ndarray, l2: float = 1.0,
                 others: tuple[np.ndarray, ...] = ()) -> tuple[np.ndarray, list[np.ndarray]]:
    """Out-of-fold logits ``(N, K)`` of ``labels (N,)`` (integers ``0..K-1``) from ``features (N, D)``: for
    each fold, a :func:`fit_softmax_regression` on the other folds' features, standardised with their mean
    and standard deviation, scores the fold. Each array of ``others`` ``(M, D)`` (images no fold holds) is
    scored by every fold's probe: ``(F, M, K)`` for F folds."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    k = int(y.max()) + 1
    out = np.empty((len(y), k))
    scored = [[] for _ in others]
    for f in np.unique(folds):
        test = torch.from_numpy(folds == f)
        train = ~test
        mean, sd = x[train].mean(0), x[train].std(0, correction=0).clamp(min=1e-8)
        w, b = fit_softmax_regression((x[train] - mean) / sd, y[train], k, l2)
        out[test.numpy()] = (((x[test] - mean) / sd) @ w + b).numpy()
        for into, o in zip(scored, others):
            into.append((((torch.as_tensor(np.asarray(o), dtype=torch.float64) - mean) / sd) @ w + b).numpy())
    return out, [np.stack(s) for s in scored]


def probe_predictions(features: np.ndarray, labels: np.ndarray, folds: np.ndarray, l2: float = 1.0) -> np.ndarray:
    """Out-of-fold predictions ``(N,)`` of ``labels (N,)`` (integers ``0..K-1``) from ``features (N, D)``: for
    each fold, a :func:`fit_softmax_regression` on the other folds' features, standardised with their mean
    and standard deviation, predicts the fold."""
    return probe_logits(features, labels, folds, l2)[0].argmax(1)
