"""Near-duplicate grouping: seconds for N images, and the share of planted duplicates found and of
distinct patients merged, from the hash pairs alone and after their pixel check.

The images are made here: distinct phantom patients (random class and anatomy), plus copies of
some of them, each shifted, cropped, stored at a lower resolution, noisy (``augment.phantoms.film``)
and, for half of them, re-encoded as JPEG. Grouping runs on the ``uint8 (N, 1, S, S)`` tensor, as
``load_dataset`` runs it on the cache.

    python benchmarks/bench_groups.py --n 20000 --size 128 --thresholds 6 --min-correlations 0.9 0.95
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from augment.groups import hash_pairs, highpass_thumbnails, pair_correlations, perceptual_hashes, union_find  # noqa: E402
from augment.phantoms import CLASSES, _anatomy, film, make_phantom, place  # noqa: E402
from common import cpu_name  # noqa: E402


def make_images(n: int, size: int, copy_share: float, crop: float, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """``uint8 (n, 1, size, size)`` images and ``int64 (n,)`` the patient each was made from."""
    rng = np.random.default_rng(seed)
    n_base = n - int(n * copy_share)
    patient = np.r_[np.arange(n_base), rng.integers(0, n_base, n - n_base)]
    images = np.empty((n, size, size), np.uint8)
    for i in range(n_base):
        r = np.random.default_rng([seed, i])
        images[i] = place(make_phantom(CLASSES[i % 3], size, _anatomy(r), r), r)
    for i in range(n_base, n):
        r = np.random.default_rng([seed, i])
        img = film(images[patient[i]], r, crop=crop, scale=(0.4, 1.0), noise=4.0)
        if i % 2:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "JPEG", quality=int(r.integers(50, 95)))
            img = np.asarray(Image.open(buf))
        images[i] = img
    return torch.from_numpy(images).unsqueeze(1), patient


def score(labels: np.ndarray, patient: np.ndarray) -> dict:
    """Share of copies grouped with their original, and of distinct patients merged with another."""
    n_base = int(np.sum(patient == np.arange(len(patient))))
    found = float(np.mean(labels[n_base:] == labels[patient[n_base:]])) if n_base < len(patient) else 1.0
    patients_per_group = {}
    for g, p in zip(labels.tolist(), patient.tolist()):
        patients_per_group.setdefault(g, set()).add(p)
    merged = set().union(*(ps for ps in patients_per_group.values() if len(ps) > 1))
    return {"planted_found": round(found, 4), "patients_merged": round(len(merged) / n_base, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="images in all")
    ap.add_argument("--size", type=int, default=128, help="side of the cached images")
    ap.add_argument("--copy-share", type=float, default=0.3, help="share of the images that are copies")
    ap.add_argument("--crop", type=float, default=0.02, help="copies lose up to this share of the side per border")
    ap.add_argument("--thresholds", type=int, nargs="+", default=[6])
    ap.add_argument("--min-correlations", type=float, nargs="+", default=[0.9])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"{date.today()} | {cpu_name()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} | "
          f"torch {torch.__version__} | commit {commit} | {' '.join(sys.argv)}")
    t0 = time.perf_counter()
    images, patient = make_images(args.n, args.size, args.copy_share, args.crop, args.seed)
    print(f"made {args.n} images of {args.size}² in {time.perf_counter() - t0:.0f} s")
    for t in args.thresholds:
        start = time.perf_counter()
        hashes, flat = perceptual_hashes(images)
        hashed = time.perf_counter()
        pairs = hash_pairs(hashes, t, flat)
        paired = time.perf_counter()
        corr = pair_correlations(highpass_thumbnails(images), pairs)
        checked = time.perf_counter()
        print(json.dumps({"threshold": t, "images": args.n, "hash_seconds": round(hashed - start, 2),
                          "pair_seconds": round(paired - hashed, 2), "check_seconds": round(checked - paired, 2),
                          "hash_pairs": len(pairs), **score(union_find(len(images), pairs), patient)}))
        for c in args.min_correlations:
            joined = time.perf_counter()
            labels = union_find(len(images), pairs[corr >= c])
            seconds = checked - start + time.perf_counter() - joined  # hash, pairs, check, union-find
            print(json.dumps({"threshold": t, "min_correlation": c, "seconds": round(seconds, 2),
                              "pairs": int((corr >= c).sum()), **score(labels, patient)}))


if __name__ == "__main__":
    main()
