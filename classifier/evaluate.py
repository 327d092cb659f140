"""``evaluate``: metrics with bootstrap intervals, per-source and covid-vs-rest views, plots, a report,
and optionally CAM overlays, written next to the checkpoint in ``<run>/eval``."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from augment.data import load_dataset
from augment.runtime import pick_device, resolve_run_file, write_text_atomic

from .checkpoint import CHECKPOINTS, data_config, load_classifier
from .config import EvalConfig
from .inference import predict
from .metrics import (bootstrap_weights, classification_metrics, interval, pr_curve, roc_curve,
                      sensitivity_at_specificity, weighted_auc)
from .overlays import write_overlays
from .plots import confusion_image, curves_image, save_png
from .report import key_table, markdown_report


def binary_view(y: np.ndarray, prob: np.ndarray, positive: int, cfg: EvalConfig, seed: int) -> dict:
    """One class against the rest: AUC with interval and the best sensitivity at ``cfg.specificity``."""
    pos, score = y == positive, prob[:, positive]
    w = np.vstack([np.ones((1, len(y))), bootstrap_weights(len(y), cfg.bootstrap, seed)])
    auc = weighted_auc(pos, score, w)
    sens, thr = sensitivity_at_specificity(pos, score, cfg.specificity)
    return {"auc": float(auc[0]), "auc_ci": list(interval(auc[1:], cfg.ci_level)) if cfg.bootstrap else None,
            "specificity_target": cfg.specificity, "sensitivity_at_specificity": sens, "threshold": thr,
            "n_positive": int(pos.sum()), "n_negative": int((~pos).sum())}


def per_source(y, prob, sources, classes, cfg: EvalConfig, seed: int) -> dict:
    """Accuracy (with interval) and per-class sensitivity for each image source."""
    out = {}
    for s in sorted(set(sources)):
        keep = np.asarray(sources) == s
        m = classification_metrics(y[keep], prob[keep], classes, cfg.bootstrap, cfg.ci_level, seed)
        out[s or "(unknown)"] = {"n": m["n"], "accuracy": m["accuracy"], "accuracy_ci": m["accuracy_ci"],
                                 "sensitivity": {c: m["per_class"][c]["sensitivity"] for c in classes}}
    return out


def json_safe(value):
    """``value`` with NaN (a rate with no cases, e.g. the sensitivity of an absent class) and infinite
    thresholds as null, so ``metrics.json`` is strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def evaluate(data: str | Path, checkpoint: str | Path | None = None, out: str | Path = "runs",
             cfg: EvalConfig | None = None, device: str = "auto", cam: int = 0, seed: int = 0,
             quiet: bool = False) -> dict:
    """Evaluate a classifier on the test split (the validation split when there is none).

    Writes ``metrics.json``, ``report.md``, ``confusion.png``, ``roc.png``, ``pr.png`` and, with ``cam``
    > 0, overlays for ``cam`` images per class under ``<run>/eval``; prints the key table.
    """
    cfg = cfg or EvalConfig()
    dev = pick_device(device)
    path = resolve_run_file(checkpoint, out, "classifier", CHECKPOINTS)
    model, ckpt = load_classifier(path, dev)
    classes, size = tuple(ckpt["classes"]), ckpt["input_size"]
    ds = load_dataset(data, data_config(ckpt), quiet=quiet)
    split = "test" if len(ds.indices("test")) else "val"
    idx = ds.indices(split)
    y = ds.labels[idx].numpy()
    prob = predict(model, ds.images[idx], size, dev, cfg.batch_size).numpy()

    metrics = classification_metrics(y, prob, classes, cfg.bootstrap, cfg.ci_level, seed)
    metrics |= {"checkpoint": str(path), "data": str(data), "split": split, "trained_epochs": ckpt.get("epoch")}
    if cfg.positive_class in classes:
        metrics["binary"] = {"positive_class": cfg.positive_class,
                             **binary_view(y, prob, classes.index(cfg.positive_class), cfg, seed)}
    sources = [ds.sources[i] for i in idx.tolist()]
    if any(sources):
        metrics["per_source"] = per_source(y, prob, sources, classes, cfg, seed)

    out_dir = path.parent / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_png(confusion_image(np.asarray(metrics["confusion"]), classes), out_dir / "confusion.png")
    rocs, prs = [], []
    for c, name in enumerate(classes):
        fpr, tpr, _ = roc_curve(y == c, prob[:, c])
        precision, recall, ap = pr_curve(y == c, prob[:, c])
        metrics["per_class"][name]["average_precision"] = ap
        rocs.append((f"{name} AUC {metrics['per_class'][name]['auc']:.3f}", fpr, tpr))
        prs.append((f"{name} AP {ap:.3f}", recall, precision))
    save_png(curves_image(rocs, "false positive rate (1 - specificity)", "sensitivity", diagonal=True), out_dir / "roc.png")
    save_png(curves_image(prs, "recall (sensitivity)", "precision"), out_dir / "pr.png")

    if cam > 0:
        picks = np.concatenate([np.flatnonzero(y == c)[:cam] for c in range(len(classes))])
        written, faith = write_overlays(model, ds.images[idx[picks]], [ds.paths[i] for i in idx[picks].tolist()],
                                        classes, size, dev, cfg.cam_method, out_dir / "cam")
        metrics["cam"] = {"method": cfg.cam_method, "images": len(written), **faith}

    write_text_atomic(out_dir / "metrics.json", json.dumps(json_safe(metrics), indent=2) + "\n")
    write_text_atomic(out_dir / "report.md", markdown_report(metrics, classes))
    if not quiet:
        print(key_table(metrics, classes))
        print(f"wrote metrics.json, report.md, confusion.png, roc.png, pr.png to {out_dir}", file=sys.stderr)
    return metrics
