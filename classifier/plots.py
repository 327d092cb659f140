"""Small PNG figures drawn with PIL (no plotting library needed): confusion matrix, ROC/PR curves,
CAM overlays. Each returns ``uint8 (H, W, 3)``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75)]


def _font():
    return ImageFont.load_default()


def confusion_image(cm: np.ndarray, classes: tuple[str, ...], cell: int = 80) -> np.ndarray:
    """Confusion matrix ``(K, K)`` (rows true, columns predicted), cells shaded by row share."""
    k = len(classes)
    left, top = 90, 40
    img = Image.new("RGB", (left + k * cell + 10, top + k * cell + 30), "white")
    d = ImageDraw.Draw(img)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    for i in range(k):
        d.text((5, top + i * cell + cell // 2 - 5), classes[i][:12], fill="black", font=_font())
        d.text((left + i * cell + 5, top - 15), classes[i][:12], fill="black", font=_font())
        for j in range(k):
            shade = int(255 * (1 - 0.8 * share[i, j]))
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell - 1, top + (i + 1) * cell - 1)
            d.rectangle(box, fill=(shade, shade, 255), outline="gray")
            d.text((box[0] + cell // 2 - 10, box[1] + cell // 2 - 5), str(int(cm[i, j])),
                   fill="black" if shade > 120 else "white", font=_font())
    d.text((left, top + k * cell + 10), "rows: true class, columns: predicted", fill="black", font=_font())
    return np.asarray(img)


def curves_image(curves: list[tuple[str, np.ndarray, np.ndarray]], xlabel: str, ylabel: str,
                 diagonal: bool = False, size: int = 360) -> np.ndarray:
    """Line plot of ``(label, x, y)`` curves on [0, 1]², with a legend."""
    pad = 45
    img = Image.new("RGB", (size + 2 * pad + 140, size + 2 * pad), "white")
    d = ImageDraw.Draw(img)

    def xy(x, y):
        return pad + float(x) * size, pad + (1 - float(y)) * size

    d.rectangle((pad, pad, pad + size, pad + size), outline="black")
    for t in np.linspace(0, 1, 6):
        d.text((xy(t, 0)[0] - 8, pad + size + 5), f"{t:.1f}", fill="black", font=_font())
        d.text((5, xy(0, t)[1] - 5), f"{t:.1f}", fill="black", font=_font())
    d.text((pad + size // 2 - 30, pad + size + 22), xlabel, fill="black", font=_font())
    d.text((5, 10), ylabel, fill="black", font=_font())
    if diagonal:
        d.line([xy(0, 0), xy(1, 1)], fill=(180, 180, 180), width=1)
    for n, (label, x, y) in enumerate(curves):
        colour = COLOURS[n % len(COLOURS)]
        d.line([xy(a, b) for a, b in zip(x, y)], fill=colour, width=2)
        d.text((pad + size + 10, pad + 15 * n), label, fill=colour, font=_font())
    return np.asarray(img)


def heat_colours(cam: np.ndarray) -> np.ndarray:
    """A jet-like colour map: ``(H, W)`` in [0, 1] -> ``(H, W, 3)`` float in [0, 1]."""
    c = np.clip(cam, 0, 1)[..., None]
    return np.clip(np.concatenate([1.5 - np.abs(4 * c - 3), 1.5 - np.abs(4 * c - 2), 1.5 - np.abs(4 * c - 1)], -1), 0, 1)


def overlay(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The X-ray ``(H, W)`` uint8 beside its heat map blended over it ``(H, W)`` in [0, 1]."""
    g = np.repeat(gray[..., None].astype(np.float64) / 255, 3, -1)
    blend = (1 - alpha) * g + alpha * heat_colours(cam)
    return (np.concatenate([g, blend], 1) * 255).round().astype(np.uint8)


def save_png(rgb: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path
