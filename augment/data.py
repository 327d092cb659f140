"""Datasets of chest X-rays: discovery (class folders or a manifest CSV), a decode-once uint8
cache on disk (optionally cropped to the lungs or with the lungs hidden, Maguolo & Nanni 2021), and
patient-grouped train/val/test splits."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import stat
import sys
from collections import Counter, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image

from foundation.errors import UserError, cli_command
from foundation.files import remove_stale_temporaries, write_text_atomic

from .groups import check_pattern, near_duplicate_pairs, pattern_groups, union_find
from .imageio import IMAGE_SUFFIXES, MAX_PIXELS, UnreadableImage, file_kind, read_xray
from .lungmask import MIN_LUNG_FRACTION, LungMasker, crop_and_mask

T, R = TypeVar("T"), TypeVar("R")
SPLITS = ("train", "val", "test")
CACHE_VERSION = 3
LUNG_CROP_DETAIL = 2  # a lung crop is cut from the image decoded at this many times data.size
CACHE_BATCH = 64  # images segmented, cropped and written together


@dataclass
class DataConfig:
    """How images become the cached tensor, and how they are split."""
    size: int = 256
    resize: Literal["crop", "pad"] = "crop"  # shorter side to size + centre crop, or longer side + black pad
    classes: tuple[str, ...] = ("covid", "normal", "pneumonia")
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train, val, test when none is given
    split_seed: int = 0
    cache_dir: str = "runs/cache"
    group_pattern: str = ""  # regex with a group 'patient' searched in paths without patient ids; "" = none
    near_duplicates: bool = True  # images without patient ids that are near-duplicates share a group
    near_duplicate_threshold: int = 6  # most hash bits (of 63) in which near-duplicate candidates differ
    near_duplicate_min_correlation: float = 0.9  # least high-pass thumbnail correlation of a kept candidate
    lung_crop: bool = False  # crop each image to its lungs' square box (from data.lungseg_run's masks)
    lung_crop_margin: float = 0.1  # added to the box on every side, as a share of its side
    lung_mask: Literal["none", "keep-lungs", "hide-lungs"] = "none"  # after cropping: black out all but the lungs, or them
    lungseg_run: str = ""  # lungseg-train run folder or checkpoint whose masks lung_crop and lung_mask use
    max_pixels: int = MAX_PIXELS  # an image of more pixels (from its header) is skipped, not decoded

    @property
    def uses_lungs(self) -> bool:
        """Whether the cached images depend on lung masks."""
        return self.lung_crop or self.lung_mask != "none"

    @property
    def lung_settings(self) -> str:
        """The lung settings in use, as a user writes them (``data.lung_crop=true and data.lung_mask=...``)."""
        return " and ".join(["data.lung_crop=true"] * self.lung_crop
                            + [f"data.lung_mask={self.lung_mask}"] * (self.lung_mask != "none"))

    @property
    def decode_size(self) -> int:
        """The side images are decoded at before :func:`lung_view` makes them ``size``."""
        return self.size * LUNG_CROP_DETAIL if self.lung_crop else self.size

    def check(self):
        if self.size < 8:
            raise ValueError(f"data.size must be at least 8, got {self.size}")
        if self.max_pixels < 1:
            raise ValueError(f"data.max_pixels must be at least 1, got {self.max_pixels}")
        if len(set(self.classes)) != len(self.classes) or not self.classes:
            raise ValueError(f"data.classes must be distinct names, got {list(self.classes)}")
        for c in self.classes:  # class names become folder and file names of outputs
            if not c or c.startswith(".") or "/" in c or "\\" in c:
                raise ValueError(f"data.classes: {c!r} is not a plain folder name "
                                 "(no '/' or '\\', not starting with '.')")
        if any(f < 0 for f in self.split_fractions) or abs(sum(self.split_fractions) - 1) > 1e-6:
            raise ValueError(f"data.split_fractions must be non-negative and sum to 1, got {list(self.split_fractions)}")
        if self.group_pattern:
            check_pattern(self.group_pattern)
        if not 0 <= self.near_duplicate_threshold <= 16:
            raise ValueError(f"data.near_duplicate_threshold must be between 0 and 16 bits, "
                             f"got {self.near_duplicate_threshold}")
        if not -1 <= self.near_duplicate_min_correlation <= 1:
            raise ValueError(f"data.near_duplicate_min_correlation must be between -1 and 1, "
                             f"got {self.near_duplicate_min_correlation}")
        if not 0 <= self.lung_crop_margin <= 1:
            raise ValueError(f"data.lung_crop_margin must be between 0 and 1 (a share of the lung box's side), "
                             f"got {self.lung_crop_margin}")
        if self.uses_lungs and not self.lungseg_run:
            raise ValueError(f"{self.lung_settings} need data.lungseg_run, a lungseg-train run folder or checkpoint "
                             f"(train one with `{cli_command()} lungseg-train`)")


@dataclass
class Record:
    """One image as the inputs describe it (``path`` relative to the dataset root, or absolute)."""
    path: str
    label: str
    group: str
    split: str | None = None
    source: str = ""
    has_id: bool = False  # the manifest named the patient (group_id or patient_id)
    missing_id: bool = False  # the manifest has a patient column but no id in this row (empty, nan, None, null)


@dataclass
class XrayDataset:
    """Decoded images and their metadata.

    Attributes:
        images: ``uint8 (N, 1, S, S)``, memory-mapped from the cache.
        labels: ``int64 (N,)``, indices into ``classes``.
    """
    root: Path
    classes: tuple[str, ...]
    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    groups: list[str]
    splits: list[str]
    sources: list[str]
    fingerprint: str
    hashes: list[str] = field(default_factory=list)  # sha256 of each file's bytes: the image's identity
    grouping: dict[str, int] = field(default_factory=dict)  # images per way their group was formed
    skipped: dict[str, str] = field(default_factory=dict)
    no_lungs: list[str] = field(default_factory=list)  # paths kept uncropped: lungs too small (lung_view)

    def __len__(self) -> int:
        return len(self.paths)

    def indices(self, split: str | None = None, label: str | None = None,
                sources: Sequence[str] = ()) -> torch.Tensor:
        """``int64 (M,)`` positions of the images in ``split`` and/or of class ``label`` and/or from one of
        ``sources`` (empty: any source)."""
        keep = np.ones(len(self), dtype=bool)
        if split is not None:
            keep &= np.asarray(self.splits) == split
        if label is not None:
            keep &= self.labels.numpy() == self.classes.index(label)
        if sources:
            keep &= np.isin(np.asarray(self.sources, dtype=object), list(sources))
        return torch.from_numpy(np.flatnonzero(keep))


# ---------------------------------------------------------------- discovery
def discover(data: str | Path, classes: Sequence[str]) -> tuple[Path, list[Record], dict[str, str]]:
    """Records of a class-folder tree or a manifest CSV (``data/manifest.csv`` is used when present).

    Returns ``(root, records, skipped)``; ``skipped`` maps a path to why it was left out.
    """
    data = Path(data)
    if data.is_file():
        return data.parent, *_read_manifest(data, classes)
    if (data / "manifest.csv").is_file():
        listed: set[str] = set()
        records, skipped = _read_manifest(data / "manifest.csv", classes, listed)
        for rel in _image_files(data):  # images beside the manifest that it does not list are counted, not ignored
            if os.path.normpath(os.path.join(os.path.abspath(data), rel)) not in listed:
                skipped[rel] = "not listed in manifest.csv (a folder holding manifest.csv is read through it)"
        return data, records, skipped
    if not data.is_dir():
        raise UserError(f"{data}: no such folder or manifest; give --data a folder of class subfolders "
                        f"({', '.join(classes)}) or a manifest CSV")
    records, skipped = [], {}
    for sub in sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name not in classes:
            warn(f"{sub}: folder is not one of the classes ({', '.join(classes)}); its images are ignored")
            continue
        for dirpath, dirnames, filenames in os.walk(sub):  # symlinked folders are not followed: no loops
            dirnames.sort()
            for name in sorted(filenames):
                rel = os.path.relpath(os.path.join(dirpath, name), data)
                kind = _not_regular(os.path.join(dirpath, name))
                if kind:  # a FIFO would hang the reader: never opened
                    skipped[rel] = f"not a regular file ({kind}); only image files are read"
                elif Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    records.append(Record(rel, sub.name, group=rel))
                elif not name.startswith("."):
                    skipped[rel] = "not an image suffix (" + ", ".join(sorted(IMAGE_SUFFIXES)) + ")"
    return data, records, skipped


def _not_regular(path: str) -> str:
    """'' for a regular file (or a link to one), else what it is (:func:`augment.imageio.file_kind`)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return ""  # gone or unreadable: the reader says why
    return "" if stat.S_ISREG(mode) else file_kind(mode)


