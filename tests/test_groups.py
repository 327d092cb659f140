"""Patient groups of folder data: a file-name pattern, near-duplicate images, and what inspect says."""
from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from augment.data import DataConfig, load_dataset
from augment.data_summary import InspectConfig, format_report, inspect_data
from augment.groups import hash_pairs, near_duplicate_groups, near_duplicate_pairs, perceptual_hashes
from augment.phantoms import _anatomy, make_phantom, place, write_patient_films
from foundation.config import load_config
from foundation.errors import UserError

PATTERN = r"(?P<patient>[^_/]+)_\d+\.\w+$"


@pytest.fixture
def films_dir(tmp_path) -> Path:
    """Class folders without a manifest: 8 patients per class, 1 to 3 films each, ``<patient>_<n>.png``."""
    return write_patient_films(tmp_path / "films", 8, films=3, size=64, seed=0)


def patient_of(path: str) -> str:
    return re.search(PATTERN, path).group("patient")


def splits_per_patient(ds) -> dict[str, set]:
    out = defaultdict(set)
    for p, s in zip(ds.paths, ds.splits):
        out[patient_of(p)].add(s)
    return out


def test_pattern_groups_patients_and_no_patient_is_in_two_splits(films_dir, cfg):
    cfg.group_pattern, cfg.near_duplicates = PATTERN, False
    ds = load_dataset(films_dir, cfg, quiet=True)
    assert ds.groups == [patient_of(p) for p in ds.paths]
    assert all(len(s) == 1 for s in splits_per_patient(ds).values())
    assert ds.grouping["pattern"] == len(ds) and ds.grouping["one_per_image"] == 0


def test_near_duplicates_group_films_without_a_pattern(films_dir, cfg):
    ds = load_dataset(films_dir, cfg, quiet=True)
    assert all(len(s) == 1 for s in splits_per_patient(ds).values())
    assert ds.grouping["near_duplicates"] > 0
    assert len(set(ds.groups)) >= 12  # 24 patients: some groups may merge, never all of them


def test_without_grouping_a_patient_lands_in_two_splits(films_dir, cfg):
    """The failure the grouping prevents, so the two tests above can fail."""
    cfg.near_duplicates = False
    ds = load_dataset(films_dir, cfg, quiet=True)
    assert any(len(s) > 1 for s in splits_per_patient(ds).values())
    assert ds.grouping["one_per_image"] == len(ds)


def test_unmatched_paths_are_counted_in_a_warning(films_dir, cfg, capsys):
    Image.open(films_dir / "covid" / "covid000_0.png").save(films_dir / "covid" / "scan.png")
    cfg.group_pattern, cfg.near_duplicates = PATTERN, False
    ds = load_dataset(films_dir, cfg)
    assert f"matched no patient in 1 of {len(ds)} paths" in capsys.readouterr().err
    assert ds.grouping["pattern_unmatched"] == 1 and ds.groups[ds.paths.index("covid/scan.png")] == "covid/scan.png"


@pytest.mark.parametrize("pattern, says", [("(?P<patient>[a-z", "not a regular expression"),
                                            (r"([^_/]+)_\d+", "no named group 'patient'")])
def test_bad_group_pattern_is_a_one_line_config_error(pattern, says):
    with pytest.raises(UserError) as e:
        load_config(InspectConfig, overrides=[f"data.group_pattern={pattern}"])
    assert says in str(e.value) and "data.group_pattern" in str(e.value) and "\n" not in str(e.value)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf))


