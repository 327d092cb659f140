"""Figures of a classifier audit, in the style of :mod:`classifier.plots` (matplotlib without pyplot, the
Okabe-Ito palette; save with :func:`classifier.plots.save_figure`): how much of each CAM falls inside the
lungs per class and per source, and example maps over the X-ray with the segmenter's lung outline."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from classifier.plots import colour, plain
from lungs.inference import overlay


def share_figure(share: np.ndarray, area: np.ndarray, classes: list[str], sources: list[str], title: str) -> Figure:
    """Two panels, by true class and by source: each category's per-image CAM mass inside the lungs
    ``share (N,)`` as a box with its images as points, and its mean lung area ``area (N,)`` as a dashed line
    (where a map that ignores anatomy would sit). ``classes`` and ``sources``: N names each."""
    fig = Figure(figsize=(8.0, 3.8), layout="constrained")
    rng = np.random.default_rng(0)  # jitter of the points only
    for ax, (what, names) in zip(fig.subplots(1, 2, sharey=True), (("true class", classes), ("source", sources))):
        names = np.asarray(names, dtype=object)
        categories = sorted(set(names.tolist()))
        for i, c in enumerate(categories):
            keep = (names == c) & ~np.isnan(share)
            values = share[keep]
            if len(values):
                ax.boxplot(values, positions=[i], widths=0.5, showfliers=False, medianprops={"color": "black"},
                           boxprops={"color": colour(i)}, whiskerprops={"color": colour(i)}, capprops={"color": colour(i)})
                ax.plot(i + rng.uniform(-0.15, 0.15, len(values)), values, "o", ms=3, alpha=0.6, color=colour(i))
            ax.hlines(area[names == c].mean(), i - 0.35, i + 0.35, colors="black", linestyles="--", lw=1.2,
                      label="lung area: a map that ignores anatomy" if i == 0 else None)
        ax.set_xticks(range(len(categories)), [plain(f"{c}\n({(names == c).sum()})") for c in categories],
                      rotation=30 if max(map(len, categories)) > 10 else 0)
        ax.set(ylim=(-0.02, 1.02), xlabel=what, xlim=(-0.6, len(categories) - 0.4))
        ax.grid(axis="y", alpha=0.3, linewidth=0.5)
    fig.axes[0].set_ylabel("share of the map's mass inside the lungs")
    fig.axes[0].legend(loc="lower left", fontsize=7, framealpha=0.9)
    fig.suptitle(plain(title), fontsize=9)
    return fig


def examples_figure(gray: np.ndarray, maps: np.ndarray, masks: np.ndarray, titles: list[str], title: str,
                    columns: int = 3) -> Figure:
    """A grid of X-rays ``gray (B, H, W)`` in [0, 1] with their class activation maps ``(B, H, W)`` in [0, 1]
    over them, the outline of the lung masks ``bool (B, H, W)`` drawn in red and each map's peak marked, each
    panel titled by ``titles`` (B)."""
    rows = -(-len(gray) // columns)
    fig = Figure(figsize=(2.3 * columns + 0.8, 2.5 * rows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, g, cam, mask, text in zip(axes, gray, maps, masks, titles):
        ax.imshow(overlay((g * 255).round().astype(np.uint8), mask), interpolation="none")
        heat = ax.imshow(cam, cmap="inferno", vmin=0, vmax=1, alpha=0.45, interpolation="none")
        py, px = np.unravel_index(np.argmax(cam), cam.shape)
        ax.plot(px, py, marker="+", ms=10, mew=2, color="white")
        ax.set_title(plain(text), fontsize=7)
    fig.colorbar(heat, ax=axes.tolist(), label="activation (normalised); + peak", shrink=0.7)
    fig.suptitle(plain(title), fontsize=9)
    return fig