def _image_files(root: Path) -> Iterator[str]:
    """Paths relative to ``root`` of the files with an image suffix under it (hidden files and folders left out)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield os.path.relpath(os.path.join(dirpath, name), root)


MISSING_IDS = ("", "nan", "none", "null")  # what spreadsheets and pandas write for an empty cell


def patient_id(row: dict) -> str:
    """The patient of a manifest row: its ``group_id``, else its ``patient_id``; "" when neither holds one
    (empty, ``nan``, ``NaN``, ``None`` or ``null`` are no id: such rows would otherwise share one patient)."""
    for column in ("group_id", "patient_id"):
        value = (row.get(column) or "").strip()
        if value.lower() not in MISSING_IDS:
            return value
    return ""


def _read_manifest(path: Path, classes: Sequence[str],
                   listed: set[str] | None = None) -> tuple[list[Record], dict[str, str]]:
    """Records and skipped rows of a manifest; a file listed twice under two spellings (``./a.png`` and
    ``a.png``) is one image, its second row a skip. ``listed`` gets the normalised absolute path of every
    cell that names a file under the manifest's folder (images and masks alike)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = csv_rows(f)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot read manifest ({e}); it must be a UTF-8 CSV with columns path,label") from e
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise UserError(f"{path}: a manifest needs a header with columns path,label "
                        "(optional: group_id or patient_id, split, source)")
    records, skipped, seen, records_by_file = [], {}, {}, {}
    root = os.path.abspath(path.parent)
    has_ids = bool({"group_id", "patient_id"} & set(rows[0]))
    for i, row in enumerate(rows, start=2):
        p, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        split = (row.get("split") or "").strip() or None
        if listed is not None:
            listed.update(os.path.normpath(os.path.join(root, v.strip())) for v in row.values()
                          if isinstance(v, str) and v.strip())
        file = os.path.realpath(os.path.join(root, p)) if p else ""  # one file, however its path is spelled
        if not p:
            skipped[f"{path.name}:line {i}"] = "empty path"
        elif file in seen:
            skipped[f"{p} (line {i})"] = (f"repeated in the manifest (line {seen[file]}"
                                          + (f", as {records_by_file[file]}" if records_by_file[file] != p else "")
                                          + "); the first row is kept")
        elif label not in classes:
            skipped[p] = f"unknown label {label!r}; valid labels: {', '.join(classes)}"
        elif split is not None and split not in SPLITS:
            skipped[p] = f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}"
        else:
            seen[file] = i
            records_by_file[file] = p
            group = patient_id(row)
            records.append(Record(p, label, group or p, split, (row.get("source") or "").strip(), bool(group),
                                  missing_id=has_ids and not group))
    return records, skipped


