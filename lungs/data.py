"""Image/mask pairs for lung segmentation: discovery, checks, a decode-once uint8 cache, grouped splits.

``--data`` is a manifest CSV, a folder holding ``manifest.csv``, or a folder with ``images/`` and
``masks/`` whose files share their path less the suffix (``images/a/b.jpg`` ↔ ``masks/a/b.png``).
A manifest has columns ``image`` (or ``path``, as in classifier manifests) and ``mask``, optionally
``split``, ``group_id`` or ``patient_id``, and ``source``; paths are relative to its folder.

Masks must be exactly their image's size and binary: a lossless mask holds 0 and one other value
(0/255 or 0/1; any nonzero value is lung). A JPEG mask is lossy, so its gray values near 0 and near
255 (within 32) count as background and lung, and at most 1 % of its pixels may lie in between.
Anything else is a one-line error naming the files. A file that cannot be decoded is skipped with a
warning and counted.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from augment.data import SPLITS, csv_rows, file_sha256, grouped_split, patient_id, square_box, to_square, warn
from augment.imageio import IMAGE_SUFFIXES, UnreadableImage, read_xray
from foundation.errors import UserError, cli_command
from foundation.files import remove_stale_temporaries

from .config import LungDataConfig

CACHE_VERSION = 1
JPEG_SLACK, JPEG_BETWEEN = 32, 0.01  # JPEG masks: gray levels counted as 0 or 255, share allowed between


@dataclass
class Pair:
    """One image and its mask as the inputs name them (relative to the data root, or absolute)."""
    image: str
    mask: str
    group: str
    split: str | None = None
    source: str = ""


@dataclass
class LungData:
    """Decoded pairs and their metadata.

    Attributes:
        images: ``uint8 (N, 1, S, S)``.
        masks: ``bool (N, 1, S, S)``, True on lung.
    """
    root: Path
    images: torch.Tensor
    masks: torch.Tensor
    pairs: list[Pair]
    splits: list[str]
    hashes: list[str]  # sha256 of each image file
    fingerprint: str
    skipped: dict[str, str]

    def indices(self, split: str) -> torch.Tensor:
        """``int64 (M,)`` positions of the pairs in ``split``."""
        return torch.tensor([i for i, s in enumerate(self.splits) if s == split], dtype=torch.int64)


# ---------------------------------------------------------------- geometry
def from_square(x: np.ndarray, shape: tuple[int, int], resize: str) -> np.ndarray:
    """``float (S, S)`` made by :func:`to_square` → ``float32 (H, W)`` over the original picture
    (bilinear); with ``crop``, what was cropped off is 0."""
    size = x.shape[0]
    nh, nw, top, left, oy, ox = square_box(*shape, size, resize)
    ch, cw = min(nh, size), min(nw, size)
    canvas = np.zeros((nh, nw), np.float32)
    canvas[top:top + ch, left:left + cw] = x[oy:oy + ch, ox:ox + cw]
    return np.asarray(Image.fromarray(canvas).resize(shape[::-1], Image.Resampling.BILINEAR))


# ---------------------------------------------------------------- reading one pair
def read_mask(path: Path) -> np.ndarray:
    """``bool (H, W)`` lung mask of a file; a mask that is not binary is a one-line :class:`UserError`."""
    gray = read_xray(path)
    values = np.unique(gray)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        between = ((gray > JPEG_SLACK) & (gray < 255 - JPEG_SLACK)).mean()
        if between <= JPEG_BETWEEN:
            return gray >= 128
        raise UserError(f"{path}: not a binary mask ({between:.1%} of its pixels are gray, not near 0 or 255); "
                        "save masks as 0/255 PNGs")
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        raise UserError(f"{path}: not a binary mask ({len(values)} gray values, e.g. "
                        f"{', '.join(map(str, values[:4]))}); save it with 0 for background and 255 (or 1) for lung")
    return gray > 0


def decode_pair(image: Path, mask: Path, size: int, resize: str) -> tuple[np.ndarray, np.ndarray]:
    """``uint8 (size, size)`` image and ``bool (size, size)`` mask, through the same geometry."""
    img, lungs = read_xray(image), read_mask(mask)
    if img.shape != lungs.shape:
        raise UserError(f"{mask}: mask is {lungs.shape[1]}×{lungs.shape[0]} px but its image {image} is "
                        f"{img.shape[1]}×{img.shape[0]} px; a mask must be exactly its image's size")
    return to_square(img, size, resize), to_square(lungs.astype(np.uint8) * 255, size, resize) >= 128


# ---------------------------------------------------------------- discovery
def discover_pairs(data: str | Path) -> tuple[Path, list[Pair]]:
    """``(root, pairs)`` of a manifest, a folder holding ``manifest.csv``, or ``images/`` + ``masks/``."""
    data = Path(data)
    if data.is_file():
        return data.parent, _read_manifest(data)
    if (data / "manifest.csv").is_file():
        return data, _read_manifest(data / "manifest.csv")
    if (data / "images").is_dir() and (data / "masks").is_dir():
        return data, _pair_folders(data)
    raise UserError(f"{data}: no manifest.csv and no images/ + masks/ folders; give --data a manifest with columns "
                    "image,mask or a folder of images/ and masks/ whose files share a name")


def _read_manifest(path: Path) -> list[Pair]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = csv_rows(f)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot read manifest ({e}); it must be a UTF-8 CSV with columns image,mask") from e
    header = set(rows[0]) if rows else set()
    column = "image" if "image" in header else "path"
    if not {column, "mask"} <= header:
        raise UserError(f"{path}: a lung manifest needs the columns image (or path) and mask (optional: split, "
                        f"group_id or patient_id, source); phantoms with masks: {cli_command()} phantoms --masks")
    pairs, missing = [], 0
    for line, row in enumerate(rows, start=2):
        image, mask = (row.get(column) or "").strip(), (row.get("mask") or "").strip()
        split = (row.get("split") or "").strip() or None
        for named, partner in ((image, mask), (mask, image)):
            if not named or not (path.parent / named).is_file():
                raise UserError(f"{path}, line {line}: {named or 'an empty path'} (partner of {partner or 'nothing'}) "
                                "does not exist; fix the row or add the file")
        if split is not None and split not in SPLITS:
            raise UserError(f"{path}, line {line}: unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        group = patient_id(row)
        missing += not group
        pairs.append(Pair(image, mask, group or image, split, (row.get("source") or "").strip()))
    if not pairs:
        raise UserError(f"{path}: the manifest lists no image")
    if missing and {"group_id", "patient_id"} & header:
        warn(f"{path}: {missing} of {len(pairs)} rows have no patient id (group_id/patient_id empty, nan, None or "
             "null); each of those images is its own group")
    return pairs


def _pair_folders(root: Path) -> list[Pair]:
    """Pairs of ``images/`` and ``masks/`` by path less suffix; a file without a partner is an error."""
    found = {}
    for sub in ("images", "masks"):
        found[sub] = {}
        for p in sorted((root / sub).rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                key = p.relative_to(root / sub).with_suffix("").as_posix()
                if key in found[sub]:
                    raise UserError(f"{p}: {found[sub][key]} has the same name; keep one file per name in {sub}/")
                found[sub][key] = p.relative_to(root).as_posix()
    for sub, other in (("images", "masks"), ("masks", "images")):
        lonely = sorted(set(found[sub]) - set(found[other]))
        if lonely:
            raise UserError(f"{root / found[sub][lonely[0]]}: no partner in {root / other}/ with the name {lonely[0]} "
                            f"({len(lonely)} file(s) without one); add it or remove the file")
    return [Pair(found["images"][k], found["masks"][k], group=found["images"][k]) for k in sorted(found["images"])]


# ---------------------------------------------------------------- cache and splits
def load_pairs(data: str | Path, cfg: LungDataConfig, quiet: bool = False) -> LungData:
    """Discover, decode once (or reuse the cache in ``cfg.cache_dir``), check and split the pairs."""
    root, pairs = discover_pairs(data)
    key = _cache_key(root, pairs, cfg)
    cache = Path(cfg.cache_dir) / f"lungs-{key}.npz"
    if not cache.is_file():
        if not quiet:
            print(f"decoding {len(pairs)} image/mask pairs from {data} into the cache {cache}", file=sys.stderr)
        _build_cache(root, pairs, cfg, cache, quiet)
    with np.load(cache) as z:
        images, masks, kept = z["images"], z["masks"], z["kept"].tolist()
        hashes, skipped = z["hashes"].tolist(), json.loads(str(z["skipped"]))
    if skipped and not quiet:
        for path, reason in list(skipped.items())[:10]:
            warn(f"skipped {path}: {reason}")
        warn(f"skipped {len(skipped)} of {len(pairs)} pair(s) whose image or mask could not be read")
    pairs = [pairs[i] for i in kept]
    if not pairs:
        raise UserError(f"{data}: no readable image/mask pair")
    given = {p.group: p.split for p in pairs if p.split}  # a patient's other rows follow a given split
    splits = [p.split or given.get(p.group) for p in pairs]
    rest = [i for i, s in enumerate(splits) if s is None]
    auto = grouped_split([pairs[i].group for i in rest], [pairs[i].source for i in rest], cfg.split_fractions,
                         cfg.split_seed)
    for i, s in zip(rest, auto):
        splits[i] = s
    # by content (image files, decoded masks, splits), not by path or file time, so a copied data set still resumes
    fingerprint = hashlib.sha256(_settings_key(cfg).encode() + json.dumps(list(zip(hashes, splits))).encode()
                                 + masks.tobytes()).hexdigest()[:16]
    return LungData(root, torch.from_numpy(images).unsqueeze(1), torch.from_numpy(masks).unsqueeze(1), pairs,
                    splits, hashes, fingerprint, skipped)


def _settings_key(cfg: LungDataConfig) -> str:
    return f"lungs v{CACHE_VERSION}|{cfg.size}|{cfg.resize}"


def _cache_key(root: Path, pairs: list[Pair], cfg: LungDataConfig) -> str:
    """The cache's name: the settings and each file's path, size and time (cheap to check; a copy decodes anew)."""
    h = hashlib.sha256(_settings_key(cfg).encode())
    for p in (root / name for pair in pairs for name in (pair.image, pair.mask)):
        st = p.stat()
        h.update(os.fsencode(f"|{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"))
    return h.hexdigest()[:24]


def _build_cache(root: Path, pairs: list[Pair], cfg: LungDataConfig, cache: Path, quiet: bool) -> None:
    from tqdm import tqdm

    def work(pair: Pair):
        try:
            return *decode_pair(root / pair.image, root / pair.mask, cfg.size, cfg.resize), file_sha256(root / pair.image)
        except (UnreadableImage, OSError) as e:
            return None, None, str(e)

    images, masks, kept, hashes, skipped = [], [], [], [], {}
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = tqdm(pool.map(work, pairs), total=len(pairs), desc="decoding pairs", disable=quiet, file=sys.stderr)
        for i, (img, mask, digest) in enumerate(results):
            if img is None:
                skipped[f"{pairs[i].image} / {pairs[i].mask}"] = digest  # the reason
            else:
                images.append(img)
                masks.append(mask)
                kept.append(i)
                hashes.append(digest)
    cache.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(cache.parent)  # of builds that were killed
    tmp = cache.with_name(f".{cache.stem}.tmp{os.getpid()}.npz")
    try:
        empty = np.zeros((0, cfg.size, cfg.size), np.uint8)
        np.savez(tmp, images=np.stack(images) if images else empty, masks=np.stack(masks) if masks else empty.astype(bool),
                 kept=np.array(kept, np.int64), hashes=np.array(hashes, dtype=str), skipped=json.dumps(skipped))
        os.replace(tmp, cache)
    finally:
        tmp.unlink(missing_ok=True)
