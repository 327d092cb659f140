"""The split belongs to the run: ``split.csv`` in a run folder lists every image a training run was
given, with its split and content hash, and later stages compare data with it by content.

``split.csv`` is itself a manifest (columns path, label, split, group_id, sha256, origin; absolute
paths), so ``--data <run>/split.csv`` gives back the run's images and splits. ``origin`` is ``data``
for images of ``--data`` and ``synthetic`` for images of classify-train's ``--synthetic``.
"""
from __future__ import annotations

import csv
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from foundation.errors import UserError, cli_command
from foundation.runs import recorded_data

from .data import XrayDataset, csv_rows, discover, warn, write_csv

SPLIT_FILE = "split.csv"
EVALUATED_FILE = "images.csv"  # the images an evaluation report is about, in the same columns
COLUMNS = ("path", "label", "split", "group_id", "sha256", "origin")


def split_rows(ds: XrayDataset, idx: torch.Tensor | None = None, split: str | None = None,
               origin: str = "data") -> list[dict]:
    """One row per image of ``ds`` (or of the positions ``idx``); ``split`` replaces the images' own."""
    positions = range(len(ds)) if idx is None else idx.tolist()
    return [{"path": str((ds.root / ds.paths[i]).resolve()), "label": ds.classes[int(ds.labels[i])],
             "split": split or ds.splits[i], "group_id": ds.groups[i], "sha256": ds.hashes[i], "origin": origin}
            for i in positions]


def write_split(path: str | Path, rows: list[dict]) -> None:
    """Write ``rows`` (see :func:`split_rows`) atomically."""
    write_csv(path, rows, COLUMNS)


def read_split(path: str | Path) -> list[dict] | None:
    """The rows of a split file, or None when there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = csv_rows(f)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot read ({e}); it is written by classify-train and gan-train, "
                        "restore it from the run") from e
    if rows and not set(COLUMNS) <= set(rows[0]):
        raise UserError(f"{path}: needs the columns {', '.join(COLUMNS)}; restore the run's own {path.name}")
    return rows


def match(rows: list[dict], ds: XrayDataset) -> list[int | None]:
    """Position in ``ds`` of each row's image, found by content hash (None: gone or altered)."""
    where = defaultdict(list)
    for i, digest in enumerate(ds.hashes):
        where[digest].append(i)
    return [where[r["sha256"]].pop(0) if where[r["sha256"]] else None for r in rows]


def changes(rows: list[dict], ds: XrayDataset) -> str:
    """What differs between ``rows`` and ``ds`` by content, with counts and a few paths ('' when nothing):
    images gone or altered, images added, images now in another split or class."""
    pos, labels = match(rows, ds), ds.labels.tolist()
    gone = [r["path"] for r, p in zip(rows, pos) if p is None]
    moved = [r["path"] for r, p in zip(rows, pos)
             if p is not None and (ds.splits[p], ds.classes[labels[p]]) != (r["split"], r["label"])]
    found = set(pos)
    added = [str(ds.root / ds.paths[i]) for i in range(len(ds)) if i not in found]
    return ", ".join(f"{len(paths)} {what} (e.g. {', '.join(paths[:3])})" for what, paths in
                     (("gone or altered", gone), ("added", added), ("in another split or class", moved)) if paths)


@dataclass
class EvalSet:
    """The images an evaluation reports on.

    Attributes:
        indices: ``int64 (M,)`` positions in the dataset.
        split: ``test`` or ``val`` (a split of the run or of a manifest), or ``all``.
        folder: the report folder under ``<run>/eval``: '' for the run's own split, else ``<name>-<split>``.
    """
    indices: torch.Tensor
    split: str
    folder: str


def evaluation_set(ds: XrayDataset, data: str | Path, run_dir: str | Path, split_from_data: bool = False,
                   quiet: bool = False) -> EvalSet:
    """The images of ``ds`` a classifier run is evaluated on.

    On the run's own data (the folder it was trained on, or data holding most of its validation
    images), the images of its ``split.csv`` test split (validation split when it has none), found by
    content: images added since are never evaluated, and a test image gone or altered is a one-line
    error unless ``split_from_data`` (then the data's current test split, less the run's training and
    validation images). On other data, all its images (its ``test`` rows when a manifest marks some);
    an image among the run's training or validation images is a one-line error naming it.
    """
    chosen = _choose(ds, data, Path(run_dir), split_from_data, quiet)
    if len(chosen.indices) == 0:
        raise UserError(f"{data}: no readable image to evaluate in its {chosen.split} split; "
                        f"run `{cli_command()} inspect --data {data}`")
    return chosen