FORMULA_START = re.compile(r"'*[=+\-@\t\r]")  # cells a spreadsheet would run as a formula (OWASP), behind any quotes


def _would_run(value: str) -> bool:
    """Whether a spreadsheet could take the cell ``value`` for a formula: it starts with ``=``, ``+``, ``-``, ``@``,
    a tab or a carriage return (after any single quotes) and is not a plain number."""
    if not FORMULA_START.match(value):
        return False
    try:
        float(value)
        return False
    except ValueError:
        return True


def neutralise_cell(value: str) -> str:
    """``value`` as :func:`write_csv` writes it: prefixed with a single quote when a spreadsheet could run it
    (``=HYPERLINK(...)``, ``+cmd``, ``@SUM(...)``, ``-x.png``); :func:`restore_cell` gives it back exactly."""
    return "'" + value if _would_run(value) else value


def restore_cell(value):
    """The cell as it was before :func:`neutralise_cell` (other values unchanged)."""
    return value[1:] if isinstance(value, str) and value.startswith("'") and _would_run(value[1:]) else value


def csv_rows(f) -> list[dict]:
    """The rows of an open CSV file as dicts (:class:`csv.DictReader`), cells neutralised by :func:`write_csv`
    restored: the toolkit's readers see what was written."""
    return [{k: restore_cell(v) for k, v in row.items()} for row in csv.DictReader(f)]


