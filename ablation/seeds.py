"""Does adding CycleGAN images help? The ablation that tests it, with honest statistics.

For one backbone and several seeds, classifiers are trained and evaluated on the same held-out split
under three conditions:

- ``real``: real training images only, no classic augmentation;
- ``classic``: real images with classic GPU augmentation;
- ``synthetic``: real + classic + CycleGAN images balancing the minority class.

plus ``tstr`` (train on synthetic minority images, test on real: the minority class's real training
images are replaced by synthetic ones). With ``minority_fraction`` f, only a seeded fraction f of the
minority class's training patients is kept, and the CycleGAN is trained on that same subset.
By default the CycleGAN is trained once per experiment (seed 0) and seeds vary the classifiers; with
``gan_per_seed`` each seed trains its own CycleGAN (and synthetic set), so the paired interval also
covers the GAN's variance. Every finished cell is saved as JSON, so a rerun resumes where it stopped.

The model work comes in as callables (:class:`Stages`); :func:`ablation.stages.ablation_stages` builds them from the
model packages, and the tests pass stand-ins.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from augment.balance import COLUMNS, Policy, balance
from augment.data import DataConfig, csv_rows, load_dataset, write_csv
from foundation.errors import UserError
from foundation.files import write_text_atomic

CONDITIONS = ("real", "classic", "synthetic")
METRICS = ("accuracy", "minority_sensitivity", "minority_f1", "macro_auc")
# two-sided 95 % quantiles of Student's t for 2..30 degrees of freedom (with 1 it is 12.706: an interval
# wider than any rate's range, so fewer than 3 seeds give none)
T975 = (4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


@dataclass
class Stages:
    """The model work an ablation needs, supplied by the caller.

    - ``train_gan(manifest, out, seed) -> checkpoint``: CycleGAN on the manifest's training split, under ``out``.
    - ``synthesize(checkpoint, manifest, dest, n, seed) -> folder``: n synthetic minority images.
    - ``train_classifier(manifest, out, seed, classic_augment) -> run``: a classifier run.
    - ``evaluate(run) -> metrics``: ``accuracy``, ``sensitivity``/``f1`` per class, ``macro_auc``.
    - ``gan_eval(checkpoint, manifest) -> dict``: optional GAN quality figures.
    """
    train_gan: Callable[[Path, Path, int], Path]
    synthesize: Callable[[Path, Path, Path, int, int], Path]
    train_classifier: Callable[[Path, Path, int, bool], Path]
    evaluate: Callable[[Path], dict]
    gan_eval: Callable[[Path, Path], dict] | None = None


def run_ablation(data: str | Path, out: str | Path, stages: Stages, cfg: DataConfig, seeds=(0, 1, 2),
                 minority: str = "covid", minority_fraction: float | None = None,
                 policy: str = "match-majority", log: Callable[[str], None] = print,
                 settings: dict | None = None, gan_per_seed: bool = False) -> dict:
    """Run (or resume) every cell of the ablation in ``out`` and return the summary (also ``summary.json``).

    ``settings`` (e.g. the backbone) join the data and options in ``experiment.json``: a folder holding
    an experiment with other settings is refused, so finished cells are only reused for the same one.
    ``gan_per_seed``: one CycleGAN, synthetic set, balanced and tstr manifest per seed (files suffixed
    ``-seed<s>``) instead of one for all seeds. The experiment's manifests are made from whole images (the
    same split with or without ``cfg``'s lung settings); only the classifiers apply those."""
    out = Path(out)
    cfg = replace(cfg, lung_crop=False, lung_mask="none")
    if minority not in cfg.classes:
        raise UserError(f"--minority {minority!r}: not one of the classes {', '.join(cfg.classes)}")
    Policy.parse(policy)
    out.mkdir(parents=True, exist_ok=True)
    # gan_per_seed is recorded only when set, so folders written before the option existed still resume
    same_experiment(out / "experiment.json", {"data": str(Path(data).resolve()), "minority": minority,
                                               "minority_fraction": minority_fraction, "policy": policy,
                                               **({"gan_per_seed": True} if gan_per_seed else {}), **(settings or {})})
    base = out / "real.csv"
    if not base.exists():
        write_real_manifest(data, cfg, base, minority, minority_fraction, seed=0)
    real = load_dataset(base, cfg, quiet=True)
    train_counts = Counter(real.classes[y] for y, s in zip(real.labels.tolist(), real.splits) if s == "train")
    log(f"training images: {dict(train_counts)} (minority {minority}"
        + (f", kept fraction {minority_fraction})" if minority_fraction else ")"))
    n_synthetic = max(max(train_counts.values()) - train_counts[minority], train_counts[minority], 1)

    def synthetic_set(tag: str, seed: int) -> tuple[Path, Path, Path]:
        """CycleGAN, synthesis, balanced and tstr manifests, each kept for reruns: (checkpoint, balanced, tstr)."""
        gan = cached_json(out / f"gan{tag}.json", lambda: {"checkpoint": str(stages.train_gan(base, out, seed))})
        checkpoint = Path(gan["checkpoint"])
        syn = cached_json(out / f"synthetic{tag}.json", lambda: {
            "folder": str(stages.synthesize(checkpoint, base, out / f"synthetic{tag}", n_synthetic, seed))})
        balanced, tstr = out / f"balanced{tag}.csv", out / f"tstr{tag}.csv"
        if not balanced.exists():
            balance(base, Path(syn["folder"]), Policy.parse(policy), balanced, cfg)
        if not tstr.exists():
            write_tstr_manifest(balanced, tstr, minority)
        return checkpoint, balanced, tstr

    tags = {seed: f"-seed{seed}" if gan_per_seed else "" for seed in seeds}
    cells, sets = {}, {}
    for seed in seeds:
        sets[seed] = synthetic_set(tags[seed], seed if gan_per_seed else 0)
        for cond, manifest, classic in (("real", base, False), ("classic", base, True),
                                        ("synthetic", sets[seed][1], True)):
            cells[(cond, seed)] = _cell(out, stages, cond, seed, manifest, classic, minority, log)
    tstr_cell = _cell(out, stages, "tstr", seeds[0], sets[seeds[0]][2], True, minority, log)
    gan_quality = {}
    if stages.gan_eval:
        quality = {seed: cached_json(out / f"gan_quality{tags[seed]}.json", lambda c=sets[seed][0]: stages.gan_eval(c, base))
                   for seed in (seeds if gan_per_seed else seeds[:1])}
        gan_quality = {f"seed{seed}": q for seed, q in quality.items()} if gan_per_seed else quality[seeds[0]]
    summary = summarize(cells, seeds, minority)
    summary.update(tstr=tstr_cell, gan_quality=gan_quality, gan_per_seed=gan_per_seed, minority=minority,
                   minority_fraction=minority_fraction, seeds=list(seeds), n_synthetic=n_synthetic)
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(out / "table.md", format_table(summary) + "\n")
    return summary


