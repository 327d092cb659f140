"""Command line of the toolkit: thin click commands over the packages.

    python cli.py gan-train            # CycleGAN normal → covid
    python cli.py synthesize --n 1000  # synthetic covid images from the latest GAN run
    python cli.py classify-train       # transfer-learning classifier

Without ``--data`` (and no ``./data`` folder) every command uses the built-in demo data.
"""
from __future__ import annotations

import functools
import sys
import traceback
from pathlib import Path

import click

from foundation.errors import UserError, cli_command
from foundation.outputs import display_name

# The shipped config (configs/, installed as the package cxrgan_configs) a command reads when --config is not
# given: (without, with the demo data); None: the defaults in code. A name here that is not shipped is an error.
DEFAULT_CONFIGS = {"classify-train": ("classify-train.yaml", "classify-train-demo.yaml"),
                   "gan-train": (None, "gan-train-demo.yaml"),
                   "lungseg-train": ("lungseg-train.yaml", "lungseg-train-demo.yaml")}
PRESETS = {"cpu": "classify-train-cpu.yaml"}  # classify-train --preset NAME
INTERRUPTED = 130  # exit status of a training stopped by Ctrl-C or SIGTERM (after saving), so chains stop


class Toolkit(click.Group):
    """Turns a :class:`UserError`, or a file that cannot be read or written (a full disk, a missing
    permission), into one line on stderr and exit status 2 (``--debug``: the traceback)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (UserError, OSError) as e:
            if ctx.params.get("debug"):
                traceback.print_exc()
            if isinstance(e, OSError) and e.filename:
                e = f"{e.filename}: {e.strerror or e}; check the path, its permissions and the free disk space"
            click.echo(f"error: {display_name(e)}", err=True)  # a file name that is not UTF-8 prints too
            sys.exit(2)


def print_version(ctx, param, value):
    """``--version``: the release, the Python and the folder the toolkit runs from (a source checkout,
    or site-packages when installed)."""
    if not value or ctx.resilient_parsing:
        return
    import platform

    from foundation.about import toolkit_version
    click.echo(f"cxrgan {toolkit_version()} (Python {platform.python_version()}, running from "
               f"{Path(__file__).resolve().parent})")
    ctx.exit()


@click.group(cls=Toolkit, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=print_version,
              help="Show the version and where the toolkit runs from, and exit.")
@click.option("--offline", is_flag=True,
              help="Never download (ImageNet weights): sets CXRGAN_OFFLINE=1; HF_HUB_OFFLINE=1 does the same.")
def cli(debug, offline):
    """GAN-augmented chest X-ray classification: CycleGAN synthesis, balanced training sets,
    classifiers with clinical metrics and class activation maps."""
    if offline:
        import os
        os.environ["CXRGAN_OFFLINE"] = "1"  # read where weights are fetched, and by torchrun's workers alike


def common_options(f):
    """--data, --config, --out, --device, --seed, --set: the options every job command takes."""
    options = [
        click.option("--data", type=click.Path(path_type=Path),
                     help="Folder of class subfolders or a manifest CSV (default: ./data, else the built-in demo data)."),
        click.option("--config", type=click.Path(path_type=Path), callback=shipped_if_missing,
                     help="YAML file overriding the defaults (default: the shipped configs/<command>.yaml, where there "
                          "is one; configs/NAME.yaml not found here: the shipped one)."),
        click.option("--out", type=click.Path(path_type=Path), default=Path("runs"), show_default=True,
                     help="Folder under which run folders are made."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--set", "set_", multiple=True, metavar="KEY=VALUE",
                     help="Override one config value, e.g. --set train.lr=1e-4 (repeatable)."),
    ]
    return functools.reduce(lambda g, option: option(g), reversed(options), f)


def print_config_option(f):
    return click.option("--print-config", is_flag=True,
                        help="Print the resolved config (what the run would write as config.yaml) and exit.")(f)


def show_config(cfg, asked: bool, resume: Path | None) -> None:
    """With ``--print-config``: print ``cfg`` as ``config.yaml`` would hold it and exit."""
    if not asked:
        return
    if resume is not None:
        raise UserError(f"--print-config shows a new run's config; a resumed run's is {resume}/config.yaml")
    from foundation.config import config_text
    click.echo(config_text(cfg), nl=False)
    sys.exit(0)


def shipped_if_missing(ctx, param, value):
    """``--config configs/NAME.yaml`` with no such file here reads the shipped one
    (:func:`foundation.config.local_or_shipped`)."""
    from foundation.config import local_or_shipped
    return local_or_shipped(value)


def default_config(command: str, demo: bool):
    """The shipped config ``command`` reads without ``--config`` (:data:`DEFAULT_CONFIGS`), or None."""
    from foundation.config import shipped_config
    name = DEFAULT_CONFIGS.get(command, (None, None))[demo]
    return shipped_config(name) if name else None


def resolve_inputs(command: str, data: Path | None, config: Path | None, out: Path) -> tuple[Path, Path | None, bool]:
    """``(data, config, is_demo)`` for a command: without ``--data`` and no ``./data``, the built-in
    demo data and the shipped ``configs/<command>-demo.yaml``; otherwise ``configs/<command>.yaml`` where
    :data:`DEFAULT_CONFIGS` names one."""
    from augment.phantoms import demo_data
    is_demo = data is None and not Path("data").is_dir()
    if data is None:
        data = demo_data(out) if is_demo else Path("data")
    if config is None:
        config = default_config(command, is_demo)
    if is_demo:
        click.echo(f"No --data given and no ./data folder: using the built-in demo data (procedural phantoms) "
                   f"in {data}" + (f" with the small demo configuration {config}" if config else "")
                   + ". Give --data DIR to use your own images.", err=True)
    return data, config, is_demo


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write into.")
@click.option("--n-per-class", type=click.IntRange(1), default=100, show_default=True)
@click.option("--size", type=click.IntRange(16), default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Write into a folder that already holds a manifest.")
@click.option("--masks", is_flag=True, help="Also write each phantom's exact lung mask under masks/ (for lungseg-train).")
def phantoms(out, n_per_class, size, seed, overwrite, masks):
    """Write procedural chest X-ray phantoms (covid, normal, pneumonia) with a manifest."""
    from augment.phantoms import write_phantoms
    if (out / "manifest.csv").exists() and not overwrite:
        raise UserError(f"{out}: already holds a data set (manifest.csv); pass --overwrite or choose another --out")
    write_phantoms(out, n_per_class, size, seed, masks=masks)
    click.echo(f"wrote {3 * n_per_class} phantoms of {size}×{size} px{' with lung masks' * masks} and manifest.csv to {out}")


@cli.command()
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(data, config, out, device, seed, set_, as_json):
    """Report what training will see in a data folder: counts, unreadable files, duplicates, leaks."""
    import json

    from augment.data_summary import InspectConfig, format_report, inspect_data, require_classes
    from foundation.config import load_config
    data, _, _ = resolve_inputs("inspect", data, None, out)
    cfg = load_config(InspectConfig, config, set_)
    report = inspect_data(data, cfg.data)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
    require_classes(report)


@cli.command("augment")
@common_options
@click.option("--synthetic", type=click.Path(path_type=Path), required=True,
              help="Folder written by synthesize (with manifest.csv).")
@click.option("--policy", default="match-majority", show_default=True,
              help="match-majority, ratio:R (synthetic at most R of a class) or count:N.")
@click.option("--dest", type=click.Path(path_type=Path),
              help="Manifest to write (default: <out>/augmented/<synthetic folder name>.csv).")
@click.option("--overwrite", is_flag=True, help="Replace an existing manifest.")
def augment_command(data, config, out, device, seed, set_, synthetic, policy, dest, overwrite):
    """Build a balanced training manifest from real training images plus synthetic ones."""
    from augment.balance import Policy, balance
    from augment.data_summary import InspectConfig
    from foundation.config import load_config
    data, _, _ = resolve_inputs("augment", data, None, out)
    cfg = load_config(InspectConfig, config, set_)
    dest = dest or out / "augmented" / f"{synthetic.name}.csv"
    summary = balance(data, synthetic, Policy.parse(policy), dest, cfg.data, seed, overwrite)
    for c, n in summary.items():
        click.echo(f"{c:>12}: {n['real_train']} real training images + {n['synthetic']} synthetic")
    click.echo(f"wrote {dest}; train on it with: {cli_command()} classify-train --data {dest}")
    return dest


# ---- cyclegan commands ----
@cli.command("gan-train")
@common_options
@click.option("--resume", type=click.Path(path_type=Path),
              help="Continue a GAN run from its folder or checkpoint.pt, with that run's config and seed.")
@click.option("--compile/--no-compile", "compile_", default=False, show_default=True,
              help="torch.compile the networks: minutes of compiling, once per machine and set-up (the code is kept "
                   "in <out>/cache/), faster steps on a GPU.")
@click.option("--steps", type=click.IntRange(1), help="Total training steps (overrides train.epochs).")
@print_config_option
def gan_train(data, config, out, device, seed, set_, resume, compile_, steps, print_config):
    """Train a CycleGAN between two classes (default normal ↔ covid) on the training split."""
    from cyclegan import GanConfig, train_gan
    from foundation.config import load_config
    if resume is not None and (config is not None or set_ or steps):
        raise UserError(f"--resume {resume}: a resumed run keeps its own config; drop --config, --set and --steps")
    data, config, _ = resolve_inputs("gan-train", data, config, out)
    cfg = None if resume else load_config(GanConfig, config, [*set_, *([f"train.steps={steps}"] if steps else [])])
    show_config(cfg, print_config, resume)
    masker = gan_lung_masker(cfg or gan_run_config(resume, out), device, out)
    result = train_gan(cfg, data, out, device, seed, resume, compile_, masker)
    if result.interrupted:
        sys.exit(INTERRUPTED)
    return result.run_dir


@cli.command("synthesize")
@common_options
@click.option("--n", "n", type=click.IntRange(1), default=1000, show_default=True, help="Images to write.")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="GAN run folder or checkpoint file (default: the latest GAN run under --out).")
@click.option("--dest", type=click.Path(path_type=Path),
              help="Output folder (default: <out>/synthetic/<gan run name>).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier synthesis in --dest.")
@click.option("--batch-size", type=click.IntRange(1), help="Images per generator call (default: synth.batch_size).")
def synthesize_command(data, config, out, device, seed, set_, n, checkpoint, dest, overwrite, batch_size):
    """Translate normal training images into synthetic covid images (PNGs + manifest.csv)."""
    from cyclegan import synthesize
    if config is not None or set_:
        raise UserError("synthesize uses the GAN run's own config; drop --config and --set")
    data, _, _ = resolve_inputs("synthesize", data, None, out)
    masker = gan_lung_masker(gan_run_config(checkpoint, out), device, out)
    return synthesize(n, data, out, checkpoint, dest, overwrite, batch_size, device, seed, masker)


def gan_run_config(checkpoint: Path | None, out: Path):
    """The config of a GAN run (folder or checkpoint; None: the latest under ``out``)."""
    from cyclegan.checkpoint import CHECKPOINT_NAME, read_gan_checkpoint
    from foundation.runs import resolve_run_file
    return read_gan_checkpoint(resolve_run_file(checkpoint, out, "gan", (CHECKPOINT_NAME,), CHECKPOINT_NAME),
                               mmap=True)[1]


def gan_lung_masker(cfg, device: str, out: Path, lungs: Path | None = None):
    """The lung segmenter a GAN run uses: ``lungs`` when given, else its ``data.lungseg_run`` when it is lung
    constrained, else None."""
    if lungs is None and cfg.train.lung_constraint == "none":
        return None
    from lungs import LungSegmenter
    return LungSegmenter(lungs or cfg.data.lungseg_run, device, out)


@cli.command("gan-eval")
@common_options
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="GAN run folder or checkpoint file (default: the latest GAN run under --out).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True,
              help="Split whose normal images are translated and whose covid images are the reference "
                   "(test: held out from the GAN; val when there is no test image).")
@click.option("--classifier", type=click.Path(path_type=Path),
              help="Classifier run or checkpoint: its penultimate features replace the hand-crafted ones, "
                   "and the share of translations it calls covid is reported.")
@click.option("--lungs", type=click.Path(path_type=Path),
              help="lungseg-train run whose masks say where the translation changed the film (default: a "
                   "lung-constrained GAN's data.lungseg_run).")
def gan_eval(data, config, out, device, seed, set_, checkpoint, split, classifier, lungs):
    """Fréchet distance, KID and SSIM of a GAN's translations; with --classifier, in that classifier's
    feature space and with the share it calls covid (default: hand-crafted intensity/texture features)."""
    from cyclegan import evaluate_gan
    if config is not None or set_:
        raise UserError("gan-eval uses the GAN run's own config; drop --config and --set")
    data, _, _ = resolve_inputs("gan-eval", data, None, out)
    features, classify = classifier_yardstick(classifier, checkpoint, out, device) if classifier else (None, None)
    masker = gan_lung_masker(gan_run_config(checkpoint, out), device, out, lungs)
    return evaluate_gan(data, out, checkpoint, features, classify, device=device, split=split, lung_masker=masker)


def classifier_yardstick(classifier: Path, gan_checkpoint: Path | None, out: Path, device: str):
    """``(features, classify)`` for gan-eval from a classifier run, for the GAN's target class."""
    from classifier.checkpoint import CHECKPOINTS, data_config, load_classifier
    from classifier.inference import classifier_probe
    from cyclegan.checkpoint import CHECKPOINT_NAME, read_gan_checkpoint
    from foundation.devices import pick_device
    from foundation.runs import resolve_run_file
    _, gan_cfg = read_gan_checkpoint(resolve_run_file(gan_checkpoint, out, "gan", (CHECKPOINT_NAME,), CHECKPOINT_NAME))
    model, meta = load_classifier(resolve_run_file(classifier, out, "classifier", CHECKPOINTS), pick_device(device))
    if data_config(meta).uses_lungs:
        raise UserError(f"{classifier}: trained with {data_config(meta).lung_settings}, it would judge whole translated "
                        "images it never saw; give gan-eval a classifier trained on whole images")
    return classifier_probe(model, meta["input_size"], list(meta["classes"]), gan_cfg.train.domain_b)


