"""Discovery, the decode-once cache, grouped splits and the bad-input battery at dataset level."""
from __future__ import annotations

import csv
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import augment.data as data_mod
from augment.data import DataConfig, discover, grouped_split, load_dataset
from conftest import save_gray
from foundation.errors import UserError


def write_manifest(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------- loading
def test_folder_dataset_shapes_and_labels(folder_data, cfg):
    ds = load_dataset(folder_data, cfg, quiet=True)
    assert len(ds) == 12 and ds.images.shape == (12, 1, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64
    assert Counter(ds.labels.tolist()) == {0: 4, 1: 4, 2: 4}
    i = ds.paths.index(os.path.join("normal", "normal2.png"))
    assert ds.classes[ds.labels[i]] == "normal" and int(ds.images[i].float().mean()) == 60
    assert set(ds.splits) <= {"train", "val", "test"} and not ds.skipped


def test_manifest_folder_uses_groups_and_sources(phantom_dir, cfg):
    ds = load_dataset(phantom_dir, cfg, quiet=True)
    assert len(ds) == 18 and set(ds.sources) == {"phantom"}
    assert ds.groups[0] == ds.groups[1] == "covid-00000"
    assert torch.equal(ds.indices(label="covid"), torch.arange(6))


def test_resize_crop_and_pad(tmp_path, cache_dir):
    img = np.zeros((20, 40), np.uint8)
    img[:, 10:30] = 255  # white centre, black sides
    Image.fromarray(img).save(tmp_path / "wide.png")
    crop = data_mod.decode_to_square(tmp_path / "wide.png", 20, "crop")
    pad = data_mod.decode_to_square(tmp_path / "wide.png", 20, "pad")
    assert crop.shape == pad.shape == (20, 20)
    assert crop[:, 2:-2].min() > 200                       # crop keeps the centre
    assert pad[:4].max() == 0 and pad[-4:].max() == 0      # pad letterboxes on black
    assert pad[10, 8:12].min() > 200


# ---------------------------------------------------------------- cache
def test_cache_is_reused_without_decoding(folder_data, cfg, monkeypatch):
    first = load_dataset(folder_data, cfg, quiet=True)

    def fail(*args, **kwargs):
        raise AssertionError("decoded again")
    monkeypatch.setattr(data_mod, "decode_to_square", fail)
    second = load_dataset(folder_data, cfg, quiet=True)
    assert torch.equal(first.images, second.images) and first.fingerprint == second.fingerprint


def test_the_fingerprint_follows_the_images_not_their_paths_or_file_times(folder_data, cfg, tmp_path):
    first = load_dataset(folder_data, cfg, quiet=True)
    copy = Path(shutil.copytree(folder_data, tmp_path / "copy", copy_function=shutil.copy))  # new path, new times
    assert load_dataset(copy, cfg, quiet=True).fingerprint == first.fingerprint
    save_gray(copy / "normal" / "normal2.png", 61)  # one gray level brighter
    assert load_dataset(copy, cfg, quiet=True).fingerprint != first.fingerprint


def _count_decodes(monkeypatch) -> list:
    calls = []
    real = data_mod.decode_to_square

    def counting(path, *args, **kwargs):
        calls.append(Path(path).name)
        return real(path, *args, **kwargs)
    monkeypatch.setattr(data_mod, "decode_to_square", counting)
    return calls


def test_cache_rebuilds_when_a_file_changes(folder_data, cfg, monkeypatch):
    load_dataset(folder_data, cfg, quiet=True)
    calls = _count_decodes(monkeypatch)
    target = folder_data / "covid" / "covid0.png"
    save_gray(target, 250, size=(30, 30))
    ds = load_dataset(folder_data, cfg, quiet=True)
    assert calls and int(ds.images[ds.paths.index(os.path.join("covid", "covid0.png"))].float().mean()) == 250


def test_cache_rebuilds_when_only_mtime_changes(folder_data, cfg, monkeypatch):
    load_dataset(folder_data, cfg, quiet=True)
    calls = _count_decodes(monkeypatch)
    target = folder_data / "covid" / "covid0.png"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_dataset(folder_data, cfg, quiet=True)
    assert calls


def test_cache_follows_added_and_removed_files(folder_data, cfg):
    assert len(load_dataset(folder_data, cfg, quiet=True)) == 12
    save_gray(folder_data / "covid" / "new.png", 99)
    assert len(load_dataset(folder_data, cfg, quiet=True)) == 13
    (folder_data / "covid" / "new.png").unlink()
    (folder_data / "normal" / "normal0.png").unlink()
    ds = load_dataset(folder_data, cfg, quiet=True)
    assert len(ds) == 11 and os.path.join("normal", "normal0.png") not in ds.paths


def test_cache_follows_size(folder_data, cfg):
    assert load_dataset(folder_data, cfg, quiet=True).images.shape[-1] == 32
    cfg.size = 16
    assert load_dataset(folder_data, cfg, quiet=True).images.shape[-2:] == (16, 16)


def test_cache_is_memory_mapped(folder_data, cfg, cache_dir):
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc/self/maps")
    ds = load_dataset(folder_data, cfg, quiet=True)
    npy = next(cache_dir.glob("*.npy"))
    assert str(npy.resolve()) in maps.read_text()
    ds.images[-1].fill_(0)  # copy-on-write: the cache file is not changed through the tensor
    assert np.load(npy)[-1].any()


def test_cache_leaves_only_finished_files(tmp_path, folder_data, cfg, cache_dir):
    (folder_data / "covid" / "bad.png").write_bytes(b"not an image")
    load_dataset(folder_data, cfg, quiet=True)
    names = sorted(p.name for p in cache_dir.iterdir())
    assert len(names) == 2 and names[0].endswith(".json") and names[1].endswith(".npy"), names


def test_interrupted_cache_build_leaves_nothing_behind(folder_data, cfg, cache_dir, monkeypatch):
    calls = _count_decodes(monkeypatch)
    real = data_mod.decode_to_square

    def dies(path, *args, **kwargs):
        if len(calls) > 3:
            raise KeyboardInterrupt
        calls.append(path)
        return real(path, *args, **kwargs)
    monkeypatch.setattr(data_mod, "decode_to_square", dies)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(folder_data, cfg, quiet=True)
    assert list(cache_dir.iterdir()) == []
    monkeypatch.setattr(data_mod, "decode_to_square", real)
    assert len(load_dataset(folder_data, cfg, quiet=True)) == 12


def test_cache_dir_that_cannot_be_made(folder_data, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="data.cache_dir"):
        load_dataset(folder_data, DataConfig(size=16, cache_dir=str(tmp_path / "file" / "cache")), quiet=True)


# ---------------------------------------------------------------- splits
def _groups(n_groups=60, seed=0):
    rng = np.random.default_rng(seed)
    groups, labels = [], []
    for g in range(n_groups):
        for _ in range(rng.integers(1, 4)):
            groups.append(f"p{g}")
            labels.append(("covid", "normal", "pneumonia")[g % 3])
    return groups, labels


def test_grouped_split_never_puts_a_group_in_two_splits():
    groups, labels = _groups()
    splits = grouped_split(groups, labels, (0.6, 0.2, 0.2), seed=1)
    seen = {}
    for g, s in zip(groups, splits):
        assert seen.setdefault(g, s) == s
    for c in ("covid", "normal", "pneumonia"):
        per = Counter(s for s, y in zip(splits, labels) if y == c)
        n = sum(per.values())
        assert set(per) == {"train", "val", "test"}
        assert abs(per["train"] / n - 0.6) < 0.2


def test_grouped_split_is_seeded():
    groups, labels = _groups()
    a = grouped_split(groups, labels, (0.7, 0.15, 0.15), seed=3)
    assert a == grouped_split(groups, labels, (0.7, 0.15, 0.15), seed=3)
    assert a != grouped_split(groups, labels, (0.7, 0.15, 0.15), seed=4)


def test_every_class_reaches_train_even_with_one_group():
    splits = grouped_split(["a", "b", "b", "c"], ["covid", "normal", "normal", "pneumonia"], (0.7, 0.15, 0.15), 0)
    assert splits == ["train"] * 4


def test_loaded_split_is_grouped_and_seeded(tmp_path, cfg):
    from augment.phantoms import write_phantoms
    data = write_phantoms(tmp_path / "p", n_per_class=12, size=32, seed=0)  # 6 patients per class
    a = load_dataset(data, cfg, quiet=True)
    for g in set(a.groups):
        assert len({s for gg, s in zip(a.groups, a.splits) if gg == g}) == 1
    for c in a.classes:
        assert len(a.indices("train", c)) > 0 and len(a.indices("val", c)) > 0
    fresh = DataConfig(size=32, cache_dir=str(tmp_path / "other-cache"))  # an independent load, same seed
    assert load_dataset(data, fresh, quiet=True).splits == a.splits
    fresh.split_seed = cfg.split_seed + 1
    assert load_dataset(data, fresh, quiet=True).splits != a.splits


def test_manifest_split_column_is_respected(tmp_path, cfg):
    rows = []
    for i, split in enumerate(["train", "val", "test"] * 3):
        label = ("covid", "normal", "pneumonia")[i % 3]
        save_gray(tmp_path / "d" / f"{i}.png", i * 20)
        rows.append({"path": f"{i}.png", "label": label, "split": split})
    write_manifest(tmp_path / "d" / "manifest.csv", rows)
    ds = load_dataset(tmp_path / "d", cfg, quiet=True)
    assert ds.splits == [r["split"] for r in rows]


def test_partly_filled_split_column_keeps_given_splits(tmp_path, cfg):
    rows = []
    for i in range(30):
        save_gray(tmp_path / "d" / f"{i}.png", i)
        rows.append({"path": f"{i}.png", "label": ("covid", "normal", "pneumonia")[i % 3],
                     "patient_id": f"p{i // 2}", "split": "test" if i < 6 else ""})
    write_manifest(tmp_path / "d" / "manifest.csv", rows)
    ds = load_dataset(tmp_path / "d", cfg, quiet=True)
    assert ds.splits[:6] == ["test"] * 6
    assert "train" in ds.splits[6:]
    for g in set(ds.groups):
        assert len({s for gg, s in zip(ds.groups, ds.splits) if gg == g}) == 1


def test_forced_split(phantom_dir, cfg):
    ds = load_dataset(phantom_dir, cfg, split="train", quiet=True)
    assert set(ds.splits) == {"train"}


# ---------------------------------------------------------------- bad input (issue 6)
def _battery(root: Path) -> dict[str, str]:
    """A class-folder tree with every kind of bad file; returns relative path → what it is."""
    for cls in ("covid", "normal", "pneumonia"):
        save_gray(root / cls / "ok.png", 100)
    save_gray(root / "normal" / "deep" / "er" / "nested.jpg", 50)
    Image.new("L", (1, 1), 200).save(root / "pneumonia" / "tiny.png")
    for suffix in (".png", ".jpg"):
        path = root / "covid" / f"truncated{suffix}"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:400])
    (root / "covid" / "empty.png").write_bytes(b"")
    (root / "covid" / "text.png").write_text("I am not a picture\n")
    (root / "covid" / "notes.txt").write_text("read me")
    os.symlink("..", root / "normal" / "loop")  # a folder pointing at its parent
    return {
        os.path.join("covid", "truncated.png"): "damaged",
        os.path.join("covid", "truncated.jpg"): "damaged",
        os.path.join("covid", "empty.png"): "not an image",
        os.path.join("covid", "text.png"): "not an image",
        os.path.join("covid", "notes.txt"): "not an image suffix",
    }


