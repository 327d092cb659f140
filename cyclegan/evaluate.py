"""``gan-eval``: how far translated domain-A images are from real domain-B images, and how much
each translation keeps of its source."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from augment.data import XrayDataset, load_dataset
from augment.lungmask import LungMasker
from foundation.devices import pick_device
from foundation.files import json_safe, write_text_atomic
from foundation.html_report import write_html_report
from foundation.runs import resolve_run_file

from .checkpoint import CHECKPOINT_NAME, load_generator_ab
from .config import GanConfig
from .diagnostics import (checkerboard_peak, copy_test, diagnostics_markdown, lung_change_ratio, lung_change_summary,
                          probe_shifts, synthetic_vs_real_auc, translation_grid)
from .domains import check_masker, domain_name, domain_rows, lung_masks, require_domain
from .inference import in_batches, translate_films
from .metrics import frechet_distance, intensity_texture_features, kernel_inception_distance, ssim_pairs

FeatureFn = Callable[[torch.Tensor], torch.Tensor]
"""``(B, 1, H, W)`` in [0, 1] → features ``(B, D)``."""
GRID_FILMS = 8  # films in gan-eval's source | translation | change figure

ClassifyFn = Callable[[torch.Tensor], torch.Tensor]
"""``(B, 1, H, W)`` in [0, 1] → bool ``(B,)``: True where the classifier calls the image domain B."""


def measure_translation(sources: torch.Tensor, translated: torch.Tensor, real_b: torch.Tensor,
                        features: Optional[FeatureFn] = None, classify: Optional[ClassifyFn] = None,
                        device: torch.device | str = "cpu", batch_size: int = 64) -> dict:
    """Quality measures of a translation.

    Args:
        sources: domain-A images ``(N, 1, H, W)`` in [0, 1].
        translated: their translations ``(N, 1, H, W)`` in [0, 1].
        real_b: real domain-B images ``(M, 1, H, W)`` in [0, 1].
        features: feature function; None uses :func:`intensity_texture_features`.
        classify: optional domain-B detector; gives ``share_called_b``.
    Returns:
        ``fd``, ``kid``, ``kid_std`` (translated vs real B in feature space), ``ssim_mean``,
        ``ssim_std`` (source vs translation), ``share_called_b`` (or None), counts and feature name.
    """
    device = torch.device(device)
    feature_fn = features or intensity_texture_features
    real_f = in_batches(feature_fn, real_b, batch_size, device).double().numpy()
    fake_f = in_batches(feature_fn, translated, batch_size, device).double().numpy()
    kid, kid_std = kernel_inception_distance(real_f, fake_f)
    ssim = ssim_pairs(sources, translated, device)
    share = None
    if classify is not None:
        share = float(in_batches(classify, translated, batch_size, device).float().mean())
    return {"features": getattr(feature_fn, "__name__", type(feature_fn).__name__),
            "n_translated": len(translated), "n_real_b": len(real_b),
            "fd": frechet_distance(real_f, fake_f), "kid": kid, "kid_std": kid_std,
            "ssim_mean": float(ssim.mean()), "ssim_std": float(ssim.std()), "share_called_b": share}


def evaluate_gan(data: str | Path, out: str | Path = "runs", checkpoint: str | Path | None = None,
                 features: Optional[FeatureFn] = None, classify: Optional[ClassifyFn] = None,
                 device: str = "auto", split: str = "test", n: Optional[int] = None,
                 lung_masker: Optional[LungMasker] = None) -> dict:
    """Translate the domain-A images of ``split`` with a GAN checkpoint (default: the latest run under
    ``out``) and measure them against the real domain-B images of that split. The default is the held-out
    ``test`` split (the discriminator has seen the training images); without test images of both
    domains, ``val``, saying so. ``lung_masker``: the lung masks of a lung-constrained GAN's segmenter (its
    composite needs them), or of any segmenter, to measure where the translation changed the films.

    Writes ``gan-eval-step<step>.json`` (the measures and :func:`diagnose`), ``.md`` (the diagnostics in
    sentences and a table) and ``.png``/``.pdf`` (source | translation | change of a few films) next to the
    checkpoint, prints them and returns the dict.
    """
    path = resolve_run_file(checkpoint, out, "gan", (CHECKPOINT_NAME,), CHECKPOINT_NAME)
    dev = pick_device(device)
    generator, cfg, state = load_generator_ab(path, dev)
    t = cfg.train
    dataset = load_dataset(data, cfg.data, required=(t.domain_a, t.domain_b))
    if split == "test" and min(len(domain_rows(dataset, "test", cfg, side)) for side in "ab") == 0:
        print(f"{data}: no test image of {domain_name(cfg, 'a')} or {domain_name(cfg, 'b')}; measuring on the val split")
        split = "val"
    rows_a, rows_b = (domain_rows(dataset, split, cfg, side) for side in "ab")
    for side, rows in zip("ab", (rows_a, rows_b)):
        require_domain(dataset, rows, split, cfg, side, data)
    rows_a = rows_a[:n]
    check_masker(state.get("lung_masker"), lung_masker if t.lung_constraint != "none" else None, path)
    masks = lung_masks(dataset, cfg, lung_masker)  # any GAN's, for where it changed the film
    films = dataset.images[rows_a]
    if t.lung_constraint != "none":
        films = torch.cat([films, masks[rows_a].to(torch.uint8) * 255], 1)
    films = films.float() / 255
    sources = films[:, :1]
    real_b = dataset.images[rows_b].float() / 255
    translated = in_batches(lambda x: translate_films(generator, x, cfg), films, cfg.synth.batch_size, dev)
    result = measure_translation(sources, translated, real_b, features, classify, dev)
    result.update(checkpoint=str(path), step=state["step"], split=split, domain_a=domain_name(cfg, "a"),
                  domain_b=domain_name(cfg, "b"), lung_constraint=t.lung_constraint,
                  lung_segmenter=lung_masker.identity if lung_masker else None)
    feature_fn = features or intensity_texture_features
    result["diagnostics"] = diagnose(dataset, cfg, rows_a, rows_b, sources, translated, real_b,
                                     None if masks is None else masks[rows_a], feature_fn, dev)
    stem = path.parent / f"gan-eval-step{state['step']}"
    translation_grid(sources[:GRID_FILMS], translated[:GRID_FILMS],
                     None if masks is None else masks[rows_a][:GRID_FILMS], stem.with_suffix(".png"),
                     stem.with_suffix(".pdf"), titles=[Path(dataset.paths[i]).name for i in rows_a[:GRID_FILMS].tolist()])
    write_text_atomic(stem.with_suffix(".json"), json.dumps(json_safe(result), indent=2) + "\n")
    report = (f"# gan-eval of {path} (step {state['step']}, {split} split)\n\n```\n{format_table(result)}\n```\n\n"
              + diagnostics_markdown(result["diagnostics"]) + "\n")
    write_text_atomic(stem.with_suffix(".md"), report)
    write_html_report(stem.with_suffix(".html"), report, [stem.with_suffix(".png")], f"gan-eval of {path.parent.name}")
    print(format_table(result))
    print(diagnostics_markdown(result["diagnostics"]))
    print(f"wrote {stem}.json, .md, .html, .png and .pdf")
    return result


def diagnose(dataset: XrayDataset, cfg: GanConfig, rows_a: torch.Tensor, rows_b: torch.Tensor, sources: torch.Tensor,
             translated: torch.Tensor, real_b: torch.Tensor, masks: Optional[torch.Tensor], features: FeatureFn,
             device: torch.device, batch_size: int = 64) -> dict:
    """The :mod:`cyclegan.diagnostics` of a translation of ``sources`` (domain-A films at ``rows_a``) into
    ``translated``, against the real domain-B films ``real_b`` (at ``rows_b``), all ``(N, 1, S, S)`` in [0, 1];
    probes and distances in the space of ``features``, fitted on the real training-split films of every class.
    ``masks`` ``bool (N, 1, S, S)`` of the sources (None: the lung measure is left out)."""
    def feats(images):
        return in_batches(features, images, batch_size, device).double().numpy()

    train = dataset.indices("train")
    train_f = feats(dataset.images[train].float() / 255)
    source_f, translated_f, real_b_f = feats(sources), feats(translated), feats(real_b)
    groups_a = [dataset.groups[i] for i in rows_a.tolist()]
    groups_b = [dataset.groups[i] for i in rows_b.tolist()]
    is_b = np.isin(train.numpy(), domain_rows(dataset, "train", cfg, "b").numpy())
    out = {"features": getattr(features, "__name__", type(features).__name__)}
    if masks is not None:
        out["lung_change"] = lung_change_summary(lung_change_ratio(sources, translated, masks), groups_a)
    out["probes"] = probe_shifts(
        train_f, [dataset.classes[k] for k in dataset.labels[train].tolist()], [dataset.sources[i] for i in train.tolist()],
        source_f, translated_f, cfg.train.domain_b, train_groups=[dataset.groups[i] for i in train.tolist()],
        source_sources=[dataset.sources[i] for i in rows_a.tolist()], source_groups=groups_a)
    out["copies"] = copy_test(train_f[is_b], real_b_f, translated_f)
    out["synthetic_vs_real"] = synthetic_vs_real_auc(real_b_f, translated_f, groups_b, groups_a)
    out["checkerboard"] = {"translated": checkerboard_peak(translated), "real": checkerboard_peak(real_b)}
    return out


def format_table(result: dict) -> str:
    """The measures as an aligned two-column text table."""
    b = result.get("domain_b", "B")
    rows = [("features", result["features"]),
            (f"translated / real {b}", f"{result['n_translated']} / {result['n_real_b']}"),
            ("Fréchet distance", f"{result['fd']:.4g}"),
            ("KID", f"{result['kid']:.4g} ± {result['kid_std']:.2g}"),
            ("SSIM source vs translation", f"{result['ssim_mean']:.3f} ± {result['ssim_std']:.3f}"),
            (f"share called {b}", "n/a (no classifier given)" if result["share_called_b"] is None
             else f"{result['share_called_b']:.3f}")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
