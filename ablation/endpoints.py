"""The endpoints of a cross-validated ablation, from the pooled out-of-fold predictions of each arm, and their
paired differences between arms: each difference with a 95 % interval from a bootstrap over patients (the same
resamples for every arm, so the differences are paired) and its value in every fold.

- ``auc_in_source`` (primary): covid-vs-rest AUC within the covid source, the source with most covid training
  films, where the hospital cannot tell covid from the rest;
- ``sensitivity`` and ``sensitivity_in_source``: covid sensitivity at the threshold chosen on each fold's
  validation part, overall and within the covid source;
- ``calls_free_sources``: the share of films from sources without covid that are called covid (at that
  threshold); a classifier that learned the hospital rather than the disease calls few, one that learned the
  synthetic films' look may call more;
- ``accuracy`` (the most probable class) and ``macro_auc`` (one-vs-rest AUCs averaged over classes).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from augment.data import csv_rows, write_csv
from foundation.bootstrap import bootstrap_weights, interval, weighted_auc

ENDPOINTS = ("auc_in_source", "sensitivity", "sensitivity_in_source", "calls_free_sources", "accuracy", "macro_auc")
NAMES = {"auc_in_source": "covid-vs-rest AUC within {source}", "sensitivity": "covid sensitivity",
         "sensitivity_in_source": "covid sensitivity within {source}",
         "calls_free_sources": "share of films from covid-free sources called covid", "accuracy": "accuracy",
         "macro_auc": "macro AUC"}
# the differences reported, when both arms ran: (arm, against)
PAIRS = (("gan", "classic"), ("gan", "placebo"), ("gan-lungs", "classic"), ("gan-lungs", "placebo"),
         ("gan-lungs", "gan"), ("placebo", "classic"), ("classic", "real"))


@dataclass
class Predictions:
    """Out-of-fold predictions of one arm: one row per image, in the experiment's image order.

    Attributes:
        prob: ``(N, K)`` class probabilities; ``labels`` ``(N,)`` class indices; ``folds`` ``(N,)``;
        called: ``bool (N,)``, the image called covid at its fold's validation-chosen threshold.
    """
    paths: list[str]
    folds: np.ndarray
    labels: np.ndarray
    sources: list[str]
    patients: list[str]
    prob: np.ndarray
    called: np.ndarray
    classes: tuple[str, ...]


def prediction_columns(classes: Sequence[str], minority: str) -> list[str]:
    return ["path", "fold", "label", "source", "patient", *[f"prob_{c}" for c in classes], "threshold",
            f"called_{minority}"]


def write_predictions(path: Path, rows: list[dict], classes: Sequence[str], minority: str) -> None:
    write_csv(path, rows, prediction_columns(classes, minority))


def read_predictions(path: Path) -> list[dict]:
    """The rows of a ``predictions.csv``."""
    with open(path, newline="", encoding="utf-8") as f:
        return csv_rows(f)


def as_predictions(rows: list[dict], classes: Sequence[str], minority: str) -> Predictions:
    """:class:`Predictions` of rows of ``predictions.csv`` (in their order)."""
    return Predictions(
        paths=[r["path"] for r in rows], folds=np.array([int(r["fold"]) for r in rows], dtype=np.int64),
        labels=np.array([classes.index(r["label"]) for r in rows], dtype=np.int64),
        sources=[r["source"] for r in rows], patients=[r["patient"] for r in rows],
        prob=np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows], dtype=np.float64).reshape(-1, len(classes)),
        called=np.array([r[f"called_{minority}"] in ("1", "True", "true") for r in rows], dtype=bool),
        classes=tuple(classes))


def covid_sources(train_labels: Sequence[str], train_sources: Sequence[str], minority: str) -> tuple[str | None, list[str]]:
    """The source with most ``minority`` training films (ties: the first by name) and the sources with none."""
    counts = Counter(s for y, s in zip(train_labels, train_sources) if y == minority)
    every = sorted(set(train_sources))
    top = min(counts, key=lambda s: (-counts[s], s)) if counts else None
    return top, [s for s in every if counts[s] == 0]


def _rate(w: np.ndarray, hit: np.ndarray, among: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w * (hit & among)).sum(1) / (w * among).sum(1)


def endpoint_values(p: Predictions, w: np.ndarray, minority: str, source: str | None,
                    free: Sequence[str]) -> dict[str, np.ndarray]:
    """Every endpoint ``(B,)`` of predictions ``p`` under image weights ``w (B, N)`` (NaN where undefined)."""
    c = p.classes.index(minority)
    pos = p.labels == c
    src = np.asarray(p.sources, dtype=object)
    in_source = src == source if source is not None else np.zeros(len(pos), dtype=bool)
    in_free = np.isin(src, list(free)) if free else np.zeros(len(pos), dtype=bool)
    nan = np.full(len(w), np.nan)
    out = {"auc_in_source": (weighted_auc(pos[in_source], p.prob[in_source, c], w[:, in_source])
                             if in_source.any() else nan),
           "sensitivity": _rate(w, p.called, pos), "sensitivity_in_source": _rate(w, p.called, pos & in_source),
           "calls_free_sources": _rate(w, p.called, in_free),
           "accuracy": _rate(w, p.prob.argmax(1) == p.labels, np.ones(len(pos), dtype=bool))}
    aucs = np.stack([weighted_auc(p.labels == k, p.prob[:, k], w) for k in range(len(p.classes))], 1)
    defined = ~np.isnan(aucs)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["macro_auc"] = np.where(defined, aucs, 0).sum(1) / defined.sum(1)
    return out


def resampling_weights(patients: Sequence[str], folds: np.ndarray, rounds: int, seed: int) -> np.ndarray:
    """``(1 + rounds + K, N)`` image weights: all ones (the point estimate), ``rounds`` resamples of the patients
    (each drawn patient brings all its images, :func:`foundation.bootstrap.bootstrap_weights`), then one row per fold
    selecting its images."""
    n = len(patients)
    fold_rows = [(folds == f).astype(np.float64) for f in np.unique(folds)]
    return np.vstack([np.ones((1, n)), bootstrap_weights(n, rounds, seed, list(patients)) if rounds else
                      np.zeros((0, n)), *fold_rows])


def _finite(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def summarise(values: np.ndarray, rounds: int, k: int, level: float = 0.95) -> dict:
    """``{"value", "ci", "folds"}`` of one endpoint's ``(1 + rounds + K,)`` values; None where undefined."""
    lo, hi = interval(values[1:1 + rounds], level) if rounds else (np.nan, np.nan)
    return {"value": _finite(values[0]), "ci": None if np.isnan(lo) else [float(lo), float(hi)],
            "folds": [_finite(v) for v in values[1 + rounds:1 + rounds + k]]}


