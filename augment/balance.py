"""Balanced training sets: real images plus synthetic ones, chosen by a policy.

The output is a manifest CSV listing every real image with its split (validation and test rows
untouched) and the chosen synthetic images, all in the training split. ``classify-train --data
MANIFEST`` trains on it; classic augmentation still happens on the GPU in the training loop.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from foundation.errors import UserError, cli_command

from .data import DataConfig, XrayDataset, csv_rows, discover, load_dataset, warn, write_csv

COLUMNS = ["path", "label", "split", "group_id", "source", "origin", "source_image", "checkpoint_sha256"]


@dataclass(frozen=True)
class Policy:
    """How many synthetic images a class gets.

    ``match-majority``: every class up to the largest training class; ``ratio:R``: the same, but
    synthetic images make up at most R of a class; ``count:N``: N synthetic images per class.
    """
    kind: str
    value: float = 0.0

    @staticmethod
    def parse(text: str) -> "Policy":
        m = re.fullmatch(r"(match-majority)|ratio:([0-9.]+)|count:([0-9]+)", text.strip())
        if not m:
            raise UserError(f"--policy {text!r}: choose match-majority, ratio:R (0 <= R < 1) or count:N")
        if m.group(2) is not None:
            r = float(m.group(2))
            if not 0 <= r < 1:
                raise UserError(f"--policy {text!r}: R is the largest synthetic share of a class, 0 <= R < 1")
            return Policy("ratio", r)
        if m.group(3) is not None:
            return Policy("count", int(m.group(3)))
        return Policy("match-majority")

    def wanted(self, real: int, majority: int) -> int:
        """Synthetic images to add to a class with ``real`` training images."""
        if self.kind == "count":
            return int(self.value)
        gap = max(majority - real, 0)
        if self.kind == "ratio":
            return min(gap, int(self.value * real / (1 - self.value)))
        return gap


def balance(data: str | Path, synthetic: str | Path, policy: Policy, dest: str | Path, cfg: DataConfig,
            seed: int = 0, overwrite: bool = False) -> dict:
    """Write ``dest`` (a manifest CSV) of all real images plus the synthetic images ``policy`` picks.

    Synthetic images are drawn without replacement (seeded) from ``synthetic``'s manifest; those made
    from a patient outside the real training split are refused, so no validation or test patient
    leaks into training through its translation. Returns counts per class.
    """
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise UserError(f"{dest}: already exists; pass --overwrite or choose another --dest")
    real = load_dataset(data, cfg)
    syn_root, syn_records, _ = discover(synthetic, cfg.classes)
    if not syn_records:
        raise UserError(f"{synthetic}: no synthetic images found; run `{cli_command()} synthesize` first")
    meta = _manifest_rows(syn_root / "manifest.csv")
    pool = [syn_records[i] for i in training_patients(real, [r.group for r in syn_records],
                                                      [r.path for r in syn_records], synthetic)]

    real_train = Counter(real.classes[y] for y, s in zip(real.labels.tolist(), real.splits) if s == "train")
    majority = max(real_train.values())
    rng = np.random.default_rng(seed)
    rows, summary = [], {}
    for path, y, g, s, src in zip(real.paths, real.labels.tolist(), real.groups, real.splits, real.sources):
        rows.append({"path": str((real.root / path).resolve()), "label": real.classes[y], "split": s,
                     "group_id": g, "source": src, "origin": "real"})
    for c in real.classes:
        candidates = [r for r in pool if r.label == c]
        want = policy.wanted(real_train[c], majority) if candidates else 0
        take = [candidates[i] for i in sorted(rng.choice(len(candidates), min(want, len(candidates)), replace=False))]
        if want > len(take):
            warn(f"class {c}: the policy asks for {want} synthetic images but {synthetic} has {len(candidates)}")
        for r in take:
            m = meta.get(r.path, {})
            rows.append({"path": str((syn_root / r.path).resolve()), "label": c, "split": "train", "group_id": r.group,
                         "source": r.source or "synthetic", "origin": "synthetic",
                         "source_image": m.get("source_image", ""), "checkpoint_sha256": m.get("checkpoint_sha256", "")})
        summary[c] = {"real_train": real_train[c], "synthetic": len(take)}
    write_csv(dest, rows, COLUMNS)
    return summary


def training_patients(real: XrayDataset, groups: Sequence[str], paths: Sequence[str], where) -> list[int]:
    """Positions of the synthetic images (source patient ``groups``) made from a patient of ``real``'s
    training split. The others are refused with a warning naming one and the count: a validation or
    test patient must not reach training through its translation."""
    train_groups = {g for g, s in zip(real.groups, real.splits) if s == "train"}
    refused = [i for i, g in enumerate(groups) if g not in train_groups]
    if refused:
        warn(f"{where}: refused {len(refused)} synthetic image(s) made from patients outside the training "
             f"split (e.g. {paths[refused[0]]}, group {groups[refused[0]]})")
    return [i for i, g in enumerate(groups) if g in train_groups]


def keep_training_patients(real: XrayDataset, synthetic: XrayDataset, where) -> XrayDataset:
    """``synthetic`` without the images :func:`training_patients` refuses."""
    keep = training_patients(real, synthetic.groups, synthetic.paths, where)
    pick = torch.tensor(keep, dtype=torch.int64)
    lists = {k: [getattr(synthetic, k)[i] for i in keep] for k in ("paths", "groups", "splits", "sources", "hashes")}
    kept = set(lists["paths"])
    return replace(synthetic, images=synthetic.images[pick], labels=synthetic.labels[pick],
                   no_lungs=[p for p in synthetic.no_lungs if p in kept], **lists)


def _manifest_rows(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {row["path"]: row for row in csv_rows(f)}

