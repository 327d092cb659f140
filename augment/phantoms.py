"""Procedural chest X-ray phantoms: the built-in demo data and the data of the tests.

Each phantom has a body outline, two lung fields, ribs, spine, heart and diaphragm domes, with
per-patient variation. The classes differ as real ones do:

- ``normal``: clear lung fields;
- ``pneumonia``: a lobar consolidation, a dense patch filling part of one lung;
- ``covid``: bilateral, peripheral, lower-zone ground-glass opacities (faint, hazy patches near the
  outer lung borders of both lungs), the pattern radiologists describe for COVID-19 pneumonia.

Deterministic for a seed; two images of one patient share its anatomy.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("covid", "normal", "pneumonia")
DEMO_SIZE = 64
DEMO_COUNTS = {"covid": 36, "normal": 80, "pneumonia": 80}  # covid scarce, as in real collections


def _ellipse(yy, xx, cy, cx, ry, rx, soft):
    """Soft-edged ellipse mask in [0, 1] of ``(S, S)``."""
    d = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return np.clip((1 - d) / soft + 0.5, 0, 1)


def _blob(yy, xx, cy, cx, r):
    return np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))


def _anatomy(rng: np.random.Generator) -> dict:
    return {
        "lung_y": rng.uniform(-0.12, 0.0), "lung_x": rng.uniform(0.32, 0.4), "lung_ry": rng.uniform(0.5, 0.6),
        "lung_rx": rng.uniform(0.22, 0.28), "heart_r": rng.uniform(0.18, 0.26), "rib_gap": rng.uniform(0.11, 0.14),
        "dome": rng.uniform(0.35, 0.48), "body_rx": rng.uniform(0.78, 0.9), "gain": rng.uniform(0.85, 1.1),
    }


def make_phantom(label: str, size: int, anatomy: dict, rng: np.random.Generator) -> np.ndarray:
    """One ``uint8 (size, size)`` phantom of class ``label``."""
    return phantom_with_lungs(label, size, anatomy, rng)[0]


def phantom_with_lungs(label: str, size: int, anatomy: dict,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One phantom ``uint8 (size, size)`` (the same pixels as :func:`make_phantom`) and its exact lung
    mask ``bool (size, size)``: the lung fields below the clavicles and above the diaphragm domes, less
    the heart that covers them on the film (real lung masks exclude the heart too)."""
    a = anatomy
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    yy = yy + rng.uniform(-0.03, 0.03)  # positioning differs between exposures
    xx = xx + rng.uniform(-0.03, 0.03)
    soft = 6 / size
    body = _ellipse(yy, xx, 0.15, 0, 1.05, a["body_rx"], soft * 3)
    img = 0.06 + 0.4 * body
    lungs = np.zeros_like(yy)
    for side in (-1, 1):
        lung = _ellipse(yy, xx, a["lung_y"], side * a["lung_x"], a["lung_ry"], a["lung_rx"], soft * 2)
        lungs = np.maximum(lungs, lung)
    below_dome = yy > a["dome"] - 0.12 * np.cos(xx * 2.2)  # diaphragm domes close the lungs from below
    lungs = lungs * ~below_dome
    img -= 0.28 * lungs
    img += 0.2 * np.clip(1 - np.abs(xx) / 0.07, 0, 1) * body  # spine and mediastinum
    heart = _ellipse(yy, xx, 0.28, 0.1, a["heart_r"], a["heart_r"] * 1.25, soft * 2)
    img = np.maximum(img, 0.42 * heart * body)
    for k in range(9):  # posterior ribs: arcs across each lung
        rib_y = -0.62 + k * a["rib_gap"] + 0.3 * xx ** 2
        img += 0.09 * np.clip(1 - np.abs(yy - rib_y) / 0.022, 0, 1) * (np.abs(xx) < 0.75) * body

    disease = np.zeros_like(yy)
    if label == "pneumonia":  # one lobe of one lung, dense and fairly sharp
        side = rng.choice((-1, 1))
        cy = a["lung_y"] + rng.choice((-0.25, 0.22)) + rng.uniform(-0.05, 0.05)
        disease = np.clip(1.4 * _blob(yy, xx, cy, side * a["lung_x"], rng.uniform(0.12, 0.17)), 0, 1)
        disease *= 0.32
    elif label == "covid":  # both lungs, peripheral, lower zones, hazy
        for side in (-1, 1):
            for _ in range(rng.integers(2, 4)):
                cy = a["lung_y"] + rng.uniform(0.1, 0.4)
                cx = side * (a["lung_x"] + a["lung_rx"] * rng.uniform(0.35, 0.75))
                disease += _blob(yy, xx, cy, cx, rng.uniform(0.07, 0.12))
        disease = 0.2 * np.clip(disease, 0, 1.2)
    img += disease * lungs

    img = img * a["gain"] + rng.normal(0, 0.025, img.shape)
    mask = (lungs >= 0.5) & (heart * body < 0.5)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), mask


