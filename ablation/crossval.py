"""Do the synthetic films help? The cross-validated, source-controlled ablation with a placebo arm.

K folds grouped by patient and stratified by label × source (:mod:`ablation.folds`). In each fold every arm
trains a classifier on the same training part with the same seed, chooses its epoch and covid threshold on the
same validation part and predicts the fold:

- ``real``: real films, no augmentation;
- ``classic``: real films with the classic augmentation;
- ``gan``: classic plus balanced synthetic covid films of a CycleGAN trained on the fold's training patients only;
- ``gan-lungs``: the same with a lung-constrained CycleGAN (``train.lung_constraint=composite``; needs a lung
  segmenter);
- ``placebo``: classic plus as many normal films histogram-matched to covid training films, labelled covid
  (:mod:`ablation.placebo`).

Every image is predicted once per arm, by the fold that tests it; the pooled out-of-fold predictions give the
endpoints and their paired differences (:mod:`ablation.endpoints`), and rules fixed in advance decide
(:mod:`ablation.decision`). Every unit (a fold's CycleGAN, its synthetic or placebo films, a fold's classifier of
an arm) is kept when done, and a training stopped by a signal resumes from its checkpoint, so running the same
experiment again continues it.
"""
from __future__ import annotations

import copy
import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from augment.balance import Policy, balance
from augment.data import csv_rows, load_dataset, write_csv
from foundation.config import check_config
from foundation.errors import UserError
from foundation.files import json_safe, write_text_atomic

from .decision import decide, rules_text
from .endpoints import (ENDPOINTS, NAMES, as_predictions, compare_arms, covid_sources, read_predictions,
                        write_predictions)
from .folds import assign_folds, fold_parts, write_fold_manifests
from .placebo import write_placebo
from .seeds import cached_json, same_experiment
from .stages import train_classifier_in, train_gan_in

ARMS = ("real", "classic", "gan", "gan-lungs", "placebo")
GAN_ARMS = ("gan", "gan-lungs")
IMAGES = ("path", "label", "group_id", "source", "fold")


@dataclass(frozen=True)
class Scale:
    """A preset of the whole experiment: folds, the classifier and CycleGAN configs (files of ``configs/``) and
    overrides of the CycleGAN's."""
    folds: int
    classifier_config: str
    gan_config: str
    gan_sets: tuple[str, ...]
    about: str


SCALES = {
    # 3 folds × 5 arms = 15 CPU-preset classifiers (the preset's 345-440 s for 1,710 films scale to about 4-5 min
    # for the ~1,170 training films of a cxr3 fold, 5-6 with the ~260 added films: 70-85 min in all) and 6
    # CPU-scale CycleGANs of 1,500 steps (2.25 steps/s measured at batch 1, RESULTS.md: 11 min each, 67 min in
    # all), plus masks, synthesis, placebo and predictions: about 3 hours on 2 cores with room for a busy machine
    "cpu": Scale(folds=3, classifier_config="classify-train-cpu.yaml", gan_config="gan-train-cpu.yaml",
                 gan_sets=("train.steps=1500", "train.checkpoint_every=250"),
                 about="about 3 hours on 2 CPU cores for cxr3's 1,955 films"),
}


def parse_arms(values: Sequence[str]) -> tuple[str, ...]:
    """Arm names given as separate values or joined by commas, in :data:`ARMS` order; unknown names are a
    one-line error."""
    names = [n.strip() for v in values for n in v.replace(",", " ").split() if n.strip()]
    unknown = sorted(set(names) - set(ARMS))
    if unknown:
        raise UserError(f"--arms {' '.join(unknown)}: no such arm; choose from {' '.join(ARMS)}")
    return tuple(a for a in ARMS if a in names) if names else ARMS


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return csv_rows(f)


def experiment_images(data, cfg, k: int, seed: int, path: Path) -> list[dict]:
    """Every image of ``data`` (absolute path, label, patient, source) with its fold, kept in ``path`` (written once,
    then read, so a rerun uses the very same folds)."""
    if path.exists():
        return _read_csv(path)
    ds = load_dataset(data, cfg)
    labels = [ds.classes[y] for y in ds.labels.tolist()]
    folds = assign_folds(ds.groups, labels, ds.sources, k, seed)
    rows = [{"path": str((ds.root / p).resolve()), "label": y, "group_id": g, "source": s, "fold": int(f)}
            for p, y, g, s, f in zip(ds.paths, labels, ds.groups, ds.sources, folds.tolist())]
    write_csv(path, rows, IMAGES)
    return rows


