"""``audit``: is a classifier looking at the lungs? Loads a classifier run and a lung segmenter, segments the
images the classifier is evaluated on, runs the classifier on them as they are, with the lungs hidden and
with only the lungs kept, draws its class activation maps, and writes the four checks of
:func:`audit.checks.audit_checks` as ``audit.json``, ``audit.md``, ``images.csv`` and figures."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from augment.data import warn, write_csv
from augment.lungmask import apply_lung_mask
from classifier.cam import BaseCAM, cam_method
from classifier.checkpoint import CHECKPOINTS, precision, run_data_config
from classifier.config import EvalConfig
from classifier.evaluate import load_evaluation
from classifier.inference import predict, to_input
from classifier.model import Classifier
from classifier.plots import save_figure
from foundation.devices import pick_device
from foundation.errors import UserError, cli_command
from foundation.files import json_safe, write_text_atomic
from foundation.html_report import write_html_report
from foundation.runs import recorded_data, resolve_run_file
from lungs import LungSegmenter, masker_for

from .checks import audit_checks, cam_mass_in_lungs, lung_area, peak_in_lungs
from .figures import examples_figure, share_figure
from .report import key_table, markdown_report, sentences

AUDIT_FILE = "audit.json"
IMAGES_FILE = "images.csv"
VARIANTS = ("plain", "hidden", "kept")  # as they are, lungs hidden, only the lungs kept
UNKNOWN_SOURCE = "(unknown)"
CHUNK = 256  # images whose three variants are held at once


def classify_variants(model: Classifier, images_u8: torch.Tensor, masks: torch.Tensor, size: int,
                      device: torch.device, batch_size: int = 64,
                      bf16: bool = True, cpu_bf16: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Class probabilities ``(N, K)`` of uint8 images ``(N, 1, S, S)`` as they are (``plain``), with the lungs
    hidden (``hidden``) and with everything but the lungs hidden (``kept``), by
    :func:`augment.lungmask.apply_lung_mask` with ``masks`` ``bool (N, 1, S, S)``; and the pooled last
    feature map ``(N, C)`` of the plain images (the head's input; gan-eval's classifier features).

    The three variants of a chunk of images go through :func:`classifier.inference.predict` together, so the
    probabilities are those ``evaluate`` computes."""
    probs: dict[str, list] = {v: [] for v in VARIANTS}
    features, pooled = [], []
    hook = model.cam_layer.register_forward_hook(lambda m, i, o: pooled.append(o.detach().float().mean((2, 3)).cpu()))
    try:
        for start in range(0, len(images_u8), CHUNK):
            x, m = images_u8[start:start + CHUNK], masks[start:start + CHUNK]
            pooled.clear()
            p = predict(model, torch.cat([x, apply_lung_mask(x, m, "hide-lungs"), apply_lung_mask(x, m, "keep-lungs")]),
                        size, device, batch_size, bf16, cpu_bf16)
            for v, part in zip(VARIANTS, p.split(len(x))):
                probs[v].append(part)
            features.append(torch.cat(pooled)[:len(x)])
    finally:
        hook.remove()
    return {v: torch.cat(p) for v, p in probs.items()}, torch.cat(features)


def input_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """Masks ``bool (N, 1, S, S)`` at the classifier's input size: ``bool (N, size, size)`` (resized bilinearly,
    lung where at least one half, as the images are resized)."""
    if masks.shape[-1] == size:
        return masks[:, 0]
    return F.interpolate(masks.float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0] >= 0.5


