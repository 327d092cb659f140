"""``compare``: several classifier runs on the same test images, one table of metrics with patient-level
bootstrap intervals, and paired tests for every pair of runs with Holm-adjusted p-values.

- AUC: DeLong et al. (1988), computed with the midrank algorithm of Sun & Xu (2014), for the
  one-vs-rest AUC of every class (the ``eval.positive_class`` one marked).
- Accuracy: McNemar (1947) on the images one run gets right and the other wrong; the exact binomial
  test when there are fewer than 25 such discordant images, else chi-square with continuity correction.
- Holm (1979) over all pairs and tests together, which controls the family-wise error rate.

Both tests treat images as independent; several images of one patient make them somewhat optimistic,
which the patient-level intervals of the table are not.
"""
from __future__ import annotations

import copy
import json
import math
import sys
from collections import defaultdict
from itertools import combinations
from pathlib import Path
from typing import Sequence

import numpy as np

from augment.lungmask import LungMasker
from foundation.devices import pick_device
from foundation.errors import UserError
from foundation.files import json_safe, write_text_atomic
from foundation.html_report import write_html_report
from foundation.runs import new_run_dir, resolve_run_file

from .checkpoint import CHECKPOINTS, precision, tta_views
from .config import ClassifierConfig, EvalConfig
from .evaluate import load_evaluation
from .inference import predict
from .metrics import classification_metrics, roc_curve
from .plots import RocCurve, roc_figure, save_figure

EXACT_BELOW = 25  # McNemar: exact binomial test below this many discordant images


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x (N,)``, tied values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2)[inverse]


def delong(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs ``(R,)`` of ``R`` scorings ``(R, N)`` of the same images and their DeLong covariance ``(R, R)``.

    Sun & Xu's fast algorithm: the placement of a positive ``x`` among the ``n`` negatives,
    ``V10(x) = P(Y < x) + P(Y = x) / 2``, is ``(rank of x among all - rank among positives) / n``;
    the covariance is ``S10 / m + S01 / n`` of the placements' sample covariances (m positives)."""
    pos = np.asarray(positive, bool)
    m, n = int(pos.sum()), int((~pos).sum())
    if m < 2 or n < 2:
        raise UserError(f"DeLong's test needs at least 2 positive and 2 negative images, got {m} and {n}")
    scores = np.atleast_2d(scores).astype(np.float64)
    v10 = np.stack([(midranks(s)[pos] - midranks(s[pos])) / n for s in scores])
    v01 = np.stack([1 - (midranks(s)[~pos] - midranks(s[~pos])) / m for s in scores])
    auc = v10.mean(1)
    return auc, np.atleast_2d(np.cov(v10) / m + np.cov(v01) / n)


def delong_test(positive: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> dict:
    """DeLong's two-sided test of equal AUC for two scorings ``(N,)`` of the same images."""
    auc, cov = delong(positive, np.stack([score_a, score_b]))
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = float(auc[0] - auc[1])
    z = diff / math.sqrt(var) if var > 0 else 0.0
    return {"a": float(auc[0]), "b": float(auc[1]), "difference": diff, "statistic": z,
            "p": math.erfc(abs(z) / math.sqrt(2)), "method": "DeLong z"}


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's two-sided test of equal accuracy from per-image correctness ``(N,)`` bool of two runs.

    ``only_a`` (b): images only A gets right, ``only_b`` (c): only B. Below ``EXACT_BELOW`` discordant images the exact
    binomial test (``b ~ Bin(b + c, 1/2)``, doubled smaller tail), else chi-square with 1 degree of freedom
    of ``(|b - c| - 1)² / (b + c)`` (continuity-corrected)."""
    a, b_ = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    b, c = int((a & ~b_).sum()), int((~a & b_).sum())
    n = b + c
    if n < EXACT_BELOW:
        tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
        return {"only_a": b, "only_b": c, "statistic": float(min(b, c)), "p": min(1.0, 2 * tail),
                "method": "McNemar exact"}
    chi2 = (abs(b - c) - 1) ** 2 / n
    return {"only_a": b, "only_b": c, "statistic": chi2, "p": math.erfc(math.sqrt(chi2 / 2)), "method": "McNemar chi2 cc"}


def holm(p: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the given order: the i-th smallest of m is multiplied by
    ``m - i`` (i from 0), made non-decreasing and capped at 1."""
    order = np.argsort(p, kind="stable")
    adjusted, running = np.empty(len(p)), 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (len(p) - i) * p[k]))
        adjusted[k] = running
    return adjusted.tolist()