def added_count(real_manifest: Path, minority: str) -> int:
    """Films to synthesize (or make as placebo) for a fold: enough to bring the minority up to the largest class,
    at least as many as it has (the policy picks from them)."""
    counts = Counter(r["label"] for r in _read_csv(real_manifest) if r["split"] == "train")
    return max(max(counts.values()) - counts[minority], counts[minority], 1)


class Crossval:
    """One experiment folder: its images and folds, and the units of every fold and arm."""

    def __init__(self, data, dest, clf_cfg, gan_cfg, folds: int, arms: Sequence[str], seed: int = 0,
                 minority: str = "covid", minority_fraction: float | None = None, policy: str = "match-majority",
                 lungs: str | Path | None = None, device: str = "auto", log: Callable[[str], None] = print,
                 settings: dict | None = None, lung_masker=None):
        self.dest = Path(dest)
        self.clf_cfg, self.device, self.log, self.seed = clf_cfg, device, log, seed
        self.whole = replace(clf_cfg.data, lung_crop=False, lung_mask="none")  # the folds are made on whole films
        if minority not in self.whole.classes:
            raise UserError(f"--minority {minority!r}: not one of the classes {', '.join(self.whole.classes)}")
        if gan_cfg.train.domain_b != minority:
            raise UserError(f"--minority {minority}: the CycleGAN translates into {gan_cfg.train.domain_b!r}; "
                            f"add --gan-set train.domain_b={minority}")
        self.policy, self.policy_text = Policy.parse(policy), policy
        self.minority, self.minority_fraction, self.k = minority, minority_fraction, folds
        self.lung_masker = lung_masker  # the classifiers' own (their lung settings), not the GAN's
        self.arms = [a for a in arms if a != "gan-lungs" or lungs]
        self.skipped = {} if lungs or "gan-lungs" not in arms else {
            "gan-lungs": "no lung segmenter: give --lungs RUN (a lungseg-train run) to train the lung-constrained GAN"}
        for arm, why in self.skipped.items():
            log(f"arm {arm} skipped: {why}")
        self.gan_cfgs = {"gan": self._gan_config(gan_cfg, "none", None)}
        self.lungs = Path(lungs).resolve() if lungs else None
        if self.lungs:
            constraint = gan_cfg.train.lung_constraint if gan_cfg.train.lung_constraint != "none" else "composite"
            self.gan_cfgs["gan-lungs"] = self._gan_config(gan_cfg, constraint, str(self.lungs))
        self.dest.mkdir(parents=True, exist_ok=True)
        same_experiment(self.dest / "experiment.json", {
            "design": "folds", "data": str(Path(data).resolve()), "folds": folds, "seed": seed, "minority": minority,
            "minority_fraction": minority_fraction, "policy": policy, **(settings or {})})
        self.images = experiment_images(data, self.whole, folds, seed, self.dest / "images.csv")
        self._masker = None

    @staticmethod
    def _gan_config(gan_cfg, constraint: str, lungseg_run: str | None):
        cfg = copy.deepcopy(gan_cfg)
        cfg.train.lung_constraint = constraint
        if lungseg_run:
            cfg.data.lungseg_run = lungseg_run
        check_config(cfg)
        return cfg

    def gan_masker(self):
        """The lung segmenter of ``--lungs``, loaded once."""
        if self._masker is None:
            from lungs import LungSegmenter
            self._masker = LungSegmenter(self.lungs, self.device)
        return self._masker

    # ------------------------------------------------------------ folds
    def fold_dir(self, k: int) -> Path:
        return self.dest / "folds" / f"fold{k}"

    def fold_manifest(self, k: int) -> Path:
        """``<fold>/real.csv`` (train, val and test parts) and ``<fold>/gan-train.csv`` (training part only)."""
        real = self.fold_dir(k) / "real.csv"
        if not real.exists():
            col = {c: [r[c] for r in self.images] for c in IMAGES}
            parts = fold_parts(col["group_id"], col["label"], col["source"], np.array(col["fold"], dtype=np.int64), k,
                               self.seed, self.minority, self.minority_fraction)
            real.parent.mkdir(parents=True, exist_ok=True)
            write_fold_manifests(col["path"], col["label"], col["group_id"], col["source"], parts, real,
                                 self.fold_dir(k) / "gan-train.csv")
        return real

    # ------------------------------------------------------------ units
    def training_manifest(self, k: int, arm: str) -> Path:
        """The manifest arm ``arm`` of fold ``k`` trains on: the fold's real one, or it with the added films."""
        real = self.fold_manifest(k)
        if arm in ("real", "classic"):
            return real
        folder, gan_data, seed = self.fold_dir(k) / arm, self.fold_dir(k) / "gan-train.csv", self.seed + k
        n = added_count(real, self.minority)
        if arm == "placebo":
            added = cached_json(folder / "added.json", lambda: {
                "folder": str(write_placebo(gan_data, self.gan_cfgs["gan"], n, folder / "added", seed)), "n": n})
        else:
            added = self.synthetic(k, arm, folder, gan_data, n, seed)
        manifest = folder / "train.csv"
        if not manifest.exists():
            balance(real, Path(added["folder"]), self.policy, manifest, self.whole, seed=seed)
        return manifest

    def synthetic(self, k: int, arm: str, folder: Path, gan_data: Path, n: int, seed: int) -> dict:
        """The fold's CycleGAN of ``arm`` (trained on its training part only) and its ``n`` synthetic films."""
        from cyclegan import synthesize
        cfg = self.gan_cfgs[arm]
        masker = self.gan_masker() if arm == "gan-lungs" else None
        identity = {"lung_segmenter": masker.identity} if masker else {}

        def train() -> dict:
            self.log(f"fold {k} arm {arm}: training the CycleGAN")
            return {"run": str(train_gan_in(cfg, gan_data, folder, self.device, seed, self.dest, masker)), **identity}
        gan = cached_json(folder / "gan.json", train)
        if gan.get("lung_segmenter") != identity.get("lung_segmenter"):
            raise UserError(f"{folder}: its CycleGAN was trained with the lung masks of another segmenter; give the "
                            "--lungs it was trained with, or another --dest")
        return cached_json(folder / "added.json", lambda: {"folder": str(synthesize(
            n, gan_data, folder, Path(gan["run"]), folder / "added", overwrite=True, device=self.device, seed=seed,
            lung_masker=masker)), "n": n})

    def cell(self, k: int, arm: str) -> dict:
        """Train (or resume) arm ``arm`` of fold ``k`` and predict the fold's test part: ``cell.json`` and
        ``predictions.csv`` in ``<fold>/<arm>/``."""
        folder = self.fold_dir(k) / arm
        if (folder / "cell.json").exists():
            self.log(f"fold {k} arm {arm}: done earlier, kept")
            return json.loads((folder / "cell.json").read_text())
        manifest = self.training_manifest(k, arm)
        self.log(f"fold {k} arm {arm}: training the classifier")
        run = train_classifier_in(self.clf_cfg, manifest, folder, self.device, self.seed + k, arm != "real",
                                  self.dest, self.lung_masker)
        rows, threshold, why = self.predict(run, k)
        write_predictions(folder / "predictions.csv", rows, self.whole.classes, self.minority)
        added = sum(r["origin"] != "real" for r in _read_csv(manifest))
        cell = {"fold": k, "arm": arm, "run": str(run), "threshold": threshold,
                **({"no_threshold": why} if threshold is None else {}), "n_added": added,
                "n_train": sum(r["split"] == "train" for r in _read_csv(manifest)), "n_test": len(rows)}
        write_text_atomic(folder / "cell.json", json.dumps(json_safe(cell), indent=2) + "\n")  # threshold inf: null
        return cell

    def predict(self, run: Path, k: int) -> tuple[list[dict], float | None, str]:
        """The best epoch's probabilities on fold ``k``'s test part, and the covid threshold chosen on its validation
        part (best sensitivity at ``eval.specificity``; without one, an image is called covid when it is the most
        probable class)."""
        from classifier.checkpoint import load_classifier, precision, tta_views
        from classifier.config import EvalConfig
        from classifier.inference import predict
        from classifier.predict import validation_threshold
        from foundation.devices import pick_device
        dev = pick_device(self.device)
        model, meta = load_classifier(run / "best.pt", dev)
        ds = load_dataset(self.fold_manifest(k), self.clf_cfg.data, quiet=True, lung_masker=self.lung_masker)
        idx = ds.indices("test")
        prob = predict(model, ds.images[idx], meta["input_size"], dev, self.clf_cfg.eval.batch_size,
                       **precision(meta), tta=tta_views(meta)).numpy()
        threshold, why = validation_threshold(meta, EvalConfig(positive_class=self.minority,
                                                               specificity=self.clf_cfg.eval.specificity))
        c = ds.classes.index(self.minority)
        called = prob[:, c] >= threshold if threshold is not None else prob.argmax(1) == c
        rows = [{"path": str(ds.root / ds.paths[i]), "fold": k, "label": ds.classes[int(ds.labels[i])],
                 "source": ds.sources[i], "patient": ds.groups[i],
                 **{f"prob_{name}": f"{p[j]:.6g}" for j, name in enumerate(ds.classes)},
                 "threshold": "" if threshold is None else f"{threshold:.6g}", f"called_{self.minority}": int(hit)}
                for i, p, hit in zip(idx.tolist(), prob, called.tolist())]
        return rows, threshold, why

    # ------------------------------------------------------------ the whole experiment
    def pooled(self, arm: str, folds: Sequence[int]) -> list[dict]:
        """Arm ``arm``'s out-of-fold predictions of ``folds`` in the experiment's image order,
        ``<dest>/arms/<arm>/predictions.csv``: every image of those folds exactly once, from the fold that tests it."""
        rows = [r for k in folds for r in read_predictions(self.fold_dir(k) / arm / "predictions.csv")]
        seen = Counter(r["path"] for r in rows)
        wanted = [r["path"] for r in self.images if int(r["fold"]) in folds]
        if sorted(seen.elements()) != sorted(wanted):
            extra, missing = set(seen) - set(wanted), set(wanted) - set(seen)
            raise UserError(f"arm {arm}: its folds predicted {len(rows)} images, not each of the {len(wanted)} once "
                            f"({len(missing)} missing, {len(extra)} unknown, "
                            f"{sum(v > 1 for v in seen.values())} twice); delete {self.dest / 'folds'} and run again")
        by_path = {r["path"]: r for r in rows}
        rows = [by_path[p] for p in wanted]
        if len(folds) == self.k:
            write_predictions(self.dest / "arms" / arm / "predictions.csv", rows, self.whole.classes, self.minority)
        return rows

    def run(self) -> dict:
        cells: dict[str, list] = {}
        for k in range(self.k):
            for arm in self.arms:
                cells.setdefault(arm, []).append(self.cell(k, arm))
        return self.summarise(list(range(self.k)), cells, "summary")

    def interim(self) -> dict:
        """The endpoints and differences of the folds where every arm has finished, training nothing: a look at a
        run still going (``interim.json``, ``interim.md``). It decides nothing: the rules need every fold."""
        folds = [k for k in range(self.k) if all((self.fold_dir(k) / arm / "cell.json").exists() for arm in self.arms)]
        if not folds:
            raise UserError(f"{self.dest}: no fold has finished every arm ({', '.join(self.arms)}) yet")
        cells = {arm: [json.loads((self.fold_dir(k) / arm / "cell.json").read_text()) for k in folds]
                 for arm in self.arms}
        return self.summarise(folds, cells, "interim")

    def summarise(self, folds: list[int], cells: dict, name: str) -> dict:
        """Pooled endpoints of ``folds``, paired differences and (over every fold) the decisions: ``<name>.json``
        and ``<name>.md``."""
        train = [r for k in folds for r in _read_csv(self.fold_manifest(k)) if r["split"] == "train"]
        source, free = covid_sources([r["label"] for r in train], [r["source"] for r in train], self.minority)
        preds = {arm: as_predictions(self.pooled(arm, folds), self.whole.classes, self.minority) for arm in self.arms}
        comparison = compare_arms(preds, self.minority, source, free, self.clf_cfg.eval.bootstrap, self.seed,
                                  self.clf_cfg.eval.ci_level)
        if len(folds) == self.k:
            decisions = [decide(comparison["differences"], arm, source, free) for arm in GAN_ARMS if arm in self.arms]
            if not decisions:
                decisions = [decide(comparison["differences"], "gan", source, free)]
        else:
            decisions = [{"arm": None, "rule": None, "sentence": f"Interim: folds {', '.join(map(str, folds))} of "
                          f"{self.k} finished; no rule is applied before every fold has."}]
        covid_counts = Counter(r["source"] for r in train if r["label"] == self.minority)
        summary = {"design": "folds", "folds_done": folds, "seed": self.seed, "arms": list(self.arms),
                   "skipped": self.skipped, "minority": self.minority, "minority_fraction": self.minority_fraction,
                   "policy": self.policy_text,
                   "covid_source": source, "covid_free_sources": free,
                   "covid_training_films_by_source": dict(sorted(covid_counts.items())),
                   "cells": cells, **comparison, "folds": self.k,  # the experiment's, not only those pooled
                   "rules": rules_text(), "decisions": decisions}
        md = "report.md" if name == "summary" else f"{name}.md"
        write_text_atomic(self.dest / f"{name}.json", json.dumps(json_safe(summary), indent=2) + "\n")
        write_text_atomic(self.dest / md, report(summary) + "\n")
        return summary