def test_bad_files_are_skipped_named_and_counted(tmp_path, cfg, capsys):
    bad = _battery(tmp_path / "d")
    ds = load_dataset(tmp_path / "d", cfg)
    assert sorted(ds.paths) == sorted([os.path.join(c, "ok.png") for c in ("covid", "normal", "pneumonia")]
                                      + [os.path.join("normal", "deep", "er", "nested.jpg"),
                                         os.path.join("pneumonia", "tiny.png")])
    assert set(ds.skipped) == set(bad)
    for path, why in bad.items():
        assert ds.skipped[path].startswith(why)
    err = capsys.readouterr().err
    for path in bad:
        assert f"skipped {path}:" in err
    assert f"skipped {len(bad)} file(s)" in err
    tiny = ds.images[ds.paths.index(os.path.join("pneumonia", "tiny.png"))]
    assert tiny.shape == (1, 32, 32) and int(tiny.min()) == int(tiny.max()) == 200


def test_non_utf8_file_name(tmp_path, cfg):
    folder = os.fsencode(tmp_path / "d" / "covid")
    os.makedirs(folder)
    try:
        Image.new("L", (8, 8), 9).save(os.path.join(folder, b"caf\xe9.png"))
    except (OSError, UnicodeError):
        pytest.skip("the file system refuses non-UTF-8 names")
    for cls in ("normal", "pneumonia"):
        save_gray(tmp_path / "d" / cls / "a.png", 1)
    ds = load_dataset(tmp_path / "d", cfg, quiet=True)
    assert len(ds) == 3 and os.fsencode(ds.paths[0]).endswith(b"caf\xe9.png")
    assert len(load_dataset(tmp_path / "d", cfg, quiet=True)) == 3  # and from the cache