def lung_masker_of_runs(runs: list[Path | None], out: Path, device: str, names: tuple[str, ...] | None = None):
    """The lung segmenter (``data.lungseg_run``) of the first classifier run among ``runs`` (folders or
    checkpoints; None: the latest) trained on lung-cropped or lung-masked images, or None when none was."""
    from classifier.checkpoint import CHECKPOINTS, run_data_config
    from foundation.runs import resolve_run_file
    from lungs import masker_for
    for run in runs:
        masker = masker_for(run_data_config(resolve_run_file(run, out, "classifier", names or CHECKPOINTS)), device)
        if masker is not None:
            return masker
    return None


# ---- classifier commands ----
@cli.command("classify-train")
@common_options
@click.option("--backbone", help="Backbone name (e.g. efficientnet_b0, resnet50, vgg16, shallow, timm:xception); "
                                 "overrides model.backbone.")
@click.option("--backbones", "several", is_flag=True,
              help="Train each backbone named after the options (--backbones vgg16 resnet50 efficientnet_b0) with the "
                   "same data, split, seed and config, then compare them.")
@click.option("--pretrained", help="none, imagenet (downloaded once into the cache unless --offline) or a state "
                                   "dict path; overrides model.pretrained.")
@click.option("--synthetic", type=click.Path(path_type=Path), help="Folder written by synthesize: added to the training split only.")
@click.option("--resume", type=click.Path(path_type=Path), help="Continue a classifier run folder (or its last.pt) exactly.")
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the model (default: train.compile).")
@click.option("--preset", type=click.Choice(list(PRESETS)),
              help="A named configuration instead of --config: cpu = configs/classify-train-cpu.yaml (minutes on a CPU).")