def same_experiment(path: Path, experiment: dict) -> None:
    """Record ``experiment`` at ``path``, or refuse when the folder already holds a different one."""
    earlier = cached_json(path, lambda: experiment)
    changed = sorted(k for k in earlier.keys() | experiment.keys() if earlier.get(k) != experiment.get(k))
    if changed:
        raise UserError(f"{path.parent}: holds an ablation with other settings ({', '.join(changed)} differ); "
                        "give another --dest or delete that folder")


def cached_json(path: Path, compute: Callable[[], dict]) -> dict:
    """``compute()`` once; its JSON result is kept at ``path`` (folders made as needed) for later runs."""
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    write_text_atomic(path, json.dumps(value, indent=2, default=str) + "\n")
    return value


def _cell(out: Path, stages: Stages, cond: str, seed: int, manifest: Path, classic: bool, minority: str, log) -> dict:
    path = out / "cells" / f"{cond}-seed{seed}.json"
    if path.exists():
        log(f"cell {cond} seed {seed}: done earlier, kept")
        return json.loads(path.read_text())
    log(f"cell {cond} seed {seed}: training")
    path.parent.mkdir(parents=True, exist_ok=True)

    def compute():
        run = stages.train_classifier(manifest, out / "runs" / f"{cond}-seed{seed}", seed, classic)
        m = stages.evaluate(run)
        return {"run": str(run), "accuracy": m["accuracy"], "minority_sensitivity": m["sensitivity"][minority],
                "minority_f1": m["f1"][minority], "macro_auc": m["macro_auc"]}
    return cached_json(path, compute)


def write_real_manifest(data, cfg: DataConfig, dest: Path, minority: str, fraction: float | None, seed: int) -> None:
    """All real images with their resolved splits; with ``fraction``, only that seeded share of the
    minority class's training patients (whole patients) is kept."""
    ds = load_dataset(data, cfg)
    drop: set[str] = set()
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise UserError(f"--minority-fraction {fraction}: must be in (0, 1]")
        groups = sorted({g for g, s, y in zip(ds.groups, ds.splits, ds.labels.tolist())
                         if s == "train" and ds.classes[y] == minority})
        rng = np.random.default_rng(seed)
        keep = set(rng.choice(groups, max(1, round(fraction * len(groups))), replace=False).tolist())
        drop = set(groups) - keep
    rows = [{"path": str((ds.root / p).resolve()), "label": ds.classes[y], "split": s, "group_id": g,
             "source": src, "origin": "real"}
            for p, y, g, s, src in zip(ds.paths, ds.labels.tolist(), ds.groups, ds.splits, ds.sources)
            if not (s == "train" and ds.classes[y] == minority and g in drop)]
    write_csv(dest, rows, COLUMNS)


