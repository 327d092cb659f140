"""Patient groups for data without patient ids: a file-name pattern, and near-duplicate images.

Near-duplicates are found with a perceptual hash (the low-frequency DCT hash of pHash, Zauner 2010):
each image is averaged down to 32², its 8×8 lowest DCT frequencies but the constant one give 63
bits (above or below their median), and two images are near-duplicates when their hashes differ
in at most ``threshold`` bits. Candidates come from multi-index hashing (Norouzi et al. 2012): the
bits are cut into ``threshold + 1`` bands, and two hashes within the threshold agree exactly on at
least one band, so only images sharing a band value are compared; a band value shared by more than
``BUCKET_CAP`` images (a cluster of look-alikes) is skipped in that band, so pairs stay near-linear.
Images without structure (flat gray, std below ``FLAT_STD`` gray levels at 32²) carry no identity and
are never paired.

Chest films look alike at 8×8 frequencies, so each hash pair is then verified on pixels: the
normalised cross-correlation of the two 32² thumbnails after removing their low frequencies
(thumbnail minus a gaussian blur of σ ``BLUR_SIGMA`` px, so the shared body outline counts little and
fine structure counts much), maximised over shifts of up to ``SHIFT`` px. A pair is kept when it
reaches ``min_correlation``.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

HASH_SIDE = 32   # the image is averaged down to HASH_SIDE² before the DCT
LOW = 8          # LOW × LOW lowest frequencies, the constant one left out: 63 bits
BITS = LOW * LOW - 1
FLAT_STD = 2.0   # thumbnails with a smaller standard deviation (gray levels) are flat
BUCKET_CAP = 256  # band values shared by more images are skipped in that band
BLUR_SIGMA = 3.0  # px at HASH_SIDE: what the high-pass thumbnail leaves out
SHIFT = 1         # px at HASH_SIDE: the correlation is maximised over shifts up to this


def _dct_matrix(n: int) -> torch.Tensor:
    """``(n, n)`` orthonormal DCT-II matrix: ``D @ x`` transforms the columns of ``x``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d.float()


def perceptual_hashes(images: torch.Tensor, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """63-bit DCT hashes of ``images``.

    Args:
        images: ``uint8 (N, 1, S, S)`` (or ``(N, S, S)``), e.g. :attr:`XrayDataset.images`.

    Returns:
        ``(hashes, flat)``: ``uint64 (N,)`` hashes and ``bool (N,)`` marking flat images, whose hash
        means nothing.
    """
    d = _dct_matrix(HASH_SIDE)[:LOW]
    weights = torch.tensor([1 << b for b in range(BITS)], dtype=torch.int64)
    hashes, flat = [], []
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].reshape(-1, 1, *images.shape[-2:]).float()
        x = F.adaptive_avg_pool2d(x, HASH_SIDE)[:, 0]                     # (B, 32, 32)
        coef = (d @ x @ d.T).flatten(1)[:, 1:]                            # (B, 63), no constant term
        bits = coef > coef.median(dim=1, keepdim=True).values
        hashes.append((bits.long() * weights).sum(1))
        flat.append(x.flatten(1).std(1) < FLAT_STD)
    if not hashes:
        return np.zeros(0, np.uint64), np.zeros(0, bool)
    return torch.cat(hashes).numpy().astype(np.uint64), torch.cat(flat).numpy()