def shared_positions(hashes: list[list[str]]) -> list[np.ndarray]:
    """For each run's test images (their sha256 lists), the positions of the images every run has, in
    the first run's order; an image present k times in every run is matched k times."""
    where = []
    for run in hashes[1:]:
        places = defaultdict(list)
        for i, h in enumerate(run):
            places[h].append(i)
        where.append(places)
    picked = [[] for _ in hashes]
    for i, h in enumerate(hashes[0]):
        if all(places[h] for places in where):
            picked[0].append(i)
            for r, places in enumerate(where, 1):
                picked[r].append(places[h].pop(0))
    return [np.asarray(p, dtype=np.int64) for p in picked]


def run_names(paths: list[Path]) -> list[str]:
    """Run folder names, or whole paths where two runs share a folder name."""
    names = [p.parent.name for p in paths]
    return names if len(set(names)) == len(names) else [str(p.parent) for p in paths]


def compare(runs: Sequence[str | Path], data: str | Path, out: str | Path = "runs", dest: str | Path | None = None,
            cfg: EvalConfig | None = None, device: str = "auto", seed: int = 0, quiet: bool = False,
            overwrite: bool = False, lung_masker: LungMasker | None = None) -> dict:
    """Evaluate classifier ``runs`` (folders or checkpoints) on the same test images of ``data`` and
    compare them: metrics with intervals per run, McNemar and DeLong tests for every pair with Holm's
    adjustment. Each run's test images are chosen as ``evaluate`` chooses them and matched by content;
    where they differ, the runs are compared on the images all have (said in the report), and on none
    refused. Writes ``compare.md``, ``compare.json`` and ``roc.png`` to ``dest`` (default
    ``<out>/compare/<timestamp>``); a ``dest`` holding a comparison is refused unless ``overwrite``.
    ``lung_masker``: the segmenter of the runs trained on lung-cropped or lung-masked images (runs on whole
    images ignore it; a run trained with another segmenter is refused)."""
    cfg = cfg or EvalConfig()
    if len(runs) < 2:
        raise UserError("compare needs at least two classifier runs")
    if dest is not None and (Path(dest) / "compare.json").exists() and not overwrite:
        raise UserError(f"{dest}: holds a comparison; pass --overwrite to replace it or choose another --dest")
    dev = pick_device(device)
    paths = [resolve_run_file(r, out, "classifier", CHECKPOINTS) for r in runs]
    names = run_names(paths)
    loaded = []
    for path in paths:
        model, ckpt, ds, chosen = load_evaluation(data, path, dev, quiet=quiet, lung_masker=lung_masker)
        idx = chosen.indices
        prob = predict(model, ds.images[idx], ckpt["input_size"], dev, cfg.batch_size, **precision(ckpt),
                       tta=tta_views(ckpt)).numpy()
        loaded.append((ckpt, ds, idx.tolist(), prob))
    classes = tuple(loaded[0][0]["classes"])
    for path, (ckpt, *_) in zip(paths, loaded):
        if tuple(ckpt["classes"]) != classes:
            raise UserError(f"{path}: classes {', '.join(ckpt['classes'])} differ from {', '.join(classes)} of "
                            f"{paths[0]}; compare runs trained on the same classes")
    hashes = [[ds.hashes[i] for i in idx] for _, ds, idx, _ in loaded]
    picked = shared_positions(hashes)
    if len(picked[0]) == 0:
        raise UserError(f"{data}: the runs share no test image; compare runs trained on the same data and split")
    ds0, idx0 = loaded[0][1], [loaded[0][2][i] for i in picked[0]]
    y = ds0.labels[idx0].numpy()
    for path, (_, ds, idx, _), pos in zip(paths, loaded, picked):
        labels = ds.labels[[idx[i] for i in pos]].numpy()
        if (labels != y).any():
            raise UserError(f"{path}: its test images carry other labels than those of {paths[0]}; "
                            "compare runs evaluated on the same labelled data")
    probs = [prob[pos] for (*_, prob), pos in zip(loaded, picked)]
    groups = [ds0.groups[i] for i in idx0]

    result = {"data": str(data), "classes": list(classes), "n": len(y), "n_groups": len(set(groups)),
              "test_images_per_run": [len(h) for h in hashes], "runs": [], "tests": []}
    if any(len(h) != len(y) for h in hashes):
        result["note"] = (f"the runs' test sets differ; compared on the {len(y)} images all of them have "
                          f"(of {', '.join(str(len(h)) for h in hashes)})")
    for name, path, (ckpt, *_), prob in zip(names, paths, loaded, probs):
        m = classification_metrics(y, prob, classes, cfg.bootstrap, cfg.ci_level, seed, groups)
        result["runs"].append({"name": name, "checkpoint": str(path), "backbone": ckpt["model_args"]["name"],
                               "head": ckpt["model_args"].get("head", "linear"), "metrics": m})
    result["tests"] = paired_tests(y, probs, names, classes, cfg.positive_class)
    untested = [c for k, c in enumerate(classes) if min((y == k).sum(), (y != k).sum()) < 2]
    if untested:
        result["not_tested"] = f"no DeLong test for {', '.join(untested)}: fewer than 2 test images in or out of the class"
    positive = classes.index(cfg.positive_class) if cfg.positive_class in classes else 0
    result["roc_class"] = classes[positive]

    dest = Path(dest) if dest is not None else new_run_dir(out, "compare")
    dest.mkdir(parents=True, exist_ok=True)
    curves = []
    for r, prob in zip(result["runs"], probs):
        fpr, tpr, _ = roc_curve(y == positive, prob[:, positive])
        per_class = r["metrics"]["per_class"][classes[positive]]
        curves.append(RocCurve(f"{r['name']} ({r['backbone']})", fpr, tpr, per_class["auc"], per_class["auc_ci"]))
    save_figure(roc_figure(curves, f"{classes[positive]} vs rest: {len(runs)} runs on {len(y)} shared test images of "
                                   f"{data}"), dest / "roc")
    write_text_atomic(dest / "compare.json", json.dumps(json_safe(result), indent=2) + "\n")
    write_text_atomic(dest / "compare.md", markdown(result))
    write_html_report(dest / "report.html", markdown(result), [dest / "roc.png"], f"Comparison of {len(runs)} runs")
    result["dest"] = str(dest)
    if not quiet:
        print(markdown(result).split("\n## Paired")[0].rstrip())
        print(f"wrote compare.md, report.html, compare.json and roc.png/.pdf to {dest}", file=sys.stderr)
    return result