def write_tstr_manifest(balanced: Path, dest: Path, minority: str) -> None:
    """The balanced manifest with the minority class's real training images removed."""
    with open(balanced, newline="", encoding="utf-8") as f:
        rows = [r for r in csv_rows(f)
                if not (r["split"] == "train" and r["label"] == minority and r["origin"] == "real")]
    write_csv(dest, rows, COLUMNS)


# ---------------------------------------------------------------- statistics
def mean_interval(values) -> tuple[float, float | None, float | None]:
    """Mean and two-sided 95 % Student-t interval of ``values``; no bounds (None) for fewer than 3 values."""
    x = np.asarray(values, dtype=float)
    m = float(x.mean())
    if len(x) < 3:
        return m, None, None
    half = T975[min(len(x) - 1, 30) - 2] * float(x.std(ddof=1)) / math.sqrt(len(x))
    return m, m - half, m + half


def summarize(cells: dict, seeds, minority: str = "minority") -> dict:
    """Mean ± sd per condition and metric; the paired difference synthetic − classic over seeds."""
    table = {}
    for cond in CONDITIONS:
        table[cond] = {}
        for metric in METRICS:
            x = np.array([cells[(cond, s)][metric] for s in seeds], dtype=float)
            table[cond][metric] = {"mean": float(x.mean()), "sd": float(x.std(ddof=1)) if len(x) > 1 else math.nan}
    diff = {}
    for metric in METRICS:
        d = [cells[("synthetic", s)][metric] - cells[("classic", s)][metric] for s in seeds]
        m, lo, hi = mean_interval(d)
        diff[metric] = {"mean": m, "low": lo, "high": hi}
    return {"conditions": table, "synthetic_minus_classic": diff, "verdict": verdict(diff, len(seeds), minority)}


def verdict(diff: dict, n_seeds: int, minority: str = "minority") -> str:
    """One plain sentence: which way accuracy, minority sensitivity and macro AUC went with the synthetic
    images, each with its paired 95 % interval; with fewer than 3 seeds, that the interval is uninformative."""
    names = {"accuracy": "accuracy", "minority_sensitivity": f"{minority} sensitivity", "macro_auc": "macro AUC"}
    if n_seeds < 3:
        means = ", ".join(f"{name} {diff[k]['mean']:+.3f}" for k, name in names.items())
        why = ("there is no interval" if n_seeds == 1 else "a 95 % interval is uninformative (Student's t with 1 "
               "degree of freedom gives ±12.7 standard errors, wider than any rate's range)")
        return (f"With {n_seeds} seed{'s' * (n_seeds > 1)} {why}: run at least 3 seeds before drawing a conclusion. "
                f"Mean differences, synthetic − classic: {means}.")
    parts = []
    for k, name in names.items():
        d = diff[k]
        ci = f"95 % CI {d['low']:+.3f} to {d['high']:+.3f}"
        if d["low"] > 0:
            parts.append(f"{name} rose by {d['mean']:.3f} ({ci})")
        elif d["high"] < 0:
            parts.append(f"{name} fell by {-d['mean']:.3f} ({ci})")
        else:
            parts.append(f"{name} showed no measurable change ({d['mean']:+.3f}, {ci}, an interval that includes zero)")
    return (f"With the synthetic images, against real images with classic augmentation over {n_seeds} seeds: "
            + "; ".join(parts) + ".")


def format_table(summary: dict) -> str:
    """Markdown table of the summary, followed by the verdict."""
    head = "| condition | " + " | ".join(METRICS) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 1)]
    for cond, row in summary["conditions"].items():
        lines.append(f"| {cond} | " + " | ".join(f"{row[m]['mean']:.3f} ± {row[m]['sd']:.3f}" for m in METRICS) + " |")
    d = summary["synthetic_minus_classic"]
    lines.append("| synthetic − classic (95 % CI) | " + " | ".join(
        f"{d[m]['mean']:+.3f} " + (f"[{d[m]['low']:+.3f}, {d[m]['high']:+.3f}]" if d[m]["low"] is not None
                                   else "(no interval: fewer than 3 seeds)") for m in METRICS) + " |")
    if summary.get("tstr"):
        t = summary["tstr"]
        lines.append(f"\nTrain on synthetic {summary['minority']}, test on real: accuracy {t['accuracy']:.3f}, "
                     f"{summary['minority']} sensitivity {t['minority_sensitivity']:.3f}, F1 {t['minority_f1']:.3f}.")
    quality = summary.get("gan_quality") or {}
    for name, q in (quality.items() if summary.get("gan_per_seed") else [("", quality)] * bool(quality)):
        lines.append(f"GAN quality{' ' + name if name else ''}: " + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in q.items() if isinstance(v, (int, float, str))))
    lines.append("\n" + summary["verdict"])
    return "\n".join(lines)