def test_empty_class_folder_is_one_line_error(folder_data, cfg):
    for p in (folder_data / "pneumonia").iterdir():
        p.unlink()
    with pytest.raises(UserError) as e:
        load_dataset(folder_data, cfg, quiet=True)
    msg = str(e.value)
    assert "\n" not in msg and "'pneumonia'" in msg and "inspect" in msg


def test_single_class_folder(folder_data, cfg):
    for cls in ("covid", "pneumonia"):
        for p in (folder_data / cls).iterdir():
            p.unlink()
        (folder_data / cls).rmdir()
    with pytest.raises(UserError, match="'covid'"):
        load_dataset(folder_data, cfg, quiet=True)
    ds = load_dataset(folder_data, cfg, required=("normal",), quiet=True)
    assert len(ds) == 4 and set(ds.splits) <= {"train", "val", "test"}


def test_unknown_class_folder_is_ignored_with_a_warning(folder_data, cfg, capsys):
    save_gray(folder_data / "tuberculosis" / "x.png", 5)
    assert len(load_dataset(folder_data, cfg)) == 12
    assert "tuberculosis" in capsys.readouterr().err


def test_manifest_bad_rows(tmp_path, cfg, capsys):
    root = tmp_path / "d"
    for cls in ("covid", "normal", "pneumonia"):
        save_gray(root / f"{cls}.png", 10)
    rows = [{"path": f"{c}.png", "label": c} for c in ("covid", "normal", "pneumonia")]
    rows += [{"path": "covid.png", "label": "covid"},            # repeated
             {"path": "gone.png", "label": "normal"},            # does not exist
             {"path": "normal.png2", "label": "tuberculosis"},   # unknown label
             {"path": "", "label": "covid"}]                     # empty path
    write_manifest(root / "manifest.csv", rows)
    ds = load_dataset(root, cfg)
    assert sorted(ds.paths) == ["covid.png", "normal.png", "pneumonia.png"]
    reasons = " | ".join(ds.skipped.values())
    assert "repeated" in reasons and "file not found" in reasons and "unknown label 'tuberculosis'" in reasons
    assert "valid labels: covid, normal, pneumonia" in reasons and "empty path" in reasons
    assert len(ds.skipped) == 4 and "skipped 4 file(s)" in capsys.readouterr().err