def _choose(ds: XrayDataset, data, run_dir: Path, split_from_data: bool, quiet: bool) -> EvalSet:
    rows = read_split(run_dir / SPLIT_FILE)
    if rows is None:
        if not quiet:
            warn(f"{run_dir}: no {SPLIT_FILE} (an older run); evaluating the data's current split")
        split = _held_split(ds.splits)
        return EvalSet(ds.indices(split), split, "")
    seen = {r["sha256"] for r in rows if r["split"] != "test"}
    if not _is_own_data(ds, data, run_dir, rows):
        return _other_data(ds, data, run_dir, seen)
    if split_from_data:
        split = _held_split(ds.splits)
        idx = ds.indices(split).tolist()
        trained = [i for i in idx if ds.hashes[i] in seen]
        warn(f"{data}: evaluating the data's current {split} split, not run {run_dir.name}'s {SPLIT_FILE}"
             + (f"; left out {len(trained)} image(s) the run trained or validated on "
                f"(e.g. {_examples(ds, trained)})" if trained else ""))
        keep = [i for i in idx if ds.hashes[i] not in seen]
        return EvalSet(torch.tensor(keep, dtype=torch.int64), split, f"{report_name(data)}-{split}")
    return _run_split(ds, data, run_dir, rows, quiet)


def _held_split(splits: list[str]) -> str:
    return "test" if "test" in splits else "val"


def _is_own_data(ds: XrayDataset, data, run_dir: Path, rows: list[dict]) -> bool:
    """Whether ``data`` is what the run was trained on: the path recorded in ``run.json``, or (by
    content) data holding at least half of the run's validation images."""
    recorded = recorded_data(run_dir)
    if recorded is not None and recorded == Path(data).resolve():
        return True
    val = {r["sha256"] for r in rows if r["split"] == "val"}
    return 0 < len(val) <= 2 * len(val & set(ds.hashes))


def _run_split(ds: XrayDataset, data, run_dir: Path, rows: list[dict], quiet: bool) -> EvalSet:
    split = _held_split([r["split"] for r in rows])
    held = [r for r in rows if r["split"] == split]
    pos = match(held, ds)
    gone = [r["path"] for r, p in zip(held, pos) if p is None]
    listed = {r["sha256"] for r in rows}
    added = [i for i, digest in enumerate(ds.hashes) if digest not in listed]
    if gone:
        raise UserError(f"{data}: changed since run {run_dir} was trained: {len(gone)} of its {len(held)} {split} "
                        f"images are gone or altered (e.g. {', '.join(gone[:3])})"
                        + (f", {len(added)} image(s) new to it (e.g. {_examples(ds, added)})" if added else "")
                        + f"; pass the data the run was trained on, or --split-from-data to evaluate the data's "
                        f"current {split} split")
    if added and not quiet:
        warn(f"{data}: {len(added)} image(s) new to run {run_dir.name} (added or altered since training, e.g. "
             f"{_examples(ds, added)}) are not evaluated; it is tested on its own {split} split ({SPLIT_FILE})")
    return EvalSet(torch.tensor(pos, dtype=torch.int64), split, "")


def _other_data(ds: XrayDataset, data, run_dir: Path, seen: set[str]) -> EvalSet:
    manifest = Path(data) if Path(data).is_file() else Path(data) / "manifest.csv"
    given = {r.path: r.split for r in discover(manifest, ds.classes)[1]} if manifest.is_file() else {}
    split = "test" if "test" in given.values() else "all"
    idx = [i for i, p in enumerate(ds.paths) if split == "all" or given.get(p) == "test"]
    trained = [i for i in idx if ds.hashes[i] in seen]
    if trained:
        raise UserError(f"{data}: {len(trained)} image(s) are training or validation images of run {run_dir} "
                        f"(e.g. {_examples(ds, trained)}); remove them from this test set")
    return EvalSet(torch.tensor(idx, dtype=torch.int64), split, f"{report_name(data)}-{split}")


def _examples(ds: XrayDataset, idx: list[int], n: int = 3) -> str:
    return ", ".join(str(ds.root / ds.paths[i]) for i in idx[:n])


def report_name(data: str | Path) -> str:
    """A test set's name: its folder's name, or its manifest's (the folder's for ``manifest.csv``)."""
    path = Path(data).resolve()
    if not path.is_file():
        return path.name
    return path.parent.name if path.name == "manifest.csv" else path.stem


def claim_report(out_dir: Path, rows: list[dict], overwrite: bool = False) -> None:
    """Refuse to write a report into ``out_dir`` when it holds one on other images, unless ``overwrite``
    (a report on the same images, e.g. with other settings, is replaced)."""
    if overwrite or not (out_dir / "metrics.json").exists():
        return
    old = read_split(out_dir / EVALUATED_FILE)
    if old is None or Counter(r["sha256"] for r in old) != Counter(r["sha256"] for r in rows):
        raise UserError(f"{out_dir}: holds a report on other images; pass --overwrite to replace it, "
                        "or give this test set a folder or manifest of another name")
