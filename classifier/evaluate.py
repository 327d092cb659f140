"""``evaluate``: metrics with bootstrap intervals, per-source and covid-vs-rest views, plots, a report,
and optionally CAM overlays, written next to the checkpoint in ``<run>/eval`` (the run's own test split)
or ``<run>/eval/<data name>-<split>`` (another test set)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from augment.data import XrayDataset, load_dataset, warn
from augment.lungmask import LungMasker
from augment.runsplit import EVALUATED_FILE, EvalSet, claim_report, evaluation_set, split_rows, write_split
from foundation.bootstrap import bootstrap_weights, interval
from foundation.devices import pick_device
from foundation.errors import UserError
from foundation.files import json_safe, write_text_atomic
from foundation.html_report import write_html_report
from foundation.runs import resolve_run_file

from .checkpoint import CHECKPOINTS, data_config, load_classifier, precision, run_lung_masker, tta_views
from .config import EvalConfig
from .inference import predict
from .metrics import classification_metrics, pr_curve, roc_band, roc_curve, transferred_threshold, weighted_auc
from .model import Classifier
from .overlays import write_overlays
from .plots import FPR_GRID, PrCurve, RocCurve, confusion_figure, pr_figure, reliability_figure, roc_figure, save_figure
from .report import key_table, markdown_report


def binary_view(y: np.ndarray, prob: np.ndarray, positive: int, cfg: EvalConfig, seed: int, groups,
                val: tuple[np.ndarray, np.ndarray, list] | str) -> dict:
    """One class against the rest: AUC with interval and, at the threshold chosen on the validation
    split for ``cfg.specificity``, the test sensitivity and specificity with intervals (over ``groups``).

    ``val``: the validation labels ``(M,)``, probabilities ``(M, K)`` and M group ids to choose the
    threshold on, or a sentence saying why there are none; then no operating point is reported (choosing the threshold
    on the test set would flatter it)."""
    pos, score = y == positive, prob[:, positive]
    w = np.ones((1, len(y)))
    if cfg.bootstrap:
        w = np.vstack([w, bootstrap_weights(len(y), cfg.bootstrap, seed, groups)])

    def ci(a):
        return list(interval(a[1:], cfg.ci_level)) if cfg.bootstrap else None

    auc = weighted_auc(pos, score, w)
    out = {"auc": float(auc[0]), "auc_ci": ci(auc), "specificity_target": cfg.specificity,
           "n_positive": int(pos.sum()), "n_negative": int((~pos).sum())}
    if isinstance(val, tuple):
        val_pos = val[0] == positive
        if val_pos.all() or not val_pos.any():
            val = "the validation split lacks positive or negative images to choose a threshold on"
    if isinstance(val, str):
        return out | {"operating_point": None, "no_operating_point": val}
    t = transferred_threshold(val_pos, val[1][:, positive], pos, score, cfg.specificity, w)
    return out | {"operating_point": {
        "threshold": t["threshold"], "sensitivity": float(t["sensitivity"][0]), "sensitivity_ci": ci(t["sensitivity"]),
        "specificity": float(t["specificity"][0]), "specificity_ci": ci(t["specificity"]),
        "validation": {"sensitivity": t["chosen_sensitivity"], "specificity": t["chosen_specificity"],
                       "n_positive": int(val_pos.sum()), "n_negative": int((~val_pos).sum()),
                       "n_groups": len(set(val[2]))}}}


def validation_predictions(ckpt: dict, split: str) -> tuple[np.ndarray, np.ndarray, list] | str:
    """The validation labels ``(M,)``, probabilities ``(M, K)`` and group ids that ``best.pt`` keeps from its best
    epoch, or why there are none to choose a threshold on."""
    if split == "val":
        return "the evaluation is on the validation split itself, where the threshold would be chosen"
    if "validation" not in ckpt:
        return ("the checkpoint holds no validation predictions (a last.pt, or a run trained before best.pt kept "
                "them); evaluate a best.pt of a new classify-train run")
    v = ckpt["validation"]
    return v["labels"].numpy(), v["prob"].numpy(), v["groups"]


def per_source(y, prob, sources, classes, cfg: EvalConfig, seed: int, groups) -> dict:
    """Accuracy (with interval over the source's groups) and per-class sensitivity for each image source."""
    out = {}
    for s in sorted(set(sources)):
        keep = np.asarray(sources) == s
        m = classification_metrics(y[keep], prob[keep], classes, cfg.bootstrap, cfg.ci_level, seed,
                                   [g for g, k in zip(groups, keep) if k])
        out[s or "(unknown)"] = {"n": m["n"], "n_groups": m["n_groups"], "accuracy": m["accuracy"],
                                 "accuracy_ci": m["accuracy_ci"],
                                 "sensitivity": {c: m["per_class"][c]["sensitivity"] for c in classes}}
    return out


FIGURES = ("roc", "pr", "confusion", "reliability")  # what evaluation_figures draws


def evaluation_figures(y: np.ndarray, prob: np.ndarray, classes: tuple[str, ...], metrics: dict, cfg: EvalConfig,
                       seed: int, groups, context: str) -> dict:
    """The ``roc``, ``pr``, ``confusion`` and ``reliability`` figures of labels ``y (N,)`` and probabilities ``prob (N, K)``,
    titled with ``context``; adds each class's average precision to ``metrics["per_class"]``.

    The ROC bands resample the same groups with the same seed as the metrics' intervals; the operating
    point of ``metrics["binary"]`` is marked on the positive class's curve."""
    w = bootstrap_weights(len(y), cfg.bootstrap, seed, groups) if cfg.bootstrap else None
    rocs, prs = [], []
    for c, name in enumerate(classes):
        pos, score, pc = y == c, prob[:, c], metrics["per_class"][name]
        if not pos.any():  # a class absent from the test set has no curve
            continue
        fpr, tpr, _ = roc_curve(pos, score)
        precision, recall, pc["average_precision"] = pr_curve(pos, score)
        band = roc_band(pos, score, w, FPR_GRID, cfg.ci_level) if w is not None else None
        rocs.append(RocCurve(name, fpr, tpr, pc["auc"], pc["auc_ci"], band))
        prs.append(PrCurve(name, recall, precision, pc["average_precision"], float(pos.mean())))
    b = metrics.get("binary")
    roc = next((r for r in rocs if b and r.label == b["positive_class"]), None)  # none: no positive image
    if b and b["operating_point"] and roc is not None:
        op = b["operating_point"]
        roc.point = (1 - op["specificity"], op["sensitivity"])
        roc.point_label = (f"{b['positive_class']}: threshold {op['threshold']:.3f} chosen on validation for "
                           f"specificity ≥ {100 * b['specificity_target']:.0f} %\n(test sensitivity "
                           f"{op['sensitivity']:.2f}, specificity {op['specificity']:.2f})")
    return {"roc": roc_figure(rocs, f"ROC, each class vs the rest\n{context}",
                              f"{100 * cfg.ci_level:.0f} % pointwise bootstrap band (patients)"),
            "pr": pr_figure(prs, f"Precision-recall, each class vs the rest\n{context}"),
            "confusion": confusion_figure(metrics["confusion"], classes, f"Confusion matrix\n{context}"),
            "reliability": reliability_figure(**metrics["calibration"]["bins"], ece=metrics["calibration"]["ece"],
                                              title=f"Reliability of the highest probability\n{context}")}


def load_evaluation(data: str | Path, path: Path, device, split_from_data: bool = False,
                    quiet: bool = False, lung_masker: LungMasker | None = None, required: tuple[str, ...] | None = None
                    ) -> tuple[Classifier, dict, XrayDataset, EvalSet]:
    """The classifier of checkpoint ``path`` on ``device``, its metadata, ``data`` cached as the run
    was trained, and the images of it the run is evaluated on (:func:`augment.runsplit.evaluation_set`).

    The run's data config decides about lungs: a run trained with ``data.lung_crop`` or ``data.lung_mask``
    needs ``lung_masker``, the segmenter it was trained with (another is refused in one line); for a run
    on whole images ``lung_masker`` is not used. ``required``: the classes that must have a readable image
    (default all; ``()`` for a test set holding only some)."""
    model, ckpt = load_classifier(path, device)
    ds = load_dataset(data, data_config(ckpt), required=required, quiet=quiet,
                      lung_masker=run_lung_masker(ckpt, path, lung_masker))
    return model, ckpt, ds, evaluation_set(ds, data, path.parent, split_from_data, quiet)


def evaluate(data: str | Path, checkpoint: str | Path | None = None, out: str | Path = "runs",
             cfg: EvalConfig | None = None, device: str = "auto", cam: int = 0, seed: int = 0,
             quiet: bool = False, split_from_data: bool = False, overwrite: bool = False,
             lung_masker: LungMasker | None = None, tta: int | None = None) -> dict:
    """Evaluate a classifier on its run's test split (the validation split when there is none), or on
    another test set; :func:`augment.runsplit.evaluation_set` says which images and refuses leaks.

    Writes ``metrics.json``, ``report.md``, ``confusion``, ``roc`` and ``pr`` figures (``.png`` at 300 dpi and
    ``.pdf``), ``images.csv``
    (the images evaluated) and, with ``cam`` > 0, overlays for ``cam`` images per class under
    ``<run>/eval`` (another test set: ``<run>/eval/<name>-<split>``); prints the key table. A folder
    holding a report on other images is refused unless ``overwrite``. ``lung_masker``: as for
    :func:`load_evaluation`. ``tta``: the test-time augmentation asked for, refused unless it is the run's own
    (the run chose its epoch and thresholds with it).
    """
    cfg = cfg or EvalConfig()
    dev = pick_device(device)
    path = resolve_run_file(checkpoint, out, "classifier", CHECKPOINTS)
    model, ckpt, ds, chosen = load_evaluation(data, path, dev, split_from_data, quiet, lung_masker, required=())
    if tta is not None and tta != tta_views(ckpt):
        raise UserError(f"{path}: eval.tta={tta} asked, but this run chose its epoch and thresholds with "
                        f"eval.tta={tta_views(ckpt)} and is evaluated so; to measure eval.tta={tta}, train with it")
    classes, size = tuple(ckpt["classes"]), ckpt["input_size"]
    split, idx = chosen.split, chosen.indices
    out_dir = path.parent / "eval" / chosen.folder
    evaluated = split_rows(ds, idx, split)
    claim_report(out_dir, evaluated, overwrite)
    y = ds.labels[idx].numpy()
    prob = predict(model, ds.images[idx], size, dev, cfg.batch_size, **precision(ckpt), tta=tta_views(ckpt)).numpy()

    groups = [ds.groups[i] for i in idx.tolist()]
    metrics = classification_metrics(y, prob, classes, cfg.bootstrap, cfg.ci_level, seed, groups)
    metrics |= {"checkpoint": str(path), "data": str(data), "split": split, "trained_epochs": ckpt.get("epoch")}
    metrics["absent_classes"] = absent = [c for k, c in enumerate(classes) if not (y == k).any()]
    if absent and not quiet:  # an external test set of some classes: evaluated on what is there
        warn(f"{data}: no image of class {', '.join(absent)} among the {len(y)} evaluated; its sensitivity and AUC "
             "are undefined, macro figures average the classes present, the confusion matrix keeps every class")
    if cfg.positive_class in classes:
        metrics["binary"] = {"positive_class": cfg.positive_class,
                             **binary_view(y, prob, classes.index(cfg.positive_class), cfg, seed, groups,
                                         validation_predictions(ckpt, split))}
    sources = [ds.sources[i] for i in idx.tolist()]
    if any(sources):
        metrics["per_source"] = per_source(y, prob, sources, classes, cfg, seed, groups)

    context = (f"{ckpt['model_args']['name']} run {path.parent.name}\n{Path(data).name}, {split} split: "
               f"{metrics['n']} images of {metrics['n_groups']} patients")
    for name, fig in evaluation_figures(y, prob, classes, metrics, cfg, seed, groups, context).items():
        save_figure(fig, out_dir / name)

    if cam > 0:
        picks = np.concatenate([np.flatnonzero(y == c)[:cam] for c in range(len(classes))])
        written, faith = write_overlays(model, ds.images[idx[picks]], [ds.paths[i] for i in idx[picks].tolist()],
                                        classes, size, dev, cfg.cam_method, out_dir / "cam")
        metrics["cam"] = {"method": cfg.cam_method, "images": len(written), **faith}

    write_text_atomic(out_dir / "metrics.json", json.dumps(json_safe(metrics), indent=2) + "\n")
    report = markdown_report(metrics, classes)
    write_text_atomic(out_dir / "report.md", report)
    write_html_report(out_dir / "report.html", report, [out_dir / f"{name}.png" for name in FIGURES],
                      f"Evaluation of {path.parent.name}, {metrics['split']} split")
    write_split(out_dir / EVALUATED_FILE, evaluated)
    if not quiet:
        print(key_table(metrics, classes))
        print(f"wrote metrics.json, report.md, report.html, confusion, roc, pr and reliability (.png, .pdf), "
              f"{EVALUATED_FILE} to {out_dir}",
              file=sys.stderr)
    return metrics