@click.option("--budget", help="Wall-clock budget such as 10m or 600s: the epochs are chosen from the speed measured "
                               "on this machine so the run ends within it (train.time_budget).")
@print_config_option
@click.argument("backbones", nargs=-1)
def classify_train(data, config, out, device, seed, set_, backbone, several, pretrained, synthetic, resume, compile_,
                   preset, budget, print_config, backbones):
    """Train a classifier: head then fine-tuning (pretrained) or from scratch, early stopping on val macro-F1.
    With --backbones NAME NAME ..., one per backbone, then a comparison of them."""
    from classifier.config import ClassifierConfig
    from classifier.train import Trainer
    from foundation.config import load_config
    from foundation.runs import latest_run
    from lungs import masker_for
    if resume is not None and (config is not None or set_ or backbone or several or pretrained
                               or compile_ is not None or preset or budget):
        raise UserError(f"--resume {resume}: a resumed run keeps its own config and plan; drop --config, --preset, "
                        "--set, --backbone, --backbones, --pretrained, --compile and --budget")
    if preset:
        if config is not None:
            raise UserError(f"--preset {preset} and --config {config}: give one of them")
        from foundation.config import shipped_config
        config = shipped_config(PRESETS[preset])
    names = [b.strip() for name in backbones for b in name.split(",") if b.strip()]
    if names and not several:
        raise UserError(f"unexpected argument {backbones[0]!r}; to train several backbones write --backbones "
                        f"{' '.join(backbones)}")
    if several and (backbone or len(names) < 2):
        raise UserError("--backbones takes two or more names (e.g. --backbones vgg16 resnet50) and replaces --backbone")
    data, config, is_demo = resolve_inputs("classify-train", data, config, out)
    if is_demo and synthetic is None and resume is None:
        synthetic = latest_run(out, "synthetic", marker="manifest.csv")
        if synthetic is not None:
            click.echo(f"adding the latest synthetic images, {synthetic}, to the training split", err=True)
    flags = [f"model.backbone={backbone}"] * bool(backbone) + [f"model.pretrained={pretrained}"] * bool(pretrained)
    flags += [f"train.compile={str(compile_).lower()}"] * (compile_ is not None)
    flags += [f"train.time_budget={budget}"] * bool(budget)
    cfg = load_config(ClassifierConfig, config, [*set_, *flags])
    show_config(cfg, print_config, resume)
    lung_masker = lung_masker_of_runs([resume], out, device, ("last.pt",)) if resume else masker_for(cfg.data, device)
    if names:
        from classifier.compare import compare, train_backbones
        runs, stopped = train_backbones(cfg, names, data, out, synthetic, device, seed, lung_masker)
        if stopped:
            sys.exit(INTERRUPTED)
        result = compare(runs, data, out, cfg=cfg.eval, device=device, seed=seed, lung_masker=lung_masker)
        click.echo(f"trained {', '.join(map(str, runs))}\ncomparison: {result['dest']}/compare.md")
        return runs
    trainer = Trainer(cfg, data, out, synthetic, resume, device, seed, lung_masker=lung_masker)
    run = trainer.run()
    if trainer.stopped:
        sys.exit(INTERRUPTED)
    click.echo(f"{run}\nevaluate with: {cli_command()} evaluate --checkpoint {run}")
    return run


