"""What a CycleGAN translation changed, as pure functions of tensors and arrays (no model, and no file but the
figure of :func:`translation_grid`); each measure returns a plain dict for a JSON report:

- where: :func:`lung_change_ratio`, the share of the change inside the lungs per unit of lung area;
- disease or hospital: :func:`probe_shifts`, how far translations move a disease probe and a source probe,
  in units of the gap between the real films each probe separates;
- copies: :func:`copy_test`, the data-copying test of Meehan, Chaudhuri & Dasgupta (AISTATS 2020);
- tell-tales: :func:`synthetic_vs_real_auc` (a probe telling synthetic films from real ones) and
  :func:`checkerboard_peak` (the periodic trace of the generator's stride-2 transposed convolutions);
- for the reader: :func:`translation_grid` and :func:`diagnostics_markdown`.

Intervals are patient-level cluster bootstraps (:mod:`foundation.bootstrap`), probes are cross-validated over
patient folds (:mod:`foundation.probes`). Features are ``(N, D)`` arrays from one feature space.
"""
from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from skimage.segmentation import find_boundaries

from foundation.bootstrap import bootstrap_weights, group_index, interval, mean_with_interval, weighted_auc
from foundation.files import write_bytes_atomic
from foundation.probes import group_folds, probe_logits