def cam_batches(explainer: BaseCAM, images_u8: torch.Tensor, masks: torch.Tensor, size: int, device: torch.device,
                batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per batch of uint8 images ``(B, 1, S, S)`` and their masks: the model's input ``(B, 1, size, size)``,
    the maps of the predicted class ``(B, size, size)``, the predicted classes ``(B,)`` and the masks at the
    input size ``bool (B, size, size)``, on the CPU."""
    with explainer as cam:
        for start in range(0, len(images_u8), batch_size):
            x = to_input(images_u8[start:start + batch_size], size, device)
            maps, target, _ = cam(x)
            yield x.cpu(), maps.cpu(), target.cpu(), input_masks(masks[start:start + batch_size], size)


def cam_on_lungs(explainer: BaseCAM, images_u8: torch.Tensor, masks: torch.Tensor, size: int, device: torch.device,
                 batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image ``(N,)``: the share of the CAM's mass inside the lungs, whether its peak is inside them,
    and the share of the image the lungs cover, all at the classifier's input size."""
    share, peak, area = [], [], []
    for _, maps, _, m in cam_batches(explainer, images_u8, masks, size, device, batch_size):
        share.append(cam_mass_in_lungs(maps, m))
        peak.append(peak_in_lungs(maps, m))
        area.append(lung_area(m))
    return tuple(np.concatenate(v) if v else np.zeros(0) for v in (share, peak, area))


def trained_data(run_dir: Path) -> Path:
    """The data a classifier run was trained on, as its ``run.json`` records it."""
    recorded = recorded_data(run_dir)
    if recorded is None:
        raise UserError(f"{run_dir}: its run.json does not say which data the run was trained on; pass --data")
    if not recorded.exists():
        raise UserError(f"{recorded}: the data run {run_dir.name} was trained on is not there any more; pass --data "
                        "with that data (or a copy of it)")
    return recorded


def run_audit(checkpoint: str | Path | None = None, lungs: str | Path | None = None, data: str | Path | None = None,
              out: str | Path = "runs", dest: str | Path | None = None, method: str | None = None,
              overwrite: bool = False, device: str = "auto", seed: int = 0, folds: int = 5, examples: int = 3,
              quiet: bool = False) -> dict:
    """Audit a classifier run (default: the latest under ``out``) with a lung segmenter run (default: the
    latest) on the images ``evaluate`` would report on: its test split of ``data`` (default: the data it was
    trained on) or all of another test set, as the classifier sees them (a run trained with ``data.lung_crop``
    or ``data.lung_mask`` sees them cropped or masked by its own ``data.lungseg_run``).

    Writes ``audit.json``, ``audit.md``, ``images.csv`` (per image: classes predicted as is, lungs hidden,
    only lungs; CAM mass inside the lungs, peak inside, lung area) and the figures ``cam_in_lungs`` and
    ``examples`` (PNG and PDF) to ``dest`` (default ``<run>/audit``, another test set
    ``<run>/audit/<name>-<split>``); prints the key table. An existing audit is refused unless
    ``overwrite``. ``method``: the CAM method (default the run's ``eval.cam_method``); ``folds``: of the
    source probe; ``examples``: overlays per class. Returns the results with ``dest``.
    """
    dev = pick_device(device)
    path = resolve_run_file(checkpoint, out, "classifier", CHECKPOINTS)
    segmenter = LungSegmenter(lungs, dev, out)
    data = Path(data) if data is not None else trained_data(path.parent)
    trained_on = run_data_config(path)
    model, ckpt, ds, chosen = load_evaluation(data, path, dev, quiet=quiet,
                                              lung_masker=masker_for(trained_on, dev))  # a lung run's own segmenter
    dest = Path(dest) if dest is not None else path.parent / "audit" / chosen.folder
    if (dest / AUDIT_FILE).exists() and not overwrite:
        raise UserError(f"{dest}: already holds an audit ({AUDIT_FILE}); pass --overwrite to replace it or "
                        "choose another --dest")

    cfg = EvalConfig(**ckpt["config"].get("eval", {}))
    explainer = cam_method(method or cfg.cam_method, model)
    classes, size, idx = tuple(ckpt["classes"]), ckpt["input_size"], chosen.indices
    images, y = ds.images[idx], ds.labels[idx].numpy()
    groups = [ds.groups[i] for i in idx.tolist()]
    sources = [ds.sources[i] or UNKNOWN_SOURCE for i in idx.tolist()]
    masks = segmenter(images)
    probs, features = classify_variants(model, images, masks, size, dev, cfg.batch_size, **precision(ckpt))
    predicted = {v: p.argmax(1).numpy() for v, p in probs.items()}
    share, peak, area = cam_on_lungs(explainer, images, masks, size, dev, cfg.batch_size)
    empty = int((area == 0).sum())
    if empty and not quiet:
        warn(f"the lung segmenter found no lung in {empty} of {len(y)} images; their CAM mass counts as outside "
             f"the lungs. Check its masks on these data: {cli_command()} lungseg --checkpoint {segmenter.path} --data {data}")

    result = {"checkpoint": str(path), "data": str(data), "split": chosen.split, "n": len(y),
              "n_groups": len(set(groups)), "classes": list(classes), "method": explainer.label,
              "input": trained_on.lung_settings or "whole images",
              "lungs": {"checkpoint": str(segmenter.path), "sha256": segmenter.identity},
              "ci_level": cfg.ci_level, "bootstrap_rounds": cfg.bootstrap, "empty_masks": empty,
              "maps_without_mass": int(np.isnan(share).sum()),
              **audit_checks(y, predicted, share, peak, area, features.numpy(), groups, sources, classes, folds,
                             cfg.bootstrap, seed, cfg.ci_level)}
    result["sentences"] = sentences(result)

    context = (f"{ckpt['model_args']['name']} run {path.parent.name} ({result['input']}), {Path(data).name} "
               f"{chosen.split} split: {len(y)} images of {result['n_groups']} patients")
    save_figure(share_figure(share, area, [classes[k] for k in y], sources, f"{explainer.label} mass inside the "
                             f"lungs\n{context}"), dest / "cam_in_lungs")
    result["figures"] = ["cam_in_lungs"]
    picks = np.concatenate([np.flatnonzero(y == k)[:examples] for k in range(len(classes))]).astype(np.int64)
    if len(picks):
        x, maps, target, m = (torch.cat(t) for t in zip(*cam_batches(explainer, images[picks], masks[picks], size, dev,
                                                                    cfg.batch_size)))
        titles = [f"{classes[y[i]]} → {classes[int(t)]} {probs['plain'][i, int(t)]:.2f}\nin lungs {100 * share[i]:.0f} %, "
                  f"peak {'in' if peak[i] == 1 else 'out'}" for i, t in zip(picks, target)]
        save_figure(examples_figure(x[:, 0].numpy(), maps.numpy(), m.numpy(), titles,
                                    f"{explainer.label} of the predicted class, lung outline from the segmenter\n{context}"),
                    dest / "examples")
        result["figures"].append("examples")

    rows = [{"path": str((ds.root / ds.paths[i]).resolve()), "label": classes[y[n]], "source": sources[n],
             "group_id": groups[n], **{f"predicted_{v}": classes[predicted[v][n]] for v in VARIANTS},
             **{name: "" if np.isnan(v[n]) else f"{v[n]:.4g}" for name, v in
                (("cam_in_lungs", share), ("peak_in_lungs", peak), ("lung_area", area))}}
            for n, i in enumerate(idx.tolist())]
    write_csv(dest / IMAGES_FILE, rows, list(rows[0]))
    report = markdown_report(result)
    write_text_atomic(dest / "audit.md", report)
    write_html_report(dest / "report.html", report, [dest / f"{name}.png" for name in result["figures"]],
                      f"Audit of {dest.parent.name}")
    write_text_atomic(dest / AUDIT_FILE, json.dumps(json_safe(result), indent=2) + "\n")
    if not quiet:
        print(key_table(result))
        print(f"wrote {AUDIT_FILE}, audit.md, report.html, {IMAGES_FILE}, {' and '.join(result['figures'])} (.png, .pdf) to {dest}",
              file=sys.stderr)
    return result | {"dest": dest}