@cli.command("fetch-weights")
@click.argument("backbones", nargs=-1, required=True)
def fetch_weights_command(backbones):
    """Download the ImageNet weights of BACKBONES (torchvision names, timm:<model>) to where --pretrained
    imagenet reads them offline ($TORCH_HOME/hub/checkpoints); copy that folder to a machine without internet."""
    from classifier.weights import checkpoints_dir, fetch_weights
    for name, path in fetch_weights(backbones):
        click.echo(f"{name}: {path}")
    click.echo(f"for a machine without internet, copy {checkpoints_dir()} to its $TORCH_HOME/hub/checkpoints "
               "(default ~/.cache/torch/hub/checkpoints)")


@cli.command()
@common_options
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Classifier run folder or checkpoint (default: latest run).")
@click.option("--cam", "cam_n", type=click.IntRange(0), default=0, show_default=True, help="Write CAM overlays for N test images per class.")
@click.option("--split-from-data", is_flag=True,
              help="On the run's own data: evaluate the data's current test split instead of the run's split.csv "
                   "(less the images the run trained on); for data that changed since training.")
@click.option("--overwrite", is_flag=True, help="Replace a report on other images in the same folder.")
def evaluate(data, config, out, device, seed, set_, checkpoint, cam_n, split_from_data, overwrite):
    """Metrics with 95 % bootstrap intervals, per source and covid-vs-rest, plots and report of a classifier,
    on its run's own test split (split.csv) or on another test set (written to <run>/eval/<name>-<split>)."""
    from classifier.config import ClassifierConfig
    from classifier.evaluate import evaluate as run_evaluate
    from foundation.config import load_config
    data, config, _ = resolve_inputs("classify-train", data, config, out)
    cfg = load_config(ClassifierConfig, config, set_)
    asked = any(s.partition("=")[0] == "eval.tta" for s in set_)  # the key as load_config reads it
    run_evaluate(data, checkpoint, out, cfg.eval, device, cam_n, seed, split_from_data=split_from_data,
                 overwrite=overwrite, lung_masker=lung_masker_of_runs([checkpoint], out, device),
                 tta=cfg.eval.tta if asked else None)


