"""The parts of a cross-validated ablation: K folds grouped by patient and stratified by label × source; in each
fold the test part is the fold, a validation part (about a tenth of the remaining patients, grouped, every label
in it) chooses the epoch and the threshold, and the rest trains. Pure functions of the image lists."""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from augment.balance import COLUMNS
from augment.data import write_csv
from foundation.errors import UserError
from foundation.probes import group_folds

VAL_FRACTION = 0.1  # of the patients outside the test fold


def strata(labels: Sequence[str], sources: Sequence[str]) -> list[str]:
    """The stratum of each image: its label and its source (``covid|ieee8023``)."""
    return [f"{label}|{source}" for label, source in zip(labels, sources)]


def assign_folds(groups: Sequence[str], labels: Sequence[str], sources: Sequence[str], k: int, seed: int) -> np.ndarray:
    """Fold ``0..k-1`` of each image ``(N,)``: a patient's images share a fold, and every label × source stratum
    spreads over the folds (:func:`foundation.probes.group_folds`). Too few patients is a one-line error."""
    patients = len(set(groups))
    if k < 2 or patients < k:
        raise UserError(f"--folds {k}: needs at least 2 folds and as many patients as folds ({patients} patients)")
    return group_folds(list(groups), strata(labels, sources), k, seed)


def patient_labels(groups: Sequence[str], values: Sequence[str]) -> dict[str, str]:
    """Each patient's commonest value (label or stratum), ties to the first seen."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for g, v in zip(groups, values):
        counts[g][v] += 1
    return {g: c.most_common(1)[0][0] for g, c in counts.items()}


def validation_patients(groups: Sequence[str], labels: Sequence[str], sources: Sequence[str], fraction: float,
                        seed: int, proportional: bool = False) -> set[str]:
    """About ``fraction`` of the patients (by images), drawn label by label: within a label, patients are taken in
    a seeded order that alternates between its sources until the label's share is reached (every source has a
    voice, however rare), or, ``proportional``, each source's own share of them (the part is then composed as the
    data is, which a threshold chosen on it needs); a label with at least two patients gives at least one and
    keeps at least one for training."""
    label_of, stratum_of = patient_labels(groups, labels), patient_labels(groups, strata(labels, sources))
    size = Counter(groups)
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()

    def take(order: list[str], at_least_one: bool = True) -> set[str]:
        """Patients from the front of ``order`` up to about ``fraction`` of its images (at least one, or only while
        a patient brings the count nearer); its last patient always trains."""
        want, taken, out = fraction * sum(size[g] for g in order), 0, set()
        for g in order[:-1]:
            if taken >= want or ((taken or not at_least_one) and taken + size[g] / 2 > want):
                break
            out.add(g)
            taken += size[g]
        return out

    for label in sorted(set(label_of.values())):
        by_source: dict[str, list[str]] = defaultdict(list)
        for g in sorted(p for p, lab in label_of.items() if lab == label):
            by_source[stratum_of[g]].append(g)
        queues = [list(rng.permutation(by_source[s])) for s in sorted(by_source)]
        queues = [queues[i] for i in rng.permutation(len(queues))]
        if proportional:
            drawn = set().union(*(take(q, at_least_one=False) for q in queues))
            chosen |= drawn or take([g for q in queues for g in q])  # a label of single-patient sources: one
        else:
            chosen |= take([q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)])  # round-robin
    return chosen


def fold_parts(groups: Sequence[str], labels: Sequence[str], sources: Sequence[str], folds: np.ndarray, fold: int,
               seed: int, minority: str, minority_fraction: float | None = None,
               val_fraction: float = VAL_FRACTION, proportional_val: bool = False) -> list[str]:
    """The part of each image in fold ``fold``: ``test`` (the fold), ``val`` (:func:`validation_patients`,
    ``proportional_val`` its ``proportional``), ``train`` or ``""`` (a minority training patient left out by
    ``minority_fraction``, which keeps that seeded share of them, at least one)."""
    parts = np.where(folds == fold, "test", "train").astype(object)
    rest = np.flatnonzero(folds != fold)
    val = validation_patients([groups[i] for i in rest], [labels[i] for i in rest], [sources[i] for i in rest],
                              val_fraction, seed * 1009 + fold, proportional_val)
    for i in rest:
        if groups[i] in val:
            parts[i] = "val"
    if minority_fraction is not None:
        if not 0 < minority_fraction <= 1:
            raise UserError(f"--minority-fraction {minority_fraction}: must be in (0, 1]")
        label_of = patient_labels([groups[i] for i in rest], [labels[i] for i in rest])
        scarce = sorted({groups[i] for i in rest if parts[i] == "train" and label_of[groups[i]] == minority})
        if scarce:
            rng = np.random.default_rng([seed, fold, 17])
            keep = set(rng.choice(scarce, max(1, round(minority_fraction * len(scarce))), replace=False).tolist())
            for i in rest:
                if parts[i] == "train" and groups[i] in scarce and groups[i] not in keep:
                    parts[i] = ""
    return parts.tolist()


def write_fold_manifests(paths: Sequence[str], labels: Sequence[str], groups: Sequence[str], sources: Sequence[str],
                         parts: Sequence[str], real: Path, gan: Path) -> None:
    """``real``: every image of the fold with its part as ``split`` (the classifiers' data); ``gan``: only its
    training images (a CycleGAN's data, so it never holds a test or validation patient)."""
    rows = [{"path": p, "label": y, "split": s, "group_id": g, "source": src, "origin": "real"}
            for p, y, g, src, s in zip(paths, labels, groups, sources, parts) if s]
    write_csv(gan, [r for r in rows if r["split"] == "train"], COLUMNS)
    write_csv(real, rows, COLUMNS)