def sign(x: float | None) -> str:
    return "n/a" if x is None else "+" if x > 0 else "−" if x < 0 else "0"


def compare_arms(preds: dict[str, Predictions], minority: str, source: str | None, free: Sequence[str], rounds: int,
                 seed: int, level: float = 0.95) -> dict:
    """Each arm's endpoints and each :data:`PAIRS` difference (arm − against) whose arms both ran, with intervals
    from the same patient resamples and the value in every fold (``signs``: ``+``, ``−``, ``0`` or ``n/a``).
    Every arm must hold the same images in the same order."""
    arms = list(preds)
    first = preds[arms[0]]
    for arm in arms[1:]:
        if preds[arm].paths != first.paths:
            raise ValueError(f"arm {arm} predicts other images than arm {arms[0]}; the differences would not be paired")
    k = len(np.unique(first.folds))
    w = resampling_weights(first.patients, first.folds, rounds, seed)
    values = {arm: endpoint_values(p, w, minority, source, free) for arm, p in preds.items()}
    per_arm = {arm: {e: summarise(v[e], rounds, k, level) for e in ENDPOINTS} for arm, v in values.items()}
    pairs = {}
    for a, b in PAIRS:
        if a in values and b in values:
            diff = {}
            for e in ENDPOINTS:
                s = summarise(values[a][e] - values[b][e], rounds, k, level)
                diff[e] = s | {"signs": [sign(v) for v in s["folds"]]}
            pairs[f"{a} − {b}"] = diff
    return {"endpoints": per_arm, "differences": pairs, "n": len(first.paths), "n_patients": len(set(first.patients)),
            "folds": k, "rounds": rounds, "level": level}
