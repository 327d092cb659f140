"""The data doctor: what training will see in a data folder, and what is wrong with it."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from foundation.errors import UserError

from .data import DataConfig, XrayDataset, load_dataset
from .groups import near_duplicate_pairs


@dataclass
class InspectConfig:
    """``inspect`` reads data as training does; only the ``data`` section applies."""
    data: DataConfig = field(default_factory=DataConfig)


def inspect_data(data: str | Path, cfg: DataConfig) -> dict:
    """Counts per class, split and source; unreadable files with reasons; exact duplicates; how
    patient groups were formed; patient groups and near-duplicate pairs found in two splits; image
    size and mode statistics.

    Uses the same reader and dataset code as training. Raises :class:`UserError` (after the
    report is complete) when a required class has no readable image.
    """
    ds = load_dataset(data, cfg, required=(), quiet=True)
    report = {
        "data": str(data),
        "images": len(ds),
        "per_class": dict(Counter(ds.classes[i] for i in ds.labels.tolist())),
        "per_split_class": _count(ds, ds.splits),
        "per_source_class": _count(ds, [s or "(none)" for s in ds.sources]),
        "skipped": ds.skipped,
        "duplicates": _duplicates(ds),
        "grouping": ds.grouping,
        "no_patient_information": not any(ds.grouping.get(k) for k in ("manifest_ids", "pattern", "near_duplicates")),
        "groups_in_two_splits": _leaks(ds),
        "near_duplicates_in_two_splits": _near_duplicate_leaks(ds, cfg),
        "sizes_and_modes": _headers(ds),
    }
    report["missing_classes"] = [c for c in cfg.classes if report["per_class"].get(c, 0) == 0]
    return report


def _count(ds: XrayDataset, keys: list[str]) -> dict:
    out = defaultdict(Counter)
    for k, y in zip(keys, ds.labels.tolist()):
        out[k][ds.classes[y]] += 1
    return {k: dict(v) for k, v in sorted(out.items())}


def _duplicates(ds: XrayDataset) -> list[list[str]]:
    by_hash = defaultdict(list)
    for p, digest in zip(ds.paths, ds.hashes):
        by_hash[digest].append(p)
    return [ps for ps in by_hash.values() if len(ps) > 1]


def _leaks(ds: XrayDataset) -> dict[str, list[str]]:
    splits = defaultdict(set)
    for g, s in zip(ds.groups, ds.splits):
        splits[g].add(s)
    return {g: sorted(s) for g, s in sorted(splits.items()) if len(s) > 1}


def _near_duplicate_leaks(ds: XrayDataset, cfg: DataConfig) -> list[list[str]]:
    """``[path, split, path, split]`` for each near-duplicate pair whose images sit in two splits."""
    pairs = near_duplicate_pairs(ds.images, cfg.near_duplicate_threshold, cfg.near_duplicate_min_correlation)
    return [[ds.paths[i], ds.splits[i], ds.paths[j], ds.splits[j]]
            for i, j in pairs.tolist() if ds.splits[i] != ds.splits[j]]


def _headers(ds: XrayDataset) -> dict:
    modes, widths, heights = Counter(), [], []
    for p in ds.paths:
        try:
            with Image.open(ds.root / p) as im:
                modes[im.mode] += 1
                widths.append(im.width)
                heights.append(im.height)
        except OSError:
            modes["(dicom or other)"] += 1
    stats = {"modes": dict(modes)}
    if widths:
        stats.update(width_min=min(widths), width_max=max(widths), height_min=min(heights), height_max=max(heights))
    return stats


def format_report(r: dict) -> str:
    """Plain-text rendering of :func:`inspect_data`'s report."""
    lines = [f"{r['data']}: {r['images']} readable images"]
    classes = sorted({c for v in r["per_split_class"].values() for c in v} | set(r["missing_classes"]))
    header = f"  {'':<14}" + "".join(f"{c:>11}" for c in classes)
    for title, table in (("split", r["per_split_class"]), ("source", r["per_source_class"])):
        lines += [f"by {title}:", header]
        lines += [f"  {k:<14}" + "".join(f"{v.get(c, 0):>11}" for c in classes) for k, v in table.items()]
    s = r["sizes_and_modes"]
    if "width_min" in s:
        lines.append(f"sizes: width {s['width_min']}–{s['width_max']}, height {s['height_min']}–{s['height_max']}; "
                     f"modes: " + ", ".join(f"{m} {n}" for m, n in s["modes"].items()))
    lines.append(f"unreadable or ignored files: {len(r['skipped'])}")
    lines += [f"  {p}: {why}" for p, why in r["skipped"].items()]
    lines.append(f"exact duplicates (same bytes): {len(r['duplicates'])} set(s)")
    lines += ["  " + " = ".join(ps) for ps in r["duplicates"]]
    g = r["grouping"]
    lines.append("patient groups formed by: " + ", ".join(
        f"{what} {g.get(key, 0)}" for key, what in (("manifest_ids", "manifest ids"), ("pattern", "data.group_pattern"),
                                                     ("near_duplicates", "near-duplicates"),
                                                     ("one_per_image", "one per image (no patient information)")))
                 + f" images; {g.get('near_duplicate_pairs', 0)} near-duplicate pair(s)"
                 + (f"; {g['pattern_unmatched']} path(s) the pattern did not match" if g.get("pattern_unmatched") else "")
                 + (f"; {g['missing_ids']} manifest row(s) without a patient id (empty, nan, None or null), each its "
                    "own group" if g.get("missing_ids") else ""))
    if r["no_patient_information"]:
        lines.append("warning: the data carries no patient information (no group_id/patient_id, no data.group_pattern, "
                     "no near-duplicates found): every image is its own group, so films of one patient can land in "
                     "two splits; add patient ids to a manifest or set data.group_pattern")
    lines.append(f"patient groups in two splits: {len(r['groups_in_two_splits'])}")
    lines += [f"  {g}: {', '.join(s)}" for g, s in r["groups_in_two_splits"].items()]
    lines.append(f"near-duplicate images in two splits (a leak): {len(r['near_duplicates_in_two_splits'])} pair(s)")
    lines += [f"  {a} ({sa}) ~ {b} ({sb})" for a, sa, b, sb in r["near_duplicates_in_two_splits"]]
    if r["missing_classes"]:
        lines.append(f"missing classes: {', '.join(r['missing_classes'])}")
    return "\n".join(lines)


def require_classes(r: dict) -> None:
    if r["missing_classes"]:
        missing = ", ".join(r["missing_classes"])
        raise UserError(f"{r['data']}: no readable image of class {missing}; add images under "
                        f"{r['data']}/<class>/ or rows with that label to the manifest")