def paired_tests(y: np.ndarray, probs: list[np.ndarray], names: list[str], classes: tuple[str, ...],
                 positive_class: str) -> list[dict]:
    """For every pair of runs, McNemar on accuracy and DeLong on each class's one-vs-rest AUC (classes
    with fewer than 2 test images in or out left out), with Holm-adjusted p-values over all of them.
    ``y (N,)``, ``probs`` one ``(N, K)`` per run."""
    tests = []
    for i, j in combinations(range(len(probs)), 2):
        pair = {"run_a": names[i], "run_b": names[j]}
        correct = [p.argmax(1) == y for p in (probs[i], probs[j])]
        tests.append(pair | {"metric": "accuracy", "a": float(correct[0].mean()), "b": float(correct[1].mean()),
                             **mcnemar(*correct)})
        for c, name in enumerate(classes):
            if min((y == c).sum(), (y != c).sum()) < 2:  # no AUC variance to estimate
                continue
            tests.append(pair | {"metric": f"AUC {name} vs rest", "positive_class": name == positive_class,
                                 **delong_test(y == c, probs[i][:, c], probs[j][:, c])})
    for t, p in zip(tests, holm([t["p"] for t in tests])):
        t["p_holm"] = p
    return tests


def _ci(value: float, ci) -> str:
    if ci is None or value != value:
        return f"{value:.3f}"
    return f"{value:.3f} ({ci[0]:.3f}–{ci[1]:.3f})"