@cli.command("compare")
@common_options
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--dest", type=click.Path(path_type=Path), help="Output folder (default: <out>/compare/<timestamp>).")
@click.option("--overwrite", is_flag=True, help="Replace a comparison in --dest.")
def compare_command(data, config, out, device, seed, set_, runs, dest, overwrite):
    """Compare classifier RUNS on the same test images: metrics with patient-level intervals, McNemar and
    DeLong tests for every pair (Holm-adjusted), a combined ROC; writes compare.md and compare.json."""
    from classifier.compare import compare
    from classifier.config import ClassifierConfig
    from foundation.config import load_config
    data, config, _ = resolve_inputs("classify-train", data, config, out)
    cfg = load_config(ClassifierConfig, config, set_)
    return compare(runs, data, out, dest, cfg.eval, device, seed, overwrite=overwrite,
                   lung_masker=lung_masker_of_runs(list(runs), out, device))["dest"]


@cli.command()
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Classifier run folder or checkpoint (default: latest run).")
@click.option("--method", type=click.Choice(["cam", "gradcam", "gradcampp"]), default="gradcampp", show_default=True)
@click.option("--target-class", help="Explain this class (default: the predicted one).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
def cam(images, checkpoint, method, target_class, out, device):
    """Heat-map overlays (CAM, Grad-CAM, Grad-CAM++) on X-ray IMAGES, written to <run>/cam/<method>
    (a run trained on lung-cropped or lung-masked images sees, and shows, them cropped and masked alike)."""
    from classifier.overlays import explain_files
    written = explain_files(images, checkpoint, out, method, target_class, device,
                            lung_masker_of_runs([checkpoint], out, device))
    for path in written:
        click.echo(path)
    return written


@cli.command("predict")
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Classifier run folder or checkpoint (default: latest run).")
@click.option("--dest", type=click.Path(path_type=Path),
              help="Output folder (default: <run>/predictions/<name of the first image or folder>).")
@click.option("--cam", is_flag=True, help="Also write a CAM overlay per readable image, to <dest>/cam.")
@click.option("--method", type=click.Choice(["cam", "gradcam", "gradcampp"]), help="CAM method (default: the run's eval.cam_method).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier predictions.csv in --dest.")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
def predict_command(images, checkpoint, dest, cam, method, overwrite, batch_size, out, device):
    """Score X-ray IMAGES (files or folders, recursed) with a classifier: predictions.csv with each file's
    class, class probabilities and the covid threshold chosen on validation; unreadable files listed."""
    from classifier.predict import predict_files
    result = predict_files(images, checkpoint, out, dest, cam, method, overwrite, device, batch_size,
                           lung_masker=lung_masker_of_runs([checkpoint], out, device))
    click.echo(f"wrote {result['csv']}: {result['images']} images scored, {result['unreadable']} unreadable")
    return result["csv"]


@cli.command("export")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Classifier run folder or checkpoint (default: latest run).")
@click.option("--format", "fmt", type=click.Choice(["torchscript", "onnx"]), default="torchscript", show_default=True)
@click.option("--dest", type=click.Path(path_type=Path), help="Output folder (default: <run>/export).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier export in --dest.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
def export_command(checkpoint, fmt, dest, overwrite, out):
    """A classifier as one deployable file (preprocessing inside: uint8 films in, probabilities out) and its
    model card (classes, input, validation threshold, data fingerprint, metrics)."""
    from classifier.export import export_model
    return export_model(checkpoint, out, fmt, dest, overwrite)


# ---- lung segmentation commands ----
@cli.command("lungseg-train")
@common_options
@click.option("--resume", type=click.Path(path_type=Path),
              help="Continue a lungseg run from its folder or checkpoint.pt, with that run's config and seed.")
@click.option("--epochs", type=click.IntRange(1), help="Training epochs (overrides train.epochs).")
@print_config_option
def lungseg_train(data, config, out, device, seed, set_, resume, epochs, print_config):
    """Train a U-Net lung segmenter on image/mask pairs; Dice and IoU per source on the test split.

    --data: a manifest (image,mask[,split,group_id|patient_id,source]) or a folder of images/ + masks/
    (default: the lung-mask phantoms, written once to <out>/demo-lungs; with --resume, the run's data)."""
    from augment.phantoms import demo_lung_data
    from foundation.config import load_config
    from lungs import LungsegConfig, train_lungseg
    if resume is not None and (config is not None or set_ or epochs):
        raise UserError(f"--resume {resume}: a resumed run keeps its own config; drop --config, --set and --epochs")
    if data is None and resume is None:
        data = demo_lung_data(out)
        config = config or default_config("lungseg-train", True)
        click.echo(f"No --data given: using the lung-mask phantoms in {data} with {config.name}. "
                   "Give --data DIR to use your own images and masks.", err=True)
    elif config is None and resume is None:
        config = default_config("lungseg-train", False)
    cfg = None if resume else load_config(LungsegConfig, config, [*set_, *([f"train.epochs={epochs}"] if epochs else [])])
    show_config(cfg, print_config, resume)
    result = train_lungseg(cfg, data, out, device, seed, resume)
    if result.interrupted:
        sys.exit(INTERRUPTED)
    click.echo(f"{result.run_dir}\nsegment with: {cli_command()} lungseg --checkpoint {result.run_dir} IMAGES...")
    return result.run_dir


@cli.command("lungseg")
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path),
              help="Segment every image of a manifest (image or path column), images/ folder or folder.")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="lungseg run folder or checkpoint (default: latest run).")