def write_csv(path: str | Path, rows: list[dict], columns: Sequence[str]) -> None:
    """Write ``rows`` as a UTF-8 CSV through a temporary file and a rename. A failure is a one-line
    :class:`UserError` naming the file, and leaves neither a partial nor a temporary file. Text cells a
    spreadsheet would run as a formula are neutralised (:func:`neutralise_cell`; :func:`csv_rows` reads them
    back unchanged)."""
    path = Path(path)
    for value in (v for row in rows for v in row.values() if isinstance(v, str)):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(f"{os.fsencode(value)!r}: file name is not UTF-8 and cannot be listed in {path}; "
                            "rename the file") from None
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(columns), restval="")
    writer.writeheader()
    writer.writerows({k: neutralise_cell(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows)
    write_text_atomic(path, text.getvalue())


# ---------------------------------------------------------------- decoding and cache
def square_box(h: int, w: int, size: int, resize: str) -> tuple[int, int, int, int, int, int]:
    """How an ``(h, w)`` picture becomes ``(size, size)``: resized to ``(nh, nw)`` (shorter side to ``size``
    for ``crop``, longer side for ``pad``), cropped at ``(top, left)``, placed at ``(oy, ox)`` on black."""
    scale = size / (min(h, w) if resize == "crop" else max(h, w))
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = max(0, (nh - size) // 2), max(0, (nw - size) // 2)
    oy, ox = max(0, (size - nh) // 2), max(0, (size - nw) // 2)
    return nh, nw, top, left, oy, ox


def to_square(x: np.ndarray, size: int, resize: str) -> np.ndarray:
    """``uint8 (H, W)`` → ``uint8 (size, size)``, bilinear, as :func:`square_box` says (threshold a 0/255
    mask at 128 afterwards)."""
    nh, nw, top, left, oy, ox = square_box(*x.shape, size, resize)
    x = np.asarray(Image.fromarray(x).resize((nw, nh), Image.Resampling.BILINEAR))[top:top + size, left:left + size]
    out = np.zeros((size, size), np.uint8)
    out[oy:oy + x.shape[0], ox:ox + x.shape[1]] = x
    return out


def decode_to_square(path: Path, size: int, resize: str = "crop", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """``uint8 (size, size)`` of an image file: shorter side to ``size`` and centre crop, or longer side and
    pad (:func:`to_square`); an image of more than ``max_pixels`` is not decoded (:func:`read_xray`)."""
    return to_square(read_xray(path, max_side=size, max_pixels=max_pixels), size, resize)


def batches_ahead(items: Sequence[T], work: Callable[[T], R], batch_size: int, workers: int,
                  ahead: int = 2) -> Iterator[list[R]]:
    """``work`` of each item, in order, in batches of ``batch_size``: a pool of ``workers`` threads works up to
    ``ahead`` batches beyond the one handed out (Pillow, numpy and hashlib release the GIL), so the caller's
    model runs meanwhile and at most ``ahead + 1`` batches are held."""
    starts = iter(range(0, len(items), batch_size))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()

        def submit() -> None:
            start = next(starts, None)
            if start is not None:
                pending.append([pool.submit(work, item) for item in items[start:start + batch_size]])

        for _ in range(ahead + 1):
            submit()
        while pending:
            batch = pending.popleft()
            submit()
            yield [f.result() for f in batch]


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def require_lung_masker(cfg: DataConfig, lung_masker: LungMasker | None) -> None:
    """A one-line :class:`UserError` when ``cfg`` asks for lung masks and no masker gives them."""
    if cfg.uses_lungs and lung_masker is None:
        raise UserError(f"{cfg.lung_settings} need the lung masks of data.lungseg_run ({cfg.lungseg_run}), and this "
                        "command applies none: classify-train, evaluate, predict, cam, compare and ablation do "
                        "(in Python: lung_masker=lungs.masker_for(cfg.data)); drop the lung settings here")


def lung_view(images: torch.Tensor, cfg: DataConfig,
              lung_masker: LungMasker | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as the cache holds them: ``uint8 (N, 1, D, D)`` decoded at ``cfg.decode_size`` become ``uint8
    (N, 1, S, S)``, cropped to the lungs and masked as ``cfg`` says (:func:`augment.lungmask.crop_and_mask`,
    on ``lung_masker``'s masks); also ``bool (N,)``, true where the lungs found were too small to crop to.
    Without lung settings, the images unchanged. The cache and ``predict`` both go through here."""
    if not cfg.uses_lungs:
        return images, torch.zeros(len(images), dtype=torch.bool)
    require_lung_masker(cfg, lung_masker)
    masks = lung_masker(images).cpu()
    return crop_and_mask(images, masks, cfg.size, cfg.lung_crop, cfg.lung_crop_margin, cfg.lung_mask)


def warn_lungs_not_found(paths: Sequence[str], total: int, cfg: DataConfig) -> None:
    """One warning counting the images whose lungs :func:`lung_view` did not find (none of them is silent)."""
    if paths:
        shown = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
        warn(f"{len(paths)} of {total} images have lungs over less than {MIN_LUNG_FRACTION:.0%} of them in the "
             f"masks of {cfg.lungseg_run}, so they were " + ("kept uncropped" if cfg.lung_crop else "masked as found")
             + f" ({shown}); look at the masks with `{cli_command()} lungseg --checkpoint {cfg.lungseg_run} IMAGES`")


def _settings_key(cfg: DataConfig, lung_masker: LungMasker | None = None) -> str:
    """What, besides the files, decides the decoded images: cache layout, size, resize, pixel limit, lungs."""
    key = f"v{CACHE_VERSION}|{cfg.size}|{cfg.resize}"
    if cfg.max_pixels != MAX_PIXELS:  # another limit reads other images (the default keeps earlier caches)
        key += f"|max_pixels{cfg.max_pixels}"
    if cfg.uses_lungs:  # another segmenter (its identity) or setting gives other images
        key += (f"|lungs|{cfg.lung_crop}|{cfg.lung_crop_margin}|{cfg.lung_mask}|{lung_masker.identity}"
                f"|{LUNG_CROP_DETAIL}|{MIN_LUNG_FRACTION}")
    return key


def _cache_key(root: Path, records: list[Record], cfg: DataConfig, lung_masker: LungMasker | None = None) -> str:
    """The cache's name: the settings and each file's path, size and time (cheap to check; a copy decodes anew)."""
    h = hashlib.sha256(_settings_key(cfg, lung_masker).encode())
    for r in records:
        p = root / r.path
        try:
            st = p.stat()
            h.update(os.fsencode(f"|{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"))
        except OSError:
            h.update(os.fsencode(f"|{p}|missing"))
    return h.hexdigest()[:24]


def _build_cache(root: Path, records: list[Record], cfg: DataConfig, npy: Path, meta: Path, quiet: bool,
                 lung_masker: LungMasker | None) -> None:
    from tqdm import tqdm
    size = cfg.size

    def work(r: Record):
        try:
            return (decode_to_square(root / r.path, cfg.decode_size, cfg.resize, cfg.max_pixels),
                    file_sha256(root / r.path))
        except (UnreadableImage, OSError) as e:
            return None, str(e)

    pid = os.getpid()  # one set of temporary files per process: ranks may build the same cache at once
    tmp, part, tmp_meta = f"{npy}.tmp{pid}.npy", f"{npy}.part{pid}.npy", meta.with_name(f"{meta.name}.tmp{pid}")
    ok, hashes, skipped = [], [], {}  # positions in ``records``: the key fixes the files, not how paths are spelled
    no_lungs = []  # positions of images whose lungs were too small to crop to
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(records), size, size))
        batches = batches_ahead(records, work, CACHE_BATCH, min(8, os.cpu_count() or 1))
        with tqdm(total=len(records), desc="decoding images", unit="img", disable=quiet, file=sys.stderr) as bar:
            for start, batch in zip(range(0, len(records), CACHE_BATCH), batches):
                read = [start + k for k, (img, _) in enumerate(batch) if img is not None]
                skipped.update({start + k: reason for k, (img, reason) in enumerate(batch) if img is None})
                if read:
                    images = torch.from_numpy(np.stack([batch[i - start][0] for i in read])).unsqueeze(1)
                    images, faint = lung_view(images, cfg, lung_masker)
                    out[len(ok):len(ok) + len(read)] = images[:, 0].numpy()
                    no_lungs += [i for i, f in zip(read, faint.tolist()) if f]
                    ok += read
                    hashes += [batch[i - start][1] for i in read]
                bar.update(len(batch))
        out.flush()
        del out
        if len(ok) < len(records):  # keep only the readable images
            np.save(part, np.load(tmp, mmap_mode="r")[: len(ok)])
            os.replace(part, tmp)
        tmp_meta.write_text(json.dumps({"kept": ok, "hashes": hashes, "skipped": skipped, "no_lungs": no_lungs}))
        os.replace(tmp, npy)
        os.replace(tmp_meta, meta)
    finally:
        for leftover in (tmp, part, tmp_meta):
            Path(leftover).unlink(missing_ok=True)


def load_dataset(data: str | Path, cfg: DataConfig, split: str | None = None,
                 required: Sequence[str] | None = None, quiet: bool = False,
                 lung_masker: LungMasker | None = None) -> XrayDataset:
    """Discover, decode once (or reuse the cache) and split the images under ``data``.

    Args:
        data: folder of class subfolders, a folder holding ``manifest.csv``, or a manifest CSV.
        cfg: sizes, classes, split fractions, cache folder and lung settings.
        split: force every image into this split (synthetic folders belong to ``train``).
        required: classes that must have at least one readable image (default: all).
        lung_masker: the lung masks that ``cfg.lung_crop`` and ``cfg.lung_mask`` need (the segmenter of
            ``cfg.lungseg_run``, e.g. ``lungs.masker_for(cfg)``); its ``identity`` is part of the cache key.
    """
    require_lung_masker(cfg, lung_masker)
    root, records, skipped = discover(data, cfg.classes)
    key = _cache_key(root, records, cfg, lung_masker)
    cache = Path(cfg.cache_dir)
    npy, meta = cache / f"{key}.npy", cache / f"{key}.json"
    if not (npy.exists() and meta.exists()):
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{cache}: cannot create the image cache ({e.strerror}); set data.cache_dir") from e
        remove_stale_temporaries(cache)  # of builds that were killed
        if not quiet:
            print(f"decoding {len(records)} images from {data} into the cache {npy}"
                  + (f" ({cfg.lung_settings}, masks of {cfg.lungseg_run})" if cfg.uses_lungs else ""), file=sys.stderr)
        _build_cache(root, records, cfg, npy, meta, quiet, lung_masker)
    info = json.loads(meta.read_text())
    skipped.update({records[int(i)].path: reason for i, reason in info["skipped"].items()})
    no_lungs = [records[i].path for i in info.get("no_lungs", [])]
    if not quiet:
        warn_lungs_not_found(no_lungs, len(info["kept"]), cfg)
    records = [records[i] for i in info["kept"]]
    _report_skipped(skipped, data, quiet)
    missing_ids = sum(r.missing_id for r in records)
    if missing_ids and not quiet:
        warn(f"{missing_ids} of {len(records)} manifest rows have no patient id (group_id/patient_id empty, nan, "
             "None or null); each of those images is its own group (unless data.group_pattern or near-duplicates "
             "join it)")

    counts = Counter(r.label for r in records)
    for c in required if required is not None else cfg.classes:
        if counts[c] == 0:
            raise UserError(f"{data}: no readable image of class '{c}'; add images under {data}/{c}/ "
                            f"or rows labelled {c} to the manifest (run `{cli_command()} inspect --data {data}`)")
    images = torch.from_numpy(np.load(npy, mmap_mode="c")).unsqueeze(1)
    grouping = group_records(records, images, cfg, quiet) | ({"missing_ids": missing_ids} if missing_ids else {})
    if split is not None:
        splits = [split] * len(records)
    else:  # a manifest's splits are kept (a patient's other rows follow them); the rest are split here
        given = {r.group: r.split for r in records if r.split}
        splits = [r.split or given.get(r.group) for r in records]
        rest = [i for i, s in enumerate(splits) if s is None]
        auto = grouped_split([records[i].group for i in rest], [records[i].label for i in rest],
                             cfg.split_fractions, cfg.split_seed)
        for i, s in zip(rest, auto):
            splits[i] = s
    labels = torch.tensor([cfg.classes.index(r.label) for r in records], dtype=torch.int64)
    # by content, not by path or file time, so a copied or re-mounted data set still resumes its runs
    fingerprint = hashlib.sha256((_settings_key(cfg, lung_masker) + json.dumps(
        [[h, r.label, s] for h, r, s in zip(info["hashes"], records, splits)])).encode())
    return XrayDataset(root, tuple(cfg.classes), images, labels, [r.path for r in records],
                       [r.group for r in records], splits, [r.source for r in records],
                       fingerprint.hexdigest()[:16], info["hashes"], grouping, skipped, no_lungs)


def group_records(records: list[Record], images: torch.Tensor, cfg: DataConfig, quiet: bool = False) -> dict[str, int]:
    """Set ``Record.group`` of images without a patient id: ``cfg.group_pattern``'s patient, joined
    (union-find) with their near-duplicates among ``images`` ``uint8 (N, 1, S, S)``.

    Returns the images per way their group was formed (``manifest_ids``, ``pattern``,
    ``near_duplicates``, ``one_per_image``), plus ``pattern_unmatched`` and ``near_duplicate_pairs``.
    """
    free = np.array([not r.has_id for r in records], dtype=bool)
    patients = pattern_groups([r.path for r in records], cfg.group_pattern) if cfg.group_pattern else [None] * len(records)
    by_pattern = free & np.array([p is not None for p in patients], dtype=bool)
    unmatched = int(free.sum() - by_pattern.sum()) if cfg.group_pattern else 0
    if unmatched and not quiet:
        warn(f"data.group_pattern matched no patient in {unmatched} of {int(free.sum())} paths; "
             "each of those is its own group (unless near-duplicates join it)")
    pairs = (near_duplicate_pairs(images, cfg.near_duplicate_threshold, cfg.near_duplicate_min_correlation)
             if cfg.near_duplicates else np.zeros((0, 2), int))
    pairs = pairs[free[pairs[:, 0]] & free[pairs[:, 1]]]  # a manifest's patient ids are never merged
    first = {}  # images of one pattern patient are chained to its first image
    links = [(first.setdefault(patients[i], i), i) for i in np.flatnonzero(by_pattern)]
    root = union_find(len(records), np.concatenate([np.array(links, dtype=np.int64).reshape(-1, 2), pairs]))
    name = {}  # a group is named by its first patient from the pattern, else by its first image's path
    for i in np.flatnonzero(by_pattern):
        name.setdefault(root[i], patients[i])
    for i in np.flatnonzero(free):
        records[i].group = name.get(root[i], records[root[i]].path)
    in_pair = np.zeros(len(records), dtype=bool)
    in_pair[pairs.ravel()] = True
    return {"manifest_ids": int((~free).sum()), "pattern": int(by_pattern.sum()),
            "near_duplicates": int((free & ~by_pattern & in_pair).sum()),
            "one_per_image": int((free & ~by_pattern & ~in_pair).sum()),
            "pattern_unmatched": unmatched, "near_duplicate_pairs": len(pairs)}


def _report_skipped(skipped: dict[str, str], data, quiet: bool, show: int = 10) -> None:
    if quiet or not skipped:
        return
    for path, reason in list(skipped.items())[:show]:
        warn(f"skipped {path}: {reason}")
    if len(skipped) > show:
        warn(f"... and {len(skipped) - show} more (`{cli_command()} inspect --data {data}` lists them all)")
    by_reason = Counter(reason.split(" (")[0].split(";")[0] for reason in skipped.values())
    warn(f"skipped {len(skipped)} file(s): " + ", ".join(f"{n} {r}" for r, n in by_reason.most_common()))


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# ---------------------------------------------------------------- splitting
def grouped_split(groups: Sequence[str], labels: Sequence[str], fractions: Sequence[float],
                  seed: int) -> list[str]:
    """Stratified train/val/test assignment in which no group is in two splits.

    Each group takes its most common label; per label, groups are shuffled (seeded) and each goes to
    the split furthest below its share of that label's images (ties: train, val, test), so a split
    with a non-zero share gets a group whenever there are enough groups, even when groups are large.
    """
    members = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    by_label = defaultdict(list)
    for g, idx in sorted(members.items()):
        by_label[Counter(labels[i] for i in idx).most_common(1)[0][0]].append(g)
    rng = np.random.default_rng(seed)
    out = [""] * len(groups)
    for label in sorted(by_label):
        gs = by_label[label]
        rng.shuffle(gs)
        target = np.asarray(fractions, dtype=float) * sum(len(members[g]) for g in gs)
        filled = np.zeros(len(SPLITS))
        for g in gs:
            k = int(np.argmax(np.where(target > 0, target - filled, -np.inf)))  # a zero share stays empty
            for i in members[g]:
                out[i] = SPLITS[k]
            filled[k] += len(members[g])
    return out