def test_manifest_with_nothing_usable(tmp_path, cfg):
    write_manifest(tmp_path / "m.csv", [{"path": "x.png", "label": "covid"}])
    with pytest.raises(UserError, match="no readable image of class"):
        load_dataset(tmp_path / "m.csv", cfg, quiet=True)


@pytest.mark.parametrize("content,match", [(b"file,kind\na.png,covid\n", "columns path,label"),
                                           (b"", "columns path,label"),
                                           (b"path,label\n\xff\xfe.png,covid\n", "UTF-8")])
def test_unreadable_manifest(tmp_path, cfg, content, match):
    (tmp_path / "m.csv").write_bytes(content)
    with pytest.raises(UserError, match=match) as e:
        load_dataset(tmp_path / "m.csv", cfg, quiet=True)
    assert "\n" not in str(e.value) and "m.csv" in str(e.value)


def test_missing_data_folder(tmp_path, cfg):
    with pytest.raises(UserError, match="no such folder or manifest"):
        discover(tmp_path / "nowhere", cfg.classes)


def test_grouped_split_gives_every_share_a_group_even_when_groups_are_large():
    groups = [f"p{i // 3}" for i in range(30)]  # ten patients of three films each, one class
    splits = grouped_split(groups, ["covid"] * 30, (0.7, 0.15, 0.15), seed=0)
    assert Counter(splits) == {"train": 21, "val": 6, "test": 3}
    assert "test" not in grouped_split(groups, ["covid"] * 30, (0.5, 0.5, 0.0), seed=0)
