"""Balanced training manifests: policies, hygiene (nothing synthetic outside training), overwrite refusal."""
import csv
import shutil
from collections import Counter

import pytest

from augment.balance import Policy, balance
from augment.data import DataConfig, load_dataset
from augment.phantoms import write_phantoms
from foundation.errors import UserError


@pytest.fixture
def real_and_synthetic(tmp_path):
    """12 covid / 30 normal / 30 pneumonia phantoms (split by patient), and a synthetic covid folder of
    30 images: 28 made from training patients, 2 from a validation patient."""
    cfg = DataConfig(size=32, cache_dir=str(tmp_path / "cache"))
    real = write_phantoms(tmp_path / "real", 30, 32, seed=1)
    rows = list(csv.DictReader(open(real / "manifest.csv")))
    keep = [r for r in rows if r["label"] != "covid" or int(r["path"][-9:-4]) < 12]
    with open(real / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)
    ds = load_dataset(real, cfg, quiet=True)
    train_groups = sorted({g for g, s in zip(ds.groups, ds.splits) if s == "train"})
    val_group = next(g for g, s in zip(ds.groups, ds.splits) if s == "val")
    syn = tmp_path / "syn"
    (syn / "covid").mkdir(parents=True)
    src = real / keep[0]["path"]
    syn_rows = []
    for i in range(30):
        name = f"covid/syn_{i:03d}.png"
        shutil.copy(src, syn / name)
        group = val_group if i >= 28 else train_groups[i % len(train_groups)]
        syn_rows.append({"path": name, "label": "covid", "split": "train", "source": "synthetic",
                         "group_id": group, "source_image": keep[0]["path"], "checkpoint_sha256": "ab" * 32})
    with open(syn / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(syn_rows[0]))
        w.writeheader()
        w.writerows(syn_rows)
    return real, syn, cfg, ds


def _read(path):
    return list(csv.DictReader(open(path)))


def test_match_majority_fills_the_minority_class_and_keeps_val_test_untouched(real_and_synthetic, tmp_path):
    real, syn, cfg, ds = real_and_synthetic
    summary = balance(real, syn, Policy.parse("match-majority"), tmp_path / "m.csv", cfg)
    rows = _read(tmp_path / "m.csv")
    train = Counter(r["label"] for r in rows if r["split"] == "train")
    assert summary["covid"]["synthetic"] == summary["normal"]["real_train"] - summary["covid"]["real_train"]
    assert train["covid"] == train["normal"]
    synthetic = [r for r in rows if r["origin"] == "synthetic"]
    assert synthetic and all(r["split"] == "train" for r in synthetic)
    assert all(r["checkpoint_sha256"] == "ab" * 32 and r["source_image"] for r in synthetic)
    # every real image is listed once, with its original split
    real_rows = [r for r in rows if r["origin"] == "real"]
    assert len(real_rows) == len(ds)
    assert Counter(r["split"] for r in real_rows) == Counter(ds.splits)
    # and the manifest trains: it loads with the same splits plus the synthetic training rows
    mixed = load_dataset(tmp_path / "m.csv", cfg, quiet=True)
    assert len(mixed.indices("val")) == len(ds.indices("val"))
    assert len(mixed.indices("train")) == len(ds.indices("train")) + len(synthetic)


def test_synthetic_images_of_validation_patients_are_refused(real_and_synthetic, tmp_path, capsys):
    real, syn, cfg, ds = real_and_synthetic
    balance(real, syn, Policy.parse("count:100"), tmp_path / "c.csv", cfg)
    synthetic = [r for r in _read(tmp_path / "c.csv") if r["origin"] == "synthetic"]
    train_groups = {g for g, s in zip(ds.groups, ds.splits) if s == "train"}
    assert len(synthetic) == 28
    assert all(r["group_id"] in train_groups for r in synthetic)
    assert "refused 2 synthetic image(s)" in capsys.readouterr().err


def test_ratio_caps_the_synthetic_share(real_and_synthetic, tmp_path):
    real, syn, cfg, _ = real_and_synthetic
    summary = balance(real, syn, Policy.parse("ratio:0.25"), tmp_path / "r.csv", cfg)
    n_real, n_syn = summary["covid"]["real_train"], summary["covid"]["synthetic"]
    assert n_syn == int(0.25 * n_real / 0.75)
    assert n_syn / (n_real + n_syn) <= 0.25
    assert summary["normal"]["synthetic"] == 0  # no synthetic normal images were offered


def test_selection_is_seeded(real_and_synthetic, tmp_path):
    real, syn, cfg, _ = real_and_synthetic
    picks = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        balance(real, syn, Policy.parse("count:5"), tmp_path / f"{name}.csv", cfg, seed=seed)
        picks.append([r["path"] for r in _read(tmp_path / f"{name}.csv") if r["origin"] == "synthetic"])
    assert picks[0] == picks[1] and picks[0] != picks[2]


def test_existing_manifest_is_not_overwritten(real_and_synthetic, tmp_path):
    real, syn, cfg, _ = real_and_synthetic
    dest = tmp_path / "m.csv"
    dest.write_text("keep me")
    with pytest.raises(UserError, match="--overwrite"):
        balance(real, syn, Policy.parse("count:1"), dest, cfg)
    assert dest.read_text() == "keep me"
    balance(real, syn, Policy.parse("count:1"), dest, cfg, overwrite=True)
    assert dest.read_text() != "keep me"


@pytest.mark.parametrize("text", ["majority", "ratio:1.5", "ratio:1", "count:-1", "count:x"])
def test_bad_policies_are_one_line_errors(text):
    with pytest.raises(UserError, match="--policy"):
        Policy.parse(text)
