"""Publication figures drawn with matplotlib: ROC curves with bootstrap bands and the operating point,
step-wise precision-recall curves, the confusion matrix with counts and row percentages, and CAM
overlays with a colour bar.

Each function returns a matplotlib ``Figure`` built without pyplot (Agg canvas, no display needed), so
callers can save it (:func:`save_figure`: PNG at 300 dpi and PDF), log it to TensorBoard
(``writer.add_figure``) or inspect its artists. Colours are the Okabe-Ito palette (Okabe & Ito 2008),
which readers with the common colour-vision deficiencies can tell apart.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from foundation.files import write_bytes_atomic

# Okabe-Ito: blue, vermillion, bluish green, reddish purple, orange, sky blue, black, yellow (least
# visible on white, so last)
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
DPI = 300
FPR_GRID = np.linspace(0, 1, 101)


@dataclass
class RocCurve:
    """One ROC curve: points ``fpr, tpr (P,)``; optionally a band ``(band_lo, band_hi)``, each ``(G,)`` on
    :data:`FPR_GRID`, and an operating point ``(fpr, tpr)`` with its description."""
    label: str
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float
    auc_ci: Sequence[float] | None = None
    band: tuple[np.ndarray, np.ndarray] | None = None
    point: tuple[float, float] | None = None
    point_label: str = ""


@dataclass
class PrCurve:
    """One precision-recall curve ``(P,)`` as :func:`classifier.metrics.pr_curve` returns it (recall rising
    from 0), its average precision and the prevalence of the positive class (a random classifier's precision)."""
    label: str
    recall: np.ndarray
    precision: np.ndarray
    ap: float
    prevalence: float


def colour(i: int) -> str:
    return OKABE_ITO[i % len(OKABE_ITO)]


def plain(text: str) -> str:
    """``text`` with its dollar signs escaped, so names are never read as mathtext."""
    return text.replace("$", r"\$")


def _square_axes(title: str, xlabel: str, ylabel: str, size: float = 5.0):
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.add_subplot()
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel=xlabel, ylabel=ylabel, aspect="equal")
    ax.set_title(plain(title), fontsize=9)
    ax.grid(alpha=0.3, linewidth=0.5)
    return fig, ax


def roc_figure(curves: list[RocCurve], title: str, band_label: str = "95 % bootstrap band") -> Figure:
    """ROC curves (one per class or per model) with AUC and interval in the legend, shaded bands, the
    chance diagonal and operating points."""
    fig, ax = _square_axes(title, "false positive rate (1 − specificity)", "sensitivity (true positive rate)")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.6", label="chance")
    for i, c in enumerate(curves):
        ci = f" [{c.auc_ci[0]:.3f}, {c.auc_ci[1]:.3f}]" if c.auc_ci is not None else ""
        ax.plot(c.fpr, c.tpr, color=colour(i), lw=1.6, label=f"{plain(c.label)}: AUC {c.auc:.3f}{ci}")
        if c.band is not None:
            ax.fill_between(FPR_GRID, *c.band, color=colour(i), alpha=0.18, lw=0,
                            label=band_label if i == 0 else None, gid=f"band-{i}")
        if c.point is not None:
            ax.plot(*c.point, marker="o", ms=7, mfc=colour(i), mec="black", mew=1.2, ls="none",
                    label=plain(c.point_label), gid="operating-point", zorder=5)
    ax.legend(loc="lower right", fontsize=7, framealpha=0.9)
    return fig


def pr_figure(curves: list[PrCurve], title: str) -> Figure:
    """Precision-recall curves as steps, so the area under each drawn curve is its average precision,
    with each class's prevalence as a dotted baseline."""
    fig, ax = _square_axes(title, "recall (sensitivity)", "precision (positive predictive value)")
    for i, c in enumerate(curves):
        # drawn from high recall down: steps-post holds each precision over the recall interval it is
        # counted for in the average precision, sum (R_n - R_{n-1}) P_n
        ax.plot(c.recall[::-1], c.precision[::-1], drawstyle="steps-post", color=colour(i), lw=1.6,
                label=f"{plain(c.label)}: AP {c.ap:.3f}")
        ax.axhline(c.prevalence, ls=":", lw=1.2, color=colour(i),
                   label=f"{plain(c.label)} prevalence {c.prevalence:.3f}")
    ax.legend(loc="lower left", fontsize=7, framealpha=0.9)
    return fig


def confusion_figure(cm: np.ndarray, classes: Sequence[str], title: str) -> Figure:
    """Confusion matrix ``(K, K)`` (rows true, columns predicted): each cell its count and its percentage
    of the true class (row), shaded by that percentage."""
    cm = np.asarray(cm)
    rows = cm.sum(1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    k = len(classes)
    fig = Figure(figsize=(1.4 + 1.1 * k, 0.9 + 1.0 * k), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(share * 100, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, label="% of the true class", shrink=0.8)
    for i in range(k):
        for j in range(k):
            pct = f"{100 * share[i, j]:.1f} %" if rows[i, 0] else "–"
            ax.text(j, i, f"{cm[i, j]}\n{pct}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted class", ylabel="true class")
    ax.set_xticklabels([plain(c) for c in classes], rotation=30 if max(map(len, classes)) > 8 else 0)
    ax.set_yticklabels([plain(c) for c in classes])
    ax.set_title(plain(title), fontsize=9)
    return fig


def overlay_figure(gray: np.ndarray, cam: np.ndarray, class_name: str, prob: float, title: str) -> Figure:
    """The X-ray ``(H, W)`` uint8 beside it with its class activation map ``(H, W)`` in [0, 1] over it, a
    colour bar, and the explained class and its probability written on the image."""
    fig = Figure(figsize=(6.4, 3.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    for ax in (left, right):
        ax.imshow(gray, cmap="gray", vmin=0, vmax=255)
        ax.set_axis_off()
    heat = right.imshow(cam, cmap="inferno", vmin=0, vmax=1, alpha=0.5)
    fig.colorbar(heat, ax=right, label="activation (normalised)", shrink=0.9)
    right.text(0.03, 0.97, f"{plain(class_name)}  p = {prob:.2f}", transform=right.transAxes, ha="left", va="top",
               fontsize=9, color="white", bbox={"facecolor": "black", "alpha": 0.6, "lw": 0, "pad": 2})
    fig.suptitle(plain(title), fontsize=9)
    return fig


def reliability_figure(confidence: Sequence, accuracy: Sequence, count: Sequence, ece: float, title: str) -> Figure:
    """The reliability diagram: accuracy against mean top-class probability in each bin (empty bins left out),
    with the diagonal of perfect calibration; the bins' share of images as bars underneath."""
    fig, ax = _square_axes(title, "mean highest probability in the bin", "accuracy in the bin")
    keep = [i for i, c in enumerate(count) if c]
    total = sum(count)
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    ax.bar([(i + 0.5) / len(count) for i in keep], [count[i] / total for i in keep], width=1 / len(count),
           color="lightgrey", label="share of images")
    ax.plot([confidence[i] for i in keep], [accuracy[i] for i in keep], "o-", color=colour(0),
            label=f"this model (ECE {100 * ece:.1f} %)")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def save_figure(fig: Figure, stem: str | Path, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write ``fig`` as ``<stem>.png`` (300 dpi) and ``<stem>.pdf`` (vector), each atomically."""
    written = []
    for fmt in formats:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=DPI)
        path = Path(stem).with_name(f"{Path(stem).name}.{fmt}")
        write_bytes_atomic(path, buffer.getvalue())
        written.append(path)
    return written
