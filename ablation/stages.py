"""The model work of an ablation, built from the model packages: train a CycleGAN, synthesize, train and
evaluate a classifier, judge a GAN with a classifier's features. Below ``cli.py``, above ``cyclegan``,
``classifier`` and ``augment``; nothing here calls back up."""
from __future__ import annotations

import copy
import json
from pathlib import Path

from foundation.config import config_to_dict


class Interrupted(Exception):
    """A CycleGAN or classifier of the experiment was stopped by Ctrl-C or SIGTERM and saved its checkpoint;
    running the same experiment again continues it."""


def stopped_message(dest: Path) -> str:
    return f"ablation stopped; run the same command again to continue ({dest} keeps finished cells)"


def experiment_config(cfg) -> dict:
    """A config as an ablation records it: everything but where the image cache lives, and the lung settings and
    test-time augmentation only when used (experiments recorded before they existed still resume)."""
    from augment.imageio import MAX_PIXELS
    values = config_to_dict(cfg)
    values["data"].pop("cache_dir")
    if cfg.data.max_pixels == MAX_PIXELS:  # experiments recorded before the limit existed still resume
        values["data"].pop("max_pixels")
    if not cfg.data.uses_lungs:
        for key in ("lung_crop", "lung_crop_margin", "lung_mask", "lungseg_run"):
            values["data"].pop(key)
    if values.get("eval", {}).get("tta") == 0:  # experiments recorded before test-time augmentation still resume
        values["eval"].pop("tta")
    return values


def train_gan_in(gan_cfg, manifest: Path, folder: Path, device: str, seed: int, dest: Path, lung_masker=None) -> Path:
    """A CycleGAN on ``manifest``'s training split under ``folder`` (a run of this seed stopped earlier there is
    resumed); its run folder. A stop by signal raises :class:`Interrupted`."""
    from cyclegan import train_gan
    from cyclegan.checkpoint import CHECKPOINT_NAME
    from foundation.runs import latest_run
    earlier = latest_run(folder, "gan", marker=CHECKPOINT_NAME)
    if earlier is not None and json.loads((earlier / "run.json").read_text())["seed"] != seed:
        earlier = None
    result = train_gan(gan_cfg, manifest, folder, device, seed, resume=earlier, lung_masker=lung_masker)
    if result.interrupted:
        raise Interrupted(stopped_message(dest))
    return result.run_dir


def train_classifier_in(clf_cfg, manifest: Path, folder: Path, device: str, seed: int, classic_augment: bool,
                        dest: Path, lung_masker=None) -> Path:
    """A classifier on ``manifest`` under ``folder``, with or without the classic augmentation (a run stopped
    earlier there is resumed); its run folder. A stop by signal raises :class:`Interrupted`."""
    from classifier.train import Trainer
    from foundation.runs import latest_run
    cfg = copy.deepcopy(clf_cfg)
    cfg.augment.enabled = classic_augment
    earlier = latest_run(folder, "classifier", marker="last.pt")
    trainer = Trainer(cfg, manifest, folder, resume=earlier, device=device, seed=seed, quiet=True,
                      lung_masker=lung_masker)
    run = trainer.run()
    if trainer.stopped:
        raise Interrupted(stopped_message(dest))
    return run


def ablation_stages(gan_cfg, clf_cfg, dest: Path, device: str, lung_masker=None):
    """The model work of a seed ablation (:class:`ablation.seeds.Stages`) from the model packages; every
    classifier is evaluated on the experiment's real manifest, ``<dest>/real.csv``, and gets ``lung_masker``
    (the segmenter its lung settings need). Classifiers on lung-cropped or lung-masked images judge no GAN:
    its translations are whole images."""
    from classifier.checkpoint import CHECKPOINTS, load_classifier
    from classifier.evaluate import evaluate as evaluate_classifier
    from classifier.inference import classifier_probe
    from cyclegan import evaluate_gan, synthesize
    from foundation.devices import pick_device
    from foundation.runs import resolve_run_file

    from .seeds import Stages

    def train_gan_stage(manifest, folder, seed):
        return train_gan_in(gan_cfg, manifest, folder, device, seed, dest)

    def synthesize_stage(checkpoint, manifest, folder, n, seed):
        return synthesize(n, manifest, dest, checkpoint, folder, overwrite=True, device=device, seed=seed)

    def train_classifier_stage(manifest, folder, seed, classic_augment):
        return train_classifier_in(clf_cfg, manifest, folder, device, seed, classic_augment, dest, lung_masker)

    def evaluate_stage(run):
        m = evaluate_classifier(dest / "real.csv", run, dest, clf_cfg.eval, device, quiet=True, lung_masker=lung_masker)
        return {"accuracy": m["accuracy"], "macro_auc": m["macro"]["auc"],
                "sensitivity": {c: v["sensitivity"] for c, v in m["per_class"].items()},
                "f1": {c: v["f1"] for c, v in m["per_class"].items()}}

    def gan_eval_stage(checkpoint, manifest):
        yardstick = Path(json.loads(min((dest / "cells").glob("classic-seed*.json")).read_text())["run"])
        model, meta = load_classifier(resolve_run_file(yardstick, dest, "classifier", CHECKPOINTS), pick_device(device))
        features, classify = classifier_probe(model, meta["input_size"], list(meta["classes"]), gan_cfg.train.domain_b)
        m = evaluate_gan(manifest, dest, checkpoint, features, classify, device=device, split="test")
        return {k: m[k] for k in ("fd", "kid", "ssim_mean", "share_called_b", "n_translated", "n_real_b", "features")}

    return Stages(train_gan_stage, synthesize_stage, train_classifier_stage, evaluate_stage,
                  None if clf_cfg.data.uses_lungs else gan_eval_stage)