def hash_pairs(hashes: np.ndarray, threshold: int, skip: np.ndarray | None = None) -> np.ndarray:
    """``int64 (P, 2)`` pairs ``i < j`` whose ``uint64`` hashes differ in at most ``threshold`` bits
    (multi-index hashing; ``skip`` marks hashes to leave out), sorted."""
    n = len(hashes)
    keep = np.flatnonzero(~skip) if skip is not None else np.arange(n)
    h = hashes[keep]
    edges = np.linspace(0, BITS, threshold + 2).round().astype(int)
    found = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        band = (h >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(band, kind="stable")
        starts = np.flatnonzero(np.r_[True, band[order][1:] != band[order][:-1], True])
        for a, b in zip(starts[:-1], starts[1:]):
            if b - a < 2 or b - a > BUCKET_CAP:
                continue
            members = order[a:b]
            i, j = np.triu_indices(len(members), 1)
            i, j = members[i], members[j]
            close = np.bitwise_count(h[i] ^ h[j]) <= threshold
            found.append(np.stack([keep[i[close]], keep[j[close]]], 1))
    if not found:
        return np.zeros((0, 2), np.int64)
    pairs = np.sort(np.concatenate(found), axis=1)
    return np.unique(pairs, axis=0).astype(np.int64)


def highpass_thumbnails(images: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """``float (N, 32, 32)``: ``uint8 (N, 1, S, S)`` images averaged down to 32², minus a gaussian
    blur of themselves (replicated borders)."""
    k = 2 * int(3 * BLUR_SIGMA) + 1
    g = torch.exp(-(torch.arange(k) - k // 2) ** 2 / (2 * BLUR_SIGMA ** 2))
    g = g / g.sum()
    out = []
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].reshape(-1, 1, *images.shape[-2:]).float()
        x = F.adaptive_avg_pool2d(x, HASH_SIDE)
        blur = F.conv2d(F.pad(x, (k // 2,) * 4, mode="replicate"), g.view(1, 1, 1, k))
        out.append((x - F.conv2d(blur, g.view(1, 1, k, 1)))[:, 0])
    return torch.cat(out) if out else torch.zeros(0, HASH_SIDE, HASH_SIDE)


def pair_correlations(thumbs: torch.Tensor, pairs: np.ndarray, chunk: int = 512) -> np.ndarray:
    """``float32 (P,)``: for each pair ``(i, j)`` of ``(P, 2)``, the normalised cross-correlation of
    the centre of ``thumbs[i]`` with ``thumbs[j]`` ``(N, T, T)``, best over shifts up to ``SHIFT`` px."""
    side = thumbs.shape[-1] - 2 * SHIFT
    out = []
    for start in range(0, len(pairs), chunk):
        p = torch.from_numpy(pairs[start:start + chunk])
        a = thumbs[p[:, 0], SHIFT:SHIFT + side, SHIFT:SHIFT + side].flatten(1)
        a = F.normalize(a - a.mean(1, keepdim=True), dim=1)
        b = thumbs[p[:, 1]]
        best = torch.full((len(p),), -1.0)
        for dy in range(2 * SHIFT + 1):
            for dx in range(2 * SHIFT + 1):
                w = b[:, dy:dy + side, dx:dx + side].flatten(1)
                w = F.normalize(w - w.mean(1, keepdim=True), dim=1)
                best = torch.maximum(best, (a * w).sum(1))
        out.append(best)
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def near_duplicate_pairs(images: torch.Tensor, threshold: int, min_correlation: float) -> np.ndarray:
    """``int64 (P, 2)`` pairs ``i < j`` of near-duplicate images among ``uint8 (N, 1, S, S)``: hashes
    within ``threshold`` bits whose high-pass thumbnails correlate at least ``min_correlation``."""
    hashes, flat = perceptual_hashes(images)
    pairs = hash_pairs(hashes, threshold, flat)
    return pairs[pair_correlations(highpass_thumbnails(images), pairs) >= min_correlation]


def union_find(n: int, pairs: np.ndarray) -> np.ndarray:
    """``int64 (n,)`` component labels (the smallest member's index) of ``n`` items joined by
    ``(P, 2)`` pairs."""
    parent = np.arange(n)

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs.tolist():
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([root(i) for i in range(n)], dtype=np.int64)


def near_duplicate_groups(images: torch.Tensor, threshold: int, min_correlation: float) -> np.ndarray:
    """``int64 (N,)`` group labels: near-duplicates (and chains of them) share a label."""
    return union_find(len(images), near_duplicate_pairs(images, threshold, min_correlation))


def check_pattern(pattern: str) -> re.Pattern:
    """The compiled ``pattern``; ``ValueError`` when it is not a regex with a group ``patient``."""
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"data.group_pattern {pattern!r} is not a regular expression ({e})") from None
    if "patient" not in rx.groupindex:
        raise ValueError(f"data.group_pattern {pattern!r} has no named group 'patient'; "
                         r"write e.g. '(?P<patient>[^_/]+)_\d+\.\w+$'")
    return rx


def pattern_groups(paths: Sequence[str], pattern: str) -> list[str | None]:
    """The ``patient`` group of ``pattern`` searched in each path ('/'-separated), None where it
    does not match (or matches an empty string)."""
    rx = check_pattern(pattern)
    out = []
    for p in paths:
        m = rx.search(p.replace("\\", "/"))
        out.append(m.group("patient") or None if m else None)
    return out
