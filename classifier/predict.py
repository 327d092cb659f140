"""``predict``: score new films with a trained classifier and write ``predictions.csv``.

Files and folders (recursed) are decoded exactly as the run's data stage decoded its images
(:func:`augment.data.decode_to_square` at the run's size and resize mode, then
:func:`augment.data.lung_view`: a run trained on lung-cropped or lung-masked images sees its input cropped
and masked alike, and its CAM overlays show that view) by a thread pool that works ahead of the model, so
decoding overlaps inference. Unreadable files are rows with their reason, never a
stop. The positive class (``eval.positive_class``, covid) is called at the threshold chosen on the run's
validation split for ``eval.specificity`` when ``best.pt`` keeps its validation predictions, else every
image gets its most probable class.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from augment.data import batches_ahead, decode_to_square, lung_view, warn_lungs_not_found, write_csv
from augment.imageio import IMAGE_SUFFIXES, MAX_PIXELS, UnreadableImage
from augment.lungmask import LungMasker
from foundation.devices import pick_device
from foundation.errors import UserError, cli_command
from foundation.outputs import safe_name
from foundation.runs import resolve_run_file

from .checkpoint import CHECKPOINTS, data_config, load_classifier, precision, run_lung_masker, tta_views
from .config import EvalConfig
from .evaluate import validation_predictions
from .inference import predict
from .metrics import sensitivity_at_specificity
from .overlays import write_overlays

ARGMAX = "argmax"  # the threshold column when no validation threshold exists


def find_images(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """``(path, reason)`` for every file named or found under a named folder (recursed, sorted, hidden
    files and folders left out); ``reason`` is "" for an image suffix, else why it is not read. A named
    path that does not exist is a :class:`UserError`."""
    if not inputs:
        raise UserError(f"no images given; name X-ray files or folders, e.g. {cli_command()} predict runs/demo-data")
    found = []
    for item in map(Path, inputs):
        if item.exists() and not item.is_dir():  # a FIFO or device too: its row says it is not read
            found.append(item)
        elif item.is_dir():
            for dirpath, dirnames, filenames in os.walk(item):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                found += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
        else:
            raise UserError(f"{item}: no such file or folder; name X-ray files or folders that exist")
    for p in found:  # predictions.csv is UTF-8: a name it cannot hold is refused before any work
        try:
            str(p).encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(f"{os.fsencode(p)!r}: file name is not valid UTF-8 and cannot be listed in "
                            "predictions.csv; rename the file") from None
    not_image = "not an image suffix (" + ", ".join(sorted(IMAGE_SUFFIXES)) + ")"
    return [(p, "" if p.suffix.lower() in IMAGE_SUFFIXES else not_image) for p in found]


def decoded_batches(files: list[tuple[Path, str]], size: int, resize: str, batch_size: int,
                    workers: int, max_pixels: int = MAX_PIXELS) -> Iterator[list[np.ndarray | str]]:
    """Batches of ``batch_size`` files in order, each file a ``uint8 (size, size)`` array or the reason
    it could not be read, decoded by ``workers`` threads a few batches ahead (:func:`augment.data.batches_ahead`)."""
    def decode(file: tuple[Path, str]) -> np.ndarray | str:
        path, reason = file
        if reason:
            return reason
        try:
            return decode_to_square(path, size, resize, max_pixels)
        except (UnreadableImage, OSError) as e:
            return str(e) or type(e).__name__

    return batches_ahead(files, decode, batch_size, workers)


def validation_threshold(ckpt: dict, cfg: EvalConfig) -> tuple[float | None, str]:
    """The threshold on ``cfg.positive_class``'s probability chosen on the run's validation split for
    specificity ``cfg.specificity`` (best sensitivity among those), or None and why there is none."""
    classes = list(ckpt["classes"])
    if cfg.positive_class not in classes:
        return None, f"the model has no class {cfg.positive_class!r} (eval.positive_class)"
    val = validation_predictions(ckpt, split="new images")
    if isinstance(val, str):
        return None, val
    k = classes.index(cfg.positive_class)
    positive = val[0] == k
    if positive.all() or not positive.any():
        return None, "the validation split lacks positive or negative images to choose a threshold on"
    return sensitivity_at_specificity(positive, val[1][:, k], cfg.specificity)[1], ""


def decide(prob: np.ndarray, positive: int | None, threshold: float | None) -> np.ndarray:
    """Predicted class indices ``(N,)`` of probabilities ``(N, K)``: ``positive`` where its probability
    reaches ``threshold``, otherwise the most probable other class; plain argmax without a threshold."""
    if threshold is None:
        return prob.argmax(1)
    others = prob.copy()
    others[:, positive] = -1
    return np.where(prob[:, positive] >= threshold, positive, others.argmax(1))


def predict_files(inputs: Sequence[str | Path], checkpoint: str | Path | None = None, out: str | Path = "runs",
                  dest: str | Path | None = None, cam: bool = False, method: str | None = None,
                  overwrite: bool = False, device: str = "auto", batch_size: int = 64,
                  workers: int | None = None, quiet: bool = False, lung_masker: LungMasker | None = None) -> dict:
    """Score image files and folders with a classifier run (default: the latest under ``out``); a run trained
    with lung settings needs ``lung_masker``, the segmenter of its ``data.lungseg_run``.

    Writes ``<dest>/predictions.csv`` (default ``dest``: ``<run>/predictions/<name of the first input>``):
    per file ``path``, ``predicted``, ``prob_<class>`` for each class, ``threshold`` (the validation
    threshold applied to the positive class, or ``argmax``), ``cam`` (the overlay written with ``cam``)
    and ``error`` (why an unreadable file has no prediction). A ``dest`` holding predictions is refused
    unless ``overwrite``, which also removes the overlays written there before.

    Returns ``{"csv", "images", "unreadable", "threshold", "threshold_note", "lungs_not_found"}`` (the last: the
    images a lung-cropped run saw uncropped, their lungs too small in the segmenter's masks).
    """
    dev = pick_device(device)
    path = resolve_run_file(checkpoint, out, "classifier", CHECKPOINTS)
    files = find_images(inputs)
    first = Path(inputs[0])
    name = safe_name(first.stem if first.is_file() else first.resolve().name)
    dest = Path(dest) if dest is not None else path.parent / "predictions" / (
        name + (f"-and-{len(inputs) - 1}-more" if len(inputs) > 1 else ""))
    csv_path = dest / "predictions.csv"
    if csv_path.exists() and not overwrite:
        raise UserError(f"{csv_path}: predictions already there; pass --overwrite or choose another --dest")

    model, ckpt = load_classifier(path, dev)
    classes, size, data = tuple(ckpt["classes"]), ckpt["input_size"], data_config(ckpt)
    lung_masker = run_lung_masker(ckpt, path, lung_masker)
    cfg = EvalConfig(**ckpt["config"].get("eval", {}))
    threshold, note = validation_threshold(ckpt, cfg)
    positive = classes.index(cfg.positive_class) if threshold is not None else None
    if threshold is None and not quiet:
        print(f"predict: no validation threshold ({note}); each image gets its most probable class", file=sys.stderr)
    for old in sorted((dest / "cam").glob("[0-9][0-9][0-9][0-9][0-9]_*.png")):  # overlays of the run replaced
        old.unlink()

    from tqdm import tqdm
    rows, unreadable, no_lungs = [], 0, []
    batches = decoded_batches(files, data.decode_size, data.resize, batch_size, workers or min(4, os.cpu_count() or 1),
                              data.max_pixels)
    with tqdm(total=len(files), desc="predicting", unit="img", disable=quiet, file=sys.stderr) as bar:
        for batch in batches:
            start = len(rows)
            rows += [{"path": str(files[start + i][0])} for i in range(len(batch))]
            ok = [i for i, x in enumerate(batch) if not isinstance(x, str)]
            for i, x in enumerate(batch):
                if isinstance(x, str):
                    rows[start + i]["error"] = x
                    unreadable += 1
            if ok:
                images, faint = lung_view(torch.from_numpy(np.stack([batch[i] for i in ok])).unsqueeze(1), data,
                                          lung_masker)
                no_lungs += [rows[start + i]["path"] for i, f in zip(ok, faint.tolist()) if f]
                prob = predict(model, images, size, dev, len(ok), **precision(ckpt),
                               tta=tta_views(ckpt)).numpy()
                for i, p, c in zip(ok, prob, decide(prob, positive, threshold)):
                    rows[start + i] |= {"predicted": classes[c], "threshold": ARGMAX if threshold is None else f"{threshold:.6g}",
                                        **{f"prob_{k}": f"{q:.6f}" for k, q in zip(classes, p)}}
                if cam:
                    names = [f"{start + i:05d}_{Path(rows[start + i]['path']).name}" for i in ok]
                    written, _ = write_overlays(model, images, names, classes, size, dev,
                                                method or cfg.cam_method, dest / "cam")
                    for i, w in zip(ok, written):
                        rows[start + i]["cam"] = str(w)
            bar.update(len(batch))

    columns = ["path", "predicted", *[f"prob_{k}" for k in classes], "threshold", *(["cam"] if cam else []), "error"]
    write_csv(csv_path, rows, columns)
    if not quiet:
        warn_lungs_not_found(no_lungs, len(rows) - unreadable, data)
    if unreadable and not quiet:
        print(f"predict: {unreadable} of {len(rows)} files could not be read; their reasons are in {csv_path}",
              file=sys.stderr)
    return {"csv": csv_path, "images": len(rows) - unreadable, "unreadable": unreadable,
            "threshold": threshold, "threshold_note": note, "lungs_not_found": len(no_lungs)}