def _resized_box(img: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    s = img.shape[0]
    return np.asarray(Image.fromarray(img).transform((s, s), Image.Transform.EXTENT, box, Image.Resampling.BILINEAR))


def test_near_duplicates_catch_rescaled_jpeg_cropped_and_shifted_copies():
    rng = np.random.default_rng(5)
    base = place(make_phantom("normal", 128, _anatomy(rng), rng), rng)
    small = np.asarray(Image.fromarray(base).resize((48, 48), Image.Resampling.BILINEAR))
    copies = [np.asarray(Image.fromarray(small).resize((128, 128), Image.Resampling.BILINEAR)),  # rescaled
              _jpeg(base, 40),                                                                  # re-encoded
              _resized_box(base, (2, 2, 126, 126)),                                             # cropped
              _resized_box(base, (3, 1, 128, 128))]                                             # shifted
    others = []
    for k, label in enumerate(("covid", "normal", "pneumonia")):
        r = np.random.default_rng(100 + k)
        others.append(place(make_phantom(label, 128, _anatomy(r), r), r))
    images = torch.from_numpy(np.stack([base, *copies, *others])).unsqueeze(1)
    d = DataConfig()
    pairs = {tuple(p) for p in near_duplicate_pairs(images, d.near_duplicate_threshold,
                                                    d.near_duplicate_min_correlation).tolist()}
    assert {(0, k) for k in range(1, 5)} <= pairs
    assert not any(i >= 5 or j >= 5 for i, j in pairs)
    labels = near_duplicate_groups(images, d.near_duplicate_threshold, d.near_duplicate_min_correlation)
    assert len(set(labels[:5].tolist())) == 1 and len(set(labels.tolist())) == 4


def _look_alikes(n: int = 40) -> tuple[int, int, np.ndarray]:
    """Two distinct normal phantoms among ``n`` whose hashes differ the least, and all ``n``."""
    imgs = []
    for k in range(n):
        r = np.random.default_rng(200 + k)
        imgs.append(place(make_phantom("normal", 128, _anatomy(r), r), r))
    h, _ = perceptual_hashes(torch.from_numpy(np.stack(imgs)).unsqueeze(1))
    d = np.bitwise_count(h[:, None] ^ h[None, :]).astype(int) + np.eye(n, dtype=int) * 99
    a, b = np.unravel_index(d.argmin(), d.shape)
    return int(a), int(b), np.stack(imgs)


def test_distinct_look_alike_patients_are_not_merged_but_their_copies_are():
    a, b, imgs = _look_alikes()
    d = DataConfig()
    copies = {a: [_resized_box(imgs[a], (3, 1, 128, 128)), _jpeg(imgs[a], 60)],
              b: [_resized_box(imgs[b], (2, 2, 126, 126)), _jpeg(imgs[b], 60)]}
    images = torch.from_numpy(np.stack([imgs[a], *copies[a], imgs[b], *copies[b]])).unsqueeze(1)
    hashes, _ = perceptual_hashes(images)
    assert (0, 3) in {tuple(p) for p in hash_pairs(hashes, d.near_duplicate_threshold).tolist()}  # the hash alone joins them
    labels = near_duplicate_groups(images, d.near_duplicate_threshold, d.near_duplicate_min_correlation)
    assert len(set(labels[:3].tolist())) == 1 and len(set(labels[3:].tolist())) == 1 and labels[0] != labels[3]


def test_flat_images_are_never_near_duplicates(folder_data, cfg):
    ds = load_dataset(folder_data, cfg, quiet=True)  # constant gray images: no structure to compare
    assert len(set(ds.groups)) == len(ds) and ds.grouping["one_per_image"] == len(ds)


def test_inspect_names_the_grouping_and_warns_without_patient_information(folder_data, films_dir, cfg):
    bare = inspect_data(folder_data, cfg)
    assert bare["no_patient_information"] and "no patient information" in format_report(bare)
    cfg.group_pattern = PATTERN
    films = inspect_data(films_dir, cfg)
    assert not films["no_patient_information"] and films["grouping"]["pattern"] == films["images"]
    assert f"data.group_pattern {films['images']}" in format_report(films)


def test_inspect_lists_near_duplicates_a_manifest_puts_in_two_splits(tmp_path, cfg):
    root = tmp_path / "fixed"
    rows = []
    for k, label in enumerate(("covid", "normal", "pneumonia")):
        r = np.random.default_rng(k)
        img = place(make_phantom(label, 64, _anatomy(r), r), r)
        (root / label).mkdir(parents=True)
        Image.fromarray(img).save(root / label / "a.png")
        rows.append({"path": f"{label}/a.png", "label": label, "group_id": f"p{k}", "split": "train"})
        if label == "covid":  # the same film again, re-encoded, under another patient id in val
            Image.fromarray(_jpeg(img, 70)).save(root / label / "b.jpg")
            rows.append({"path": f"{label}/b.jpg", "label": label, "group_id": "p9", "split": "val"})
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report = inspect_data(root, cfg)
    assert report["near_duplicates_in_two_splits"] == [["covid/a.png", "train", "covid/b.jpg", "val"]]
    assert report["grouping"]["manifest_ids"] == 4 and not report["groups_in_two_splits"]
    text = format_report(report)
    assert "manifest ids 4" in text and "covid/a.png (train) ~ covid/b.jpg (val)" in text


def test_min_correlation_out_of_range_is_a_one_line_config_error():
    with pytest.raises(UserError) as e:
        load_config(InspectConfig, overrides=["data.near_duplicate_min_correlation=1.5"])
    assert "data.near_duplicate_min_correlation" in str(e.value) and "\n" not in str(e.value)