# ---------------------------------------------------------------- where the change falls
def lung_change_ratio(sources: torch.Tensor, translated: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """How much more of each translation's change lies in the lungs than their area would give, ``(N,)``:
    ``(Σ_lungs |t − s| / Σ |t − s|) / lung area share``. 1: no preference; above 1: the change concentrates
    in the lungs; 0: none of it is there. NaN for a film without change or without lungs.

    Args:
        sources, translated: ``float (N, 1, H, W)`` in [0, 1].
        masks: ``bool (N, 1, H, W)``, true on the lungs.
    """
    if not sources.shape == translated.shape == masks.shape or sources.dim() != 4:
        raise ValueError(f"sources {tuple(sources.shape)}, translated {tuple(translated.shape)} and masks "
                         f"{tuple(masks.shape)} must all be (N, 1, H, W)")
    change = (translated.detach().double() - sources.detach().double()).abs().flatten(1).cpu()
    lungs = masks.detach().flatten(1).cpu()
    total, area = change.sum(1), lungs.double().mean(1)
    share = (change * lungs).sum(1) / total.clamp(min=1e-300)
    return torch.where((total > 0) & (area > 0), share / area.clamp(min=1e-300), torch.nan).numpy()


def lung_change_summary(ratios: np.ndarray, groups, rounds: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of :func:`lung_change_ratio`'s ``ratios (N,)`` over the films where it is defined, with its
    ``level`` interval from ``rounds`` resamples of ``groups`` (N patient ids of the source films).

    Returns ``{"value", "ci", "n", "n_groups", "n_undefined"}``.
    """
    return mean_with_interval(ratios, groups, rounds, seed, level) | {"n_undefined": int(np.isnan(ratios).sum())}


# ---------------------------------------------------------------- disease or hospital
def _log_odds(logits: np.ndarray, k: int) -> np.ndarray:
    """Log-odds of class ``k`` from multinomial logits ``(..., K)``: ``z_k − log Σ_{j≠k} exp z_j``."""
    return logits[..., k] - np.logaddexp.reduce(np.delete(logits, k, axis=-1), axis=-1)


def _probe(x: np.ndarray, y: np.ndarray, groups, positive: int, pairs: tuple[np.ndarray, np.ndarray], folds: int,
           seed: int, l2: float) -> tuple[dict, np.ndarray, np.ndarray]:
    """A probe of ``y (N,)`` from ``x (N, D)`` over patient folds: its out-of-fold accuracy and AUC for class
    ``positive``, the out-of-fold log-odds of that class ``(N,)``, and each (source, translation) pair's
    change of the log-odds ``(M,)``, averaged over the fold probes."""
    oof, (before, after) = probe_logits(x, y, group_folds(groups, y, folds, seed), l2, pairs)
    odds = _log_odds(oof, positive)
    fit = {"n": len(y), "n_groups": group_index(groups)[1],
           "accuracy": float((oof.argmax(1) == y).mean()),
           "auc": float(weighted_auc(y == positive, odds, np.ones((1, len(y))))[0])}
    return fit, odds, (_log_odds(after, positive) - _log_odds(before, positive)).mean(0)


def probe_shifts(train_features: np.ndarray, train_labels, train_sources, source_features: np.ndarray,
                 translated_features: np.ndarray, target_label: str, *, train_groups, source_sources, source_groups,
                 folds: int = 5, rounds: int = 1000, seed: int = 0, level: float = 0.95, l2: float = 1.0) -> dict:
    """Did the translation move films towards the disease or towards the hospital? Two linear probes on real
    training films (:func:`foundation.probes.probe_logits`, standardised features, ``folds`` patient folds):

    - the source probe tells each film's collection (multinomial, all training films); its score is the
      log-odds of the *target source*, the source most ``target_label`` training films come from;
    - the disease probe tells ``target_label`` from the other classes within one source (the one with the most
      ``target_label`` films among those that also have others), so that the hospital cannot carry it.

    A pair's shift is the change of the probe's log-odds from the source film to its translation (averaged
    over the fold probes); normalised, it is divided by the gap between the real groups the probe separates,
    in out-of-fold log-odds: for the source probe, films of the target source minus films of each source
    film's own source; for the disease probe, ``target_label`` films of its source minus that source's others.
    So 0: unmoved, 1: moved as far as real films differ. The gaps are held fixed in the intervals.

    Args:
        train_features: ``(N, D)`` of real training films, with ``train_labels``, ``train_sources`` and
            ``train_groups`` (patient ids), N each.
        source_features, translated_features: ``(M, D)``, each domain-A film and its translation, with the
            source films' ``source_sources`` and ``source_groups`` (patient ids; the intervals resample them).
    Returns:
        ``{"target_label", "target_source", "folds", "source_probe", "disease_probe", "disease_minus_source"}``.
        A probe is ``{"unavailable": why}`` or ``{"n", "n_groups", "accuracy", "auc", "gap", "shift_raw",
        "shift"}`` (the source probe adds ``"sources": {source: films}``, the disease probe ``"source"``,
        ``"n_target"``, ``"n_other"``); accuracy and AUC (of the probe's class) are out-of-fold; ``shift_raw``
        (log-odds), ``shift`` (normalised; value None when the gap is not positive) and
        ``disease_minus_source`` (``shift`` of the disease probe minus that of the source probe, on the same
        resamples) are ``mean_with_interval`` dicts; ``disease_minus_source`` is None unless both probes ran.
    """
    x = np.asarray(train_features, dtype=np.float64)
    labels, sources = np.asarray(train_labels, dtype=object), np.asarray(train_sources, dtype=object)
    groups = np.asarray(train_groups, dtype=object)
    pairs = (np.asarray(source_features, dtype=np.float64), np.asarray(translated_features, dtype=np.float64))
    target = labels == target_label
    if not target.any():
        raise ValueError(f"no training film of class {target_label!r}")
    names = sorted(set(sources.tolist()))
    missing = sorted(set(source_sources) - set(names))
    if missing:
        raise ValueError(f"sources {missing} of domain-A films have no training film")

    def most_target(s):
        return (target & (sources == s)).sum()

    def summary(values):
        return mean_with_interval(values, source_groups, rounds, seed, level)

    def too_few(keep):
        n = group_index(groups[keep].tolist())[1]
        return f"{n} patients, fewer than the {folds} folds of the probe" if n < folds else None

    target_source = max(names, key=most_target)
    normalised = {}
    if len(names) < 2:
        source = {"unavailable": f"all training films come from one source ({names[0]})"}
    elif why := too_few(np.ones(len(x), dtype=bool)):
        source = {"unavailable": why}
    else:
        y = np.array([names.index(s) for s in sources])
        fit, odds, shift = _probe(x, y, groups.tolist(), names.index(target_source), pairs, folds, seed, l2)
        mean_of = {s: odds[sources == s].mean() for s in names}
        gap = float(mean_of[target_source] - np.mean([mean_of[s] for s in source_sources]))
        normalised["source"] = shift / gap if gap > 0 else np.full(len(shift), np.nan)
        source = {"sources": dict(Counter(sources.tolist())), **fit, "gap": gap, "shift_raw": summary(shift),
                  "shift": summary(normalised["source"])}

    mixed = [s for s in names if most_target(s) and (~target & (sources == s)).any()]
    within = max(mixed, key=most_target) if mixed else None
    if within is None:
        disease = {"unavailable": f"no source has both {target_label} and other training films"}
    elif why := too_few(sources == within):
        disease = {"unavailable": why}
    else:
        keep = sources == within
        y = target[keep].astype(np.int64)
        fit, odds, shift = _probe(x[keep], y, groups[keep].tolist(), 1, pairs, folds, seed, l2)
        gap = float(odds[y == 1].mean() - odds[y == 0].mean())
        normalised["disease"] = shift / gap if gap > 0 else np.full(len(shift), np.nan)
        disease = {"source": within, "n_target": int(y.sum()), "n_other": int(len(y) - y.sum()), **fit, "gap": gap,
                   "shift_raw": summary(shift), "shift": summary(normalised["disease"])}

    return {"target_label": target_label, "target_source": target_source, "folds": folds, "source_probe": source,
            "disease_probe": disease,
            "disease_minus_source": summary(normalised["disease"] - normalised["source"])
            if len(normalised) == 2 else None}


# ---------------------------------------------------------------- copies
def _mann_whitney_z(x: np.ndarray, y: np.ndarray) -> float:
    """Normal-approximation z of the Mann–Whitney U of ``x (m,)`` against ``y (n,)`` (U: pairs with x above
    y, ties half, from average ranks; variance with the tie correction, no continuity correction). Negative:
    x tends to lie below y. NaN when every value is tied."""
    m, n = len(x), len(y)
    _, inverse, counts = np.unique(np.concatenate([x, y]), return_inverse=True, return_counts=True)
    rank = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # average ranks, from 1
    u = rank[:m].sum() - m * (m + 1) / 2
    variance = m * n / 12 * (m + n + 1 - (counts ** 3 - counts).sum() / ((m + n) * (m + n - 1)))
    return float((u - m * n / 2) / np.sqrt(variance)) if variance > 0 else float("nan")


def copy_test(train_b_features: np.ndarray, heldout_b_features: np.ndarray, translated_features: np.ndarray,
              quantile: float = 0.05) -> dict:
    """Do translations copy training films? Meehan, Chaudhuri & Dasgupta (AISTATS 2020), on the whole set
    (without the paper's cells): the Euclidean distance, in features standardised by the training films, from
    each translation to its nearest real domain-B training film, against the same distance of real domain-B
    films the generator never saw. ``Z_U`` is the Mann–Whitney z of the translations' distances against the
    held-out films': near 0 without copying, strongly negative when translations sit closer to training films
    than fresh real films do (copying), positive when they sit farther (underfitting). A translation closer
    than the ``quantile`` of the held-out distances is flagged as a likely copy; about that share is flagged
    without copying.

    Args:
        train_b_features ``(N, D)``, heldout_b_features ``(H, D)``, translated_features ``(M, D)``.
    Returns:
        ``{"z_u", "n_translated", "n_heldout", "median_distance_translated", "median_distance_heldout",
        "threshold", "flagged" (indices into the translations), "flagged_share", "expected_share"}``.
    """
    train = np.asarray(train_b_features, dtype=np.float64)
    mean, sd = train.mean(0), train.std(0).clip(min=1e-8)

    def nearest(x):
        z = torch.from_numpy((np.asarray(x, dtype=np.float64) - mean) / sd)
        return torch.cdist(z, torch.from_numpy((train - mean) / sd)).amin(1).numpy()

    heldout, translated = nearest(heldout_b_features), nearest(translated_features)
    threshold = float(np.quantile(heldout, quantile))
    flagged = np.flatnonzero(translated < threshold)
    return {"z_u": _mann_whitney_z(translated, heldout), "n_translated": len(translated), "n_heldout": len(heldout),
            "median_distance_translated": float(np.median(translated)),
            "median_distance_heldout": float(np.median(heldout)), "threshold": threshold,
            "flagged": flagged.tolist(), "flagged_share": len(flagged) / len(translated), "expected_share": quantile}


# ---------------------------------------------------------------- tell-tales
def synthetic_vs_real_auc(real_features: np.ndarray, synthetic_features: np.ndarray, real_groups, synthetic_groups,
                          folds: int = 5, seed: int = 0, rounds: int = 1000, level: float = 0.95,
                          l2: float = 1.0) -> dict:
    """How easily a linear probe tells synthetic films from real ones of the same class: the out-of-fold AUC
    of a logistic probe (standardised features, ``folds`` patient folds), with its ``level`` interval from
    ``rounds`` resamples of the patients. 0.5: indistinguishable; 1: every synthetic film gives itself away.

    Args:
        real_features ``(R, D)``, synthetic_features ``(S, D)``; real_groups (R patient ids) and
        synthetic_groups (S, the patients of their source films).
    Returns:
        ``{"auc", "ci", "n_real", "n_synthetic", "n_groups", "folds"}``, or ``{"unavailable": why}`` with fewer
        patients than folds.
    """
    x = np.concatenate([np.asarray(real_features, dtype=np.float64), np.asarray(synthetic_features, np.float64)])
    y = np.repeat([0, 1], [len(real_features), len(synthetic_features)])
    groups = list(real_groups) + list(synthetic_groups)
    n_groups = group_index(groups)[1]
    if n_groups < folds:
        return {"unavailable": f"{n_groups} patients, fewer than the {folds} folds of the probe"}
    oof, _ = probe_logits(x, y, group_folds(groups, y, folds, seed), l2)
    w = np.ones((1, len(y)))
    if rounds:
        w = np.vstack([w, bootstrap_weights(len(y), rounds, seed, groups)])
    auc = weighted_auc(y == 1, oof[:, 1] - oof[:, 0], w)
    return {"auc": float(auc[0]), "ci": list(interval(auc[1:], level)) if rounds else None,
            "n_real": len(real_features), "n_synthetic": len(synthetic_features), "n_groups": n_groups,
            "folds": folds}


PERIODS = (2, 4)
"""Periods in pixels of the checkerboard that the generator's two stride-2 transposed convolutions leave."""


def checkerboard_peak(images: torch.Tensor) -> dict:
    """The checkerboard of transposed convolutions in the mean power spectrum of ``images float (N, 1, S, S)``
    (S a multiple of 4): each image less its mean, under a 2-D Hann window (so the image border adds no
    cross of power along the axes), then ``|FFT|²`` averaged over the images. At each period p of
    :data:`PERIODS`, the power at frequency S/p along y (``"{p}px_y"``: the pattern repeats down the rows),
    along x (``"{p}px_x"``) and along both (``"{p}px_xy"``), over the median power of the ring of frequencies
    at the same radius (within two frequency steps), less those peaks and their neighbours (to which the
    window spreads them). About 1 without a periodic pattern (up to a few where the spectrum falls steeply, as
    in very smooth images); compare translations with real films.

    Returns:
        ``{"ratio": {"2px_y", "2px_x", "2px_xy", "4px_y", "4px_x", "4px_xy"}, "max", "n"}``; NaN for flat images.
    """
    n, c, size, width = images.shape
    if c != 1 or size != width or size % 4:
        raise ValueError(f"images {tuple(images.shape)} must be (N, 1, S, S) with S a multiple of 4")
    x = images.detach().double().cpu()[:, 0]
    hann = torch.hann_window(size, periodic=False, dtype=torch.float64)
    power = torch.fft.fft2((x - x.mean((1, 2), keepdim=True)) * hann[:, None] * hann).abs().pow(2).mean(0).numpy()
    k = np.abs(np.fft.fftfreq(size, 1 / size))  # |frequency| of each row (and column), in cycles per image
    ky, kx = k[:, None], k[None, :]
    radius = np.hypot(ky, kx)
    ratio = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for p in PERIODS:
            a = size // p
            spread = ((ky <= 1) | (np.abs(ky - a) <= 1)) & ((kx <= 1) | (np.abs(kx - a) <= 1))
            for name, (i, j) in (("y", (a, 0)), ("x", (0, a)), ("xy", (a, a))):
                ring = (np.abs(radius - radius[i, j]) < 2) & ~spread
                ratio[f"{p}px_{name}"] = float(power[i, j] / np.median(power[ring]))
    return {"ratio": ratio, "max": max(ratio.values()), "n": n}


# ---------------------------------------------------------------- for the reader
def translation_grid(sources: torch.Tensor, translated: torch.Tensor, masks: torch.Tensor | None,
                     png_path: str | Path, pdf_path: str | Path, titles: list[str] | None = None) -> None:
    """A figure of a few films, one row each: source | translation | absolute difference (one colour scale for
    all rows), with the lung outline drawn on each panel when ``masks`` are given; written to ``png_path``
    (150 dpi) and ``pdf_path``, each atomically.

    Args:
        sources, translated: ``float (N, 1, H, W)`` in [0, 1].
        masks: ``bool (N, 1, H, W)``, true on the lungs, or None (no outline).
        titles: N row labels (such as file names), or None.
    """
    src, out = (t.detach().float().cpu().numpy()[:, 0] for t in (sources, translated))
    change = np.abs(out - src)
    outlines = [None] * len(src) if masks is None else [find_boundaries(m, mode="inner")
                                                          for m in masks.detach().cpu().numpy()[:, 0]]
    fig = Figure(figsize=(7.4, 2.2 * len(src) + 0.4), layout="constrained")
    axes = fig.subplots(len(src), 3, squeeze=False)
    for r, row in enumerate(axes):
        for ax, image, cmap, top in zip(row, (src[r], out[r], change[r]), ("gray", "gray", "magma"),
                                        (1.0, 1.0, max(float(change.max()), 1e-6))):
            shown = ax.imshow(image, cmap=cmap, vmin=0, vmax=top, interpolation="none")
            if outlines[r] is not None:
                rgba = np.zeros((*outlines[r].shape, 4))
                rgba[outlines[r]] = (0.34, 0.71, 0.91, 1.0)  # Okabe-Ito sky blue
                ax.imshow(rgba, interpolation="none")
            ax.set_xticks([])
            ax.set_yticks([])
        if titles is not None:
            row[0].set_ylabel(titles[r].replace("$", r"\$"), fontsize=7)
    for ax, name in zip(axes[0], ("source", "translation", "|translation − source|")):
        ax.set_title(name, fontsize=9)
    fig.colorbar(shown, ax=axes[:, 2].tolist(), label="absolute change", shrink=0.8)
    for path, fmt in ((png_path, "png"), (pdf_path, "pdf")):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=150)
        write_bytes_atomic(path, buffer.getvalue())


def _with_interval(entry: dict | None, digits: int = 2) -> tuple[str, str]:
    """``("0.12", "[0.05, 0.20]")`` of a ``mean_with_interval`` dict; ``n/a`` where undefined."""
    if not entry or entry.get("value") is None:
        return "n/a", ""
    ci = entry.get("ci")
    return f"{entry['value']:.{digits}f}", f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else ""


def diagnostics_markdown(result: dict) -> str:
    """A short markdown summary (sentences, then one table) of the combined diagnostics ``result``:
    ``{"features": name of the feature space, "lung_change": lung_change_summary, "probes": probe_shifts,
    "copies": copy_test, "synthetic_vs_real": synthetic_vs_real_auc, "checkerboard": {"translated",
    "real"}: checkerboard_peak}``; a missing or None part is left out."""
    lines, rows = [f"Feature space of the probes and distances: {result.get('features', 'unnamed')}.", ""], []
    if result.get("lung_change"):
        value, ci = _with_interval(result["lung_change"], 1)
        lines.append(f"- Changes concentrate in the lungs {value}× their area share {ci} (1: no preference).")
        rows.append(("change in the lungs / lung area share", value, ci, "1: no preference; above 1: in the lungs"))
    probes = result.get("probes")
    if probes:
        for key, what in (("disease_probe", "disease"), ("source_probe", "source")):
            probe = probes[key]
            if "unavailable" in probe:
                lines.append(f"- The {what} probe did not run: {probe['unavailable']}.")
                continue
            value, ci = _with_interval(probe["shift"])
            raw, raw_ci = _with_interval(probe["shift_raw"])
            towards = (f"{probes['target_label']} vs other films of {probe['source']}" if what == "disease"
                       else f"towards {probes['target_source']}")
            lines.append(f"- The translation moved the {what} probe {value} {ci} of the real gap ({towards}; "
                         f"probe out-of-fold accuracy {probe['accuracy']:.2f}, AUC {probe['auc']:.2f}).")
            rows.append((f"{what} probe shift (share of the real gap)", value, ci,
                         "0: unmoved; 1: as far as real films"))
            rows.append((f"{what} probe shift (log-odds)", raw, raw_ci, f"gap {probe['gap']:.2f}"))
        if probes.get("disease_minus_source"):
            value, ci = _with_interval(probes["disease_minus_source"])
            rows.append(("disease minus source shift", value, ci, "above 0: more disease than hospital"))
    copies = result.get("copies")
    if copies:
        lines.append(f"- Copy test: Z_U = {copies['z_u']:.2f} (about 0 without copying, strongly negative when "
                     f"translations copy training films); {100 * copies['flagged_share']:.1f} % of translations "
                     f"flagged as likely copies (about {100 * copies['expected_share']:.0f} % without copying).")
        rows.append(("copy test Z_U", f"{copies['z_u']:.2f}", "", "about 0; strongly negative: copying"))
        rows.append(("flagged as copies", f"{100 * copies['flagged_share']:.1f} %", "",
                     f"about {100 * copies['expected_share']:.0f} % without copying"))
    telltale = result.get("synthetic_vs_real")
    if telltale and "unavailable" in telltale:
        lines.append(f"- The synthetic vs real probe did not run: {telltale['unavailable']}.")
    elif telltale:
        value, ci = _with_interval({"value": telltale["auc"], "ci": telltale["ci"]})
        lines.append(f"- A linear probe tells synthetic from real films with AUC {value} {ci} "
                     "(0.5: indistinguishable).")
        rows.append(("synthetic vs real AUC", value, ci, "0.5: indistinguishable"))
    board = result.get("checkerboard")
    if board:
        fake, real = board["translated"]["max"], board["real"]["max"]
        lines.append(f"- Checkerboard peak (power at periods of 2 and 4 pixels over its ring): {fake:.1f} in "
                     f"translations, {real:.1f} in real films.")
        rows.append(("checkerboard peak, translations / real", f"{fake:.1f} / {real:.1f}", "",
                     "about 1 without a pattern"))
    table = ["| measure | value | interval | reads |", "|---|---|---|---|"]
    table += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines + [""] + table) + "\n"