def markdown(result: dict) -> str:
    """The comparison as a Markdown report: metrics per run, per class, paired tests, methods."""
    classes, runs = result["classes"], result["runs"]
    level = round(100 * runs[0]["metrics"]["ci_level"])
    lines = [f"# Comparison of {len(runs)} classifiers", "",
             f"{result['n']} test images of {result['n_groups']} patients, the same for every run"
             + (f" ({result['note']})" if "note" in result else "") + f"; data {result['data']}.", "",
             f"## Metrics ({level} % intervals, bootstrap over patients)", "",
             "| run | backbone | accuracy | macro F1 | macro AUC |", "|---|---|---|---|---|"]
    for r in runs:
        m = r["metrics"]
        lines.append(f"| {r['name']} | {r['backbone']}{'' if r['head'] == 'linear' else ' + ' + r['head']} | "
                     f"{_ci(m['accuracy'], m['accuracy_ci'])} | {_ci(m['macro']['f1'], m['macro']['f1_ci'])} | "
                     f"{_ci(m['macro']['auc'], m['macro']['auc_ci'])} |")
    lines += ["", "| run | class | sensitivity | specificity | AUC (one vs rest) |", "|---|---|---|---|---|"]
    for r in runs:
        for c in classes:
            pc = r["metrics"]["per_class"][c]
            lines.append(f"| {r['name']} | {c} | {_ci(pc['sensitivity'], pc['sensitivity_ci'])} | "
                         f"{_ci(pc['specificity'], pc['specificity_ci'])} | {_ci(pc['auc'], pc['auc_ci'])} |")
    lines += ["", f"## Paired tests ({len(result['tests'])}, Holm-adjusted together)", "",
              "| run A | run B | test | A | B | statistic | p | p (Holm) |", "|---|---|---|---|---|---|---|---|"]
    for t in result["tests"]:
        what = t["metric"] + (" (positive class)" if t.get("positive_class") else "")
        counts = f" (b={t['only_a']}, c={t['only_b']})" if "only_a" in t else ""
        lines.append(f"| {t['run_a']} | {t['run_b']} | {what}: {t['method']}{counts} | {t['a']:.3f} | {t['b']:.3f} | "
                     f"{t['statistic']:.3f} | {t['p']:.4f} | {t['p_holm']:.4f} |")
    lines += ["", result["not_tested"] + "."] if "not_tested" in result else []
    lines += ["", "## Methods", "",
              "Accuracy: McNemar's test (1947) on the images exactly one run classifies correctly (b: only A, "
              f"c: only B); exact binomial below {EXACT_BELOW} such images, else chi-square with continuity "
              "correction. AUC: DeLong et al.'s test (1988; fast algorithm of Sun & Xu 2014) of each class's "
              "one-vs-rest AUC. p-values are adjusted by Holm's method (1979) over all pairs and tests. "
              "The tests treat images as independent: several images of one patient make their p-values "
              "somewhat optimistic; the intervals above resample patients. "
              f"ROC curves of the {result['roc_class']} class in roc.png.", ""]
    return "\n".join(lines)


def train_backbones(cfg: ClassifierConfig, backbones: Sequence[str], data: str | Path, out: str | Path = "runs",
                    synthetic: str | Path | None = None, device: str = "auto", seed: int = 0,
                    lung_masker: LungMasker | None = None) -> tuple[list[Path], bool]:
    """Train one classifier per backbone with the same data, split, seed and config (and ``lung_masker``) otherwise.
    Returns the run folders and whether a stop signal ended the series early."""
    from .train import Trainer
    runs = []
    for name in backbones:
        c = copy.deepcopy(cfg)
        c.model.backbone = name
        try:
            c.model.check()
        except ValueError as e:
            raise UserError(f"--backbones: {e}") from e
        trainer = Trainer(c, data, out, synthetic, device=device, seed=seed, lung_masker=lung_masker)
        runs.append(trainer.run())
        if trainer.stopped:
            return runs, True
    return runs, False