def write_phantoms(out: str | Path, n_per_class: int | Mapping[str, int], size: int = 256, seed: int = 0,
                   classes: tuple[str, ...] = CLASSES, masks: bool = False) -> Path:
    """Write ``n_per_class`` phantoms per class (or ``{class: count}``) as ``<out>/<class>/*.png`` and
    ``<out>/manifest.csv`` (``path,label,group_id,source``); consecutive pairs of images share a patient.

    With ``masks``, each phantom's exact lung mask (0 / 255) is also written to ``<out>/masks/<same
    relative path>`` and the manifest gains a ``mask`` column, so the folder serves the classifier and
    ``lungseg-train`` alike. The images are the same either way."""
    out = Path(out)
    counts = n_per_class if isinstance(n_per_class, Mapping) else dict.fromkeys(classes, n_per_class)
    rows = []
    for ci, label in enumerate(classes):
        (out / label).mkdir(parents=True, exist_ok=True)
        for i in range(counts[label]):
            patient = i // 2
            anatomy = _anatomy(np.random.default_rng([seed, ci, patient]))
            img, lungs = phantom_with_lungs(label, size, anatomy, np.random.default_rng([seed, ci, patient, i]))
            rel = f"{label}/{label}_{i:05d}.png"
            Image.fromarray(img).save(out / rel)
            rows.append({"path": rel, "label": label, "group_id": f"{label}-{patient:05d}", "source": "phantom"})
            if masks:
                (out / "masks" / label).mkdir(parents=True, exist_ok=True)
                Image.fromarray(lungs.astype(np.uint8) * 255).save(out / "masks" / rel)
                rows[-1]["mask"] = f"masks/{rel}"
    tmp = out / ".manifest.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "group_id", "source"] + ["mask"] * masks)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out / "manifest.csv")
    return out


def film(img: np.ndarray, rng: np.random.Generator, crop: float = 0.03, scale: tuple[float, float] = (0.5, 1.0),
         noise: float = 3.0) -> np.ndarray:
    """Another film of the same picture, ``uint8 (S, S)`` like ``img``: each border cropped by up to
    ``crop`` of the side (so the picture is also shifted and stretched), stored at a lower resolution
    (``scale`` of the side) and back, plus gaussian noise of ``noise`` gray levels."""
    s = img.shape[0]
    left, top, right, bottom = rng.uniform(0, crop * s, 4)
    im = Image.fromarray(img).transform((s, s), Image.Transform.EXTENT, (left, top, s - right, s - bottom),
                                        Image.Resampling.BILINEAR)
    small = max(8, round(s * rng.uniform(*scale)))
    im = im.resize((small, small), Image.Resampling.BILINEAR).resize((s, s), Image.Resampling.BILINEAR)
    out = np.asarray(im, np.float64) + rng.normal(0, noise, (s, s))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def place(img: np.ndarray, rng: np.random.Generator, zoom: float = 0.15, offset: float = 0.08) -> np.ndarray:
    """``img`` as another patient's film frames it: zoomed by up to ``zoom`` either way and moved by
    up to ``offset`` of the side (black fills in); ``uint8 (S, S)``."""
    s = img.shape[0]
    half = s / 2 / rng.uniform(1 - zoom, 1 + zoom)
    cx, cy = s / 2 + rng.uniform(-offset, offset, 2) * s
    box = (cx - half, cy - half, cx + half, cy + half)
    return np.asarray(Image.fromarray(img).transform((s, s), Image.Transform.EXTENT, box, Image.Resampling.BILINEAR))


def write_patient_films(out: str | Path, n_patients: int | Mapping[str, int], films: int = 3, size: int = 256,
                        seed: int = 0, classes: tuple[str, ...] = CLASSES) -> Path:
    """Class folders without a manifest, 1 to ``films`` films per patient (seeded), named
    ``<out>/<class>/<class><patient>_<n>.png`` (e.g. ``covid/covid007_2.png``): each film is
    :func:`film` of one rendering of the patient (framed by :func:`place`), as when one film is scanned
    or exported twice."""
    out = Path(out)
    counts = n_patients if isinstance(n_patients, Mapping) else dict.fromkeys(classes, n_patients)
    for ci, label in enumerate(classes):
        (out / label).mkdir(parents=True, exist_ok=True)
        for k in range(counts[label]):
            rng = np.random.default_rng([seed, ci, k, 1])
            img = place(make_phantom(label, size, _anatomy(rng), rng), rng)
            for n in range(int(rng.integers(1, films + 1))):
                Image.fromarray(film(img, rng, crop=0.015)).save(out / label / f"{label}{k:03d}_{n}.png")
    return out


def demo_lung_data(out_root: str | Path) -> Path:
    """The lung-segmentation demo set under ``<out_root>/demo-lungs`` (written once, then reused): 64²
    phantoms, 16 per class, with their lung masks (:func:`write_phantoms` with ``masks``)."""
    path = Path(out_root) / "demo-lungs"
    if not (path / "manifest.csv").exists():
        write_phantoms(path, 16, DEMO_SIZE, seed=1, masks=True)
    return path


def demo_data(out_root: str | Path) -> Path:
    """The built-in demo set under ``<out_root>/demo-data`` (written once, then reused): 64² phantoms,
    36 covid, 80 normal and 80 pneumonia."""
    path = Path(out_root) / "demo-data"
    if not (path / "manifest.csv").exists():
        write_phantoms(path, DEMO_COUNTS, DEMO_SIZE, seed=0)
    return path
