"""Overlap measures of lung masks and their 95 % intervals by a bootstrap over patients
(:mod:`foundation.bootstrap`, the toolkit's one cluster bootstrap)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from foundation.bootstrap import bootstrap_mean_interval


def dice_iou(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice ``2|P∩T| / (|P| + |T|)`` and IoU ``|P∩T| / |P∪T|`` per image, ``(N,)`` each, of bool masks
    ``(N, 1, H, W)``; both are 1 when prediction and truth are empty."""
    p, t = pred.flatten(1).float(), target.flatten(1).float()
    inter, total = (p * t).sum(1), p.sum(1) + t.sum(1)
    empty = total == 0
    dice = torch.where(empty, 1.0, 2 * inter / total.clamp_min(1))
    iou = torch.where(empty, 1.0, inter / (total - inter).clamp_min(1))
    return dice, iou


def segmentation_report(dice: np.ndarray, iou: np.ndarray, groups: list[str], sources: list[str],
                        rounds: int = 1000, seed: int = 0) -> dict:
    """Mean Dice and IoU with intervals, for all images and per source:
    ``{"all": {"n", "n_groups", "dice", "dice_ci", "iou", "iou_ci"}, "<source>": {...}}``."""
    members = defaultdict(list)
    for i, s in enumerate(sources):
        members[s or "unknown"].append(i)
    report = {}
    for name, idx in [("all", list(range(len(dice))))] + sorted(members.items()) * (len(members) > 1):
        g = [groups[i] for i in idx]
        report[name] = {"n": len(idx), "n_groups": len(set(g)),
                        "dice": float(dice[idx].mean()), "dice_ci": bootstrap_mean_interval(dice[idx], g, rounds, seed),
                        "iou": float(iou[idx].mean()), "iou_ci": bootstrap_mean_interval(iou[idx], g, rounds, seed)}
    return report


def format_report(report: dict) -> str:
    """A plain-text table of :func:`segmentation_report`."""
    def ci(v):
        return f" [{v[0]:.3f}, {v[1]:.3f}]" if v else ""
    lines = [f"{'source':<16} {'images':>6} {'patients':>8}  Dice (95 % CI)           IoU (95 % CI)"]
    for name, r in report.items():
        lines.append(f"{name:<16} {r['n']:>6} {r['n_groups']:>8}  {r['dice']:.3f}{ci(r['dice_ci']):<18}  "
                     f"{r['iou']:.3f}{ci(r['iou_ci'])}")
    return "\n".join(lines)