@click.option("--dest", type=click.Path(path_type=Path), help="Output folder (default: <run>/masks).")
@click.option("--overwrite", is_flag=True, help="Replace masks and overlays written before.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
def lungseg(images, data, checkpoint, dest, overwrite, out, device):
    """Lung masks (binary PNGs at each image's own size) and contour overlays of X-ray IMAGES or --data."""
    from lungs import segment_files
    from lungs.inference import input_files
    if images and data:
        raise UserError("give IMAGES or --data, not both")
    dest = segment_files(input_files(list(images), data), checkpoint, dest, out, overwrite, device)
    click.echo(f"wrote masks to {dest / 'mask'}, overlays to {dest / 'overlay'} and {dest / 'masks.csv'}")
    return dest


# ---- the shortcut audit ----
@cli.command("audit")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Classifier run folder or checkpoint (default: latest run).")
@click.option("--lungs", type=click.Path(path_type=Path),
              help="Lung segmenter: a lungseg-train run folder or checkpoint (default: the latest lungseg run).")
@click.option("--data", type=click.Path(path_type=Path),
              help="Images to audit on, chosen as evaluate chooses them (default: the data the run was trained on, "
                   "its test split).")
@click.option("--dest", type=click.Path(path_type=Path),
              help="Output folder (default: <run>/audit; another test set: <run>/audit/<name>-<split>).")
@click.option("--method", type=click.Choice(["cam", "gradcam", "gradcampp"]), help="CAM method (default: the run's eval.cam_method).")
@click.option("--folds", type=click.IntRange(2), default=5, show_default=True, help="Folds of the source probe (by patient).")
@click.option("--examples", type=click.IntRange(0), default=3, show_default=True, help="Example overlays per class.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier audit in --dest.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--seed", type=int, default=0, show_default=True)
def audit_command(checkpoint, lungs, data, dest, method, folds, examples, overwrite, out, device, seed):
    """Is the classifier looking at the lungs? Its CAMs inside the lung masks, a probe of the image source in
    its features, its accuracy with the lungs hidden, and accuracy per source; writes audit.md and audit.json."""
    from audit import run_audit
    return run_audit(checkpoint, lungs, data, out, dest, method, overwrite, device, seed, folds, examples)["dest"]


# ---- the experiment and the demo ----
@cli.command()
@common_options
@click.option("--backbone", help="Classifier backbone (default: model.backbone of the classifier config).")
@click.option("--seeds", type=click.IntRange(1),
              help="Classifier seeds per condition: --seed, --seed + 1, ... (default 3; fewer give no interval).")
@click.option("--folds", type=click.IntRange(2),
              help="Cross-validate instead: K folds grouped by patient, stratified by label x source; every arm "
                   "predicts every film once; paired differences and a decision by rules fixed in advance.")
@click.option("--arms", multiple=True, metavar="ARMS",
              help="With --folds: any of real classic gan gan-lungs placebo (default: all; commas or repeated).")
@click.option("--lungs", "lungs_run", type=click.Path(path_type=Path),
              help="With --folds: a lungseg-train run for the gan-lungs arm's lung-constrained CycleGAN.")
@click.option("--scale", type=click.Choice(["cpu"]),
              help="A preset of the cross-validated experiment: cpu = 3 folds, configs/classify-train-cpu.yaml, "
                   "configs/gan-train-cpu.yaml at 1,500 steps (about 3 hours on 2 CPU cores for cxr3).")
@click.option("--interim", is_flag=True,
              help="With --folds: train nothing; report the folds where every arm has finished (interim.md, "
                   "interim.json), without a decision.")
@click.option("--gan-per-seed", is_flag=True,
              help="Train one CycleGAN and synthetic set per seed, so the interval covers the GAN's variance too.")
@click.option("--minority", default="covid", show_default=True, help="The scarce class the CycleGAN synthesises.")
@click.option("--minority-fraction", type=click.FloatRange(0, 1, min_open=True),
              help="Keep only this share of the minority's training patients, for the GAN and the classifiers.")
@click.option("--policy", default="match-majority", show_default=True,
              help="How many synthetic images join: match-majority, ratio:R or count:N.")
@click.option("--gan-config", type=click.Path(path_type=Path), callback=shipped_if_missing,
              help="YAML for the CycleGAN (default: the defaults in code; demo: configs/gan-train-demo.yaml).")
@click.option("--gan-set", multiple=True, metavar="KEY=VALUE", help="Override one CycleGAN config value (repeatable).")
@click.option("--dest", type=click.Path(path_type=Path),
              help="Experiment folder (default: <out>/ablation/<backbone>[-folds<K>][-f<fraction>][-gan-per-seed]); "
                   "run again to resume.")
def ablation(data, config, out, device, seed, set_, backbone, seeds, folds, arms, lungs_run, scale, interim,
             gan_per_seed, minority, minority_fraction, policy, gan_config, gan_set, dest):
    """Do CycleGAN images help? Real vs real + classic augmentation vs + balanced synthetic images, over seeds;
    with --folds (or --scale), cross-validated arms with a placebo, decided by rules fixed in advance.

    --config and --set configure the classifiers (default: configs/classify-train.yaml)."""
    from ablation.seeds import format_table, run_ablation
    from ablation.stages import ablation_stages, experiment_config
    from classifier.config import ClassifierConfig
    from cyclegan import GanConfig
    from foundation.config import load_config
    from lungs import masker_for
    crossval = folds is not None or scale is not None
    if not crossval and (arms or lungs_run or interim):
        raise UserError("--arms and --lungs belong to the cross-validated ablation (so does --interim): add "
                        "--folds K (or --scale cpu)")
    if crossval and (seeds is not None or gan_per_seed):
        raise UserError("--folds: every arm of a fold uses one seed (--seed) and each fold its own CycleGAN; "
                        "drop --seeds and --gan-per-seed")
    if scale:
        from ablation.crossval import SCALES
        from foundation.config import shipped_config
        preset = SCALES[scale]
        folds, config = folds or preset.folds, config or shipped_config(preset.classifier_config)
        gan_config, gan_set = gan_config or shipped_config(preset.gan_config), (*preset.gan_sets, *gan_set)
    data, config, is_demo = resolve_inputs("classify-train", data, config, out)
    clf_sets = [*set_, *[f"model.backbone={backbone}"] * bool(backbone)]
    clf_cfg = load_config(ClassifierConfig, config, clf_sets)
    if clf_cfg.train.time_budget:  # each arm's measured speed would choose its own length
        click.echo(f"ablation: train.time_budget {clf_cfg.train.time_budget} dropped: every arm trains "
                   f"train.epochs={clf_cfg.train.epochs}", err=True)
        clf_cfg = load_config(ClassifierConfig, config, [*clf_sets, "train.time_budget="])
    gan_cfg = load_config(GanConfig, gan_config or default_config("gan-train", is_demo), gan_set)
    if minority != gan_cfg.train.domain_b:
        raise UserError(f"--minority {minority}: the CycleGAN translates into {gan_cfg.train.domain_b!r}; "
                        f"add --gan-set train.domain_b={minority}")
    lungs = clf_cfg.data
    name = (clf_cfg.model.backbone + (f"-folds{folds}" if crossval else "")
            + (f"-f{minority_fraction:g}" if minority_fraction else "")
            + ("-gan-per-seed" if gan_per_seed else "") + ("-lung-crop" if lungs.lung_crop else "")
            + (f"-{lungs.lung_mask}" if lungs.lung_mask != "none" else ""))
    dest = dest or out / "ablation" / name
    lung_masker = masker_for(lungs, device)
    if lung_masker:
        click.echo(f"ablation: the classifiers see {lungs.lung_settings}; they judge no GAN (gan-eval)", err=True)
    settings = {"backbone": clf_cfg.model.backbone, "classifier_config": experiment_config(clf_cfg),
                "gan_config": experiment_config(gan_cfg), **({"lung_masker": lung_masker.identity} if lung_masker else {})}
    def log(line):
        click.echo(f"ablation: {line}", err=True)

    if crossval:
        from ablation.crossval import parse_arms, report, run_crossval
        if lungs_run is not None and not lungs_run.exists():
            raise UserError(f"--lungs {lungs_run}: no such lungseg-train run folder or checkpoint")
        summary = exit_when_interrupted(lambda: run_crossval(
            data, dest, clf_cfg, gan_cfg, folds, parse_arms(arms), interim, seed=seed, minority=minority,
            minority_fraction=minority_fraction, policy=policy, lungs=lungs_run, device=device, log=log,
            settings=settings, lung_masker=lung_masker))
        click.echo(report(summary))
        click.echo(f"wrote {dest / 'interim.md'} and {dest / 'interim.json'}" if interim else
                   f"wrote {dest / 'report.md'}, {dest / 'summary.json'} and {dest / 'arms'}/<arm>/predictions.csv")
        return dest
    summary = exit_when_interrupted(lambda: run_ablation(
        data, dest, ablation_stages(gan_cfg, clf_cfg, dest, device, lung_masker), clf_cfg.data,
        tuple(range(seed, seed + (seeds or 3))), minority, minority_fraction, policy, log=log, settings=settings,
        gan_per_seed=gan_per_seed))
    click.echo(format_table(summary))
    click.echo(f"wrote {dest / 'table.md'} and {dest / 'summary.json'}")
    return dest


def exit_when_interrupted(run):
    """``run()``; a training in it stopped by Ctrl-C or SIGTERM says how to resume and exits with status 130."""
    from ablation.stages import Interrupted
    try:
        return run()
    except Interrupted as e:
        click.echo(str(e), err=True)
        sys.exit(INTERRUPTED)


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.pass_context
def demo(ctx, out, device):
    """The whole chain on the built-in demo data: inspect, gan-train, synthesize, augment, classify-train,
    evaluate, cam, predict, a two-seed ablation, compare, then lung-mask phantoms, lungseg-train, lungseg
    and the audit of the classifier; ends with what was written where."""
    import json
    import time

    from augment.phantoms import demo_data, demo_lung_data
    start = time.perf_counter()
    data = demo_data(out)
    clf_config, gan_config = default_config("classify-train", True), default_config("gan-train", True)
    ctx.invoke(inspect, data=data, out=out)
    gan_run = ctx.invoke(gan_train, data=data, config=gan_config, out=out, device=device)
    synthetic = ctx.invoke(synthesize_command, data=data, out=out, device=device, n=200)
    manifest = ctx.invoke(augment_command, data=data, out=out, synthetic=synthetic)
    run = ctx.invoke(classify_train, data=manifest, config=clf_config, out=out, device=device)
    ctx.invoke(evaluate, data=manifest, config=clf_config, out=out, device=device, checkpoint=run, cam_n=2)
    overlays = ctx.invoke(cam, images=[data / c / f"{c}_00001.png" for c in ("covid", "normal", "pneumonia")],
                          checkpoint=run, out=out, device=device)
    predictions = ctx.invoke(predict_command, images=[data / "covid"], checkpoint=run, out=out, device=device)
    exported = ctx.invoke(export_command, checkpoint=run, out=out, overwrite=True)
    translation = ctx.invoke(gan_eval, data=data, out=out, device=device, checkpoint=gan_run)
    experiment = ctx.invoke(ablation, data=data, config=clf_config, out=out, device=device, seeds=2,
                            gan_config=gan_config)
    classic = json.loads((experiment / "cells" / "classic-seed0.json").read_text())["run"]
    comparison = ctx.invoke(compare_command, runs=[run, Path(classic)], data=data, config=clf_config, out=out,
                            device=device)
    lung_data = demo_lung_data(out)
    lung_run = ctx.invoke(lungseg_train, data=lung_data, config=default_config("lungseg-train", True), out=out,
                          device=device)
    lung_masks = ctx.invoke(lungseg, images=[lung_data / "covid" / "covid_00001.png"], checkpoint=lung_run,
                            out=out, device=device)
    shortcut_audit = ctx.invoke(audit_command, checkpoint=run, lungs=lung_run, out=out, device=device)
    written = [("demo data (phantoms)", data), ("CycleGAN run", gan_run), ("synthetic covid images", synthetic),
               ("balanced training manifest", manifest), ("classifier run", run),
               ("evaluation (metrics, report, plots, CAMs)", run / "eval"), ("CAM overlays", overlays[0].parent),
               ("predictions on the covid folder", predictions), ("deployable model and model card", exported),
               ("what the translation changed (gan-eval)",
                Path(translation["checkpoint"]).parent / f"gan-eval-step{translation['step']}.html"),
               ("ablation table", experiment / "table.md"),
               ("comparison with the ablation's classic run", Path(comparison) / "compare.md"),
               ("lung-mask phantoms", lung_data),
               ("lung segmenter run (metrics.json)", lung_run), ("lung masks and overlays", lung_masks),
               ("shortcut audit of the classifier", shortcut_audit / "audit.md")]
    click.echo(f"\ndemo finished in {time.perf_counter() - start:.0f} s; it wrote:")
    for what, where in written:
        click.echo(f"  {what:<42} {where}")
    click.echo(f"TensorBoard: tensorboard --logdir {out}")


if __name__ == "__main__":
    cli()