def run_crossval(data, dest, clf_cfg, gan_cfg, folds: int = 3, arms: Sequence[str] = ARMS, interim: bool = False,
                 **kwargs) -> dict:
    """Run (or resume) the cross-validated ablation in ``dest``; returns the summary (also ``summary.json`` and
    ``report.md``). With ``interim``, train nothing: the summary of the folds finished so far (``interim.json``,
    ``interim.md``). Keyword arguments: those of :class:`Crossval`."""
    experiment = Crossval(data, dest, clf_cfg, gan_cfg, folds, arms, **kwargs)
    return experiment.interim() if interim else experiment.run()


# ---------------------------------------------------------------- the report
def _cell(m: dict, digits: int = 3) -> str:
    if m["value"] is None:
        return "n/a"
    ci = f" [{m['ci'][0]:.{digits}f}, {m['ci'][1]:.{digits}f}]" if m.get("ci") else ""
    return f"{m['value']:.{digits}f}{ci}"


def _diff(m: dict) -> str:
    if m["value"] is None:
        return "n/a"
    ci = f" [{m['ci'][0]:+.3f}, {m['ci'][1]:+.3f}]" if m.get("ci") else ""
    return f"{m['value']:+.3f}{ci} ({' '.join(m['signs'])})"


def report(s: dict) -> str:
    """``report.md``: the design, each arm's endpoints, the paired differences, the rules and the decisions."""
    source = ("(no source has covid films)" if s["covid_source"] is None else s["covid_source"] or
              "(one unnamed source: the data give no source column)")
    names = [NAMES[e].format(source=source) for e in ENDPOINTS]
    done = s.get("folds_done", list(range(s["folds"])))
    partial = f" (interim: folds {', '.join(map(str, done))} only)" if len(done) < s["folds"] else ""
    lines = [f"# Do the synthetic films help? {s['folds']}-fold ablation{partial}", "",
             f"{s['n']} films of {s['n_patients']} patients; folds grouped by patient and stratified by label × source, "
             f"seed {s['seed']}; arms {', '.join(s['arms'])}"
             + (f" (skipped: {'; '.join(f'{a}: {w}' for a, w in s['skipped'].items())})" if s["skipped"] else "")
             + (f"; {s['minority']} training patients kept: {s['minority_fraction']:g}" if s["minority_fraction"] else "")
             + ".",
             f"Covid source (most {s['minority']} training films): **{source}** "
             f"({', '.join(f'{k} {v}' for k, v in s['covid_training_films_by_source'].items())}); covid-free sources: "
             f"{', '.join(s['covid_free_sources']) or 'none'}.",
             f"Intervals: {100 * s['level']:g} % from {s['rounds']} bootstrap resamples of the patients, the same for "
             "every arm; differences are paired and followed by their sign in each fold.", "",
             "| arm | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for arm, row in s["endpoints"].items():
        lines.append(f"| {arm} | " + " | ".join(_cell(row[e]) for e in ENDPOINTS) + " |")
    if s["differences"]:
        lines += ["", "| difference | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
        for pair, row in s["differences"].items():
            lines.append(f"| {pair} | " + " | ".join(_diff(row[e]) for e in ENDPOINTS) + " |")
    lines += ["", f"Decision rules, fixed before the experiment ran (primary endpoint: {NAMES['auc_in_source'].format(source=source)}); "
              "checked in this order, the first that holds decides:", "", s["rules"], ""]
    lines += [d["sentence"] for d in s["decisions"]]
    return "\n".join(lines)
