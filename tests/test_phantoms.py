"""Procedural X-ray phantoms: determinism, and classes that differ where real ones do."""
from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
import torch
from torch import nn

from augment.phantoms import CLASSES, _anatomy, demo_data, make_phantom, write_phantoms


def _digest(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.png")) + [folder / "manifest.csv"]:
        h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_different(tmp_path):
    a = _digest(write_phantoms(tmp_path / "a", 3, 32, seed=5))
    assert a == _digest(write_phantoms(tmp_path / "b", 3, 32, seed=5))
    assert a != _digest(write_phantoms(tmp_path / "c", 3, 32, seed=6))


def test_manifest_pairs_share_a_patient(tmp_path):
    out = write_phantoms(tmp_path / "p", 5, 32)
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert len(rows) == 15 and {r["label"] for r in rows} == set(CLASSES)
    covid = [r["group_id"] for r in rows if r["label"] == "covid"]
    assert covid[0] == covid[1] != covid[2] and len(set(covid)) == 3
    assert all((out / r["path"]).is_file() and r["source"] == "phantom" for r in rows)
    assert not list(out.glob(".*"))


def test_demo_data_is_written_once_with_covid_scarce(tmp_path):
    path = demo_data(tmp_path)
    labels = [r["label"] for r in csv.DictReader(open(path / "manifest.csv"))]
    assert labels.count("covid") < labels.count("normal") == labels.count("pneumonia")
    stamp = (path / "manifest.csv").stat().st_mtime_ns
    assert demo_data(tmp_path) == path and (path / "manifest.csv").stat().st_mtime_ns == stamp


def _stack(label, n, size, seed):
    """``n`` phantoms of one class, one patient each."""
    ci = CLASSES.index(label)
    return np.stack([make_phantom(label, size, _anatomy(np.random.default_rng([seed, ci, i])),
                                  np.random.default_rng([seed, ci, i, 1])) for i in range(n)])


def _lung_mask(anatomy, size, grow=1.2):
    """Where the lungs can be: both lung ellipses, enlarged for soft edges and positioning."""
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    a = anatomy
    inside = np.zeros((size, size), bool)
    for side in (-1, 1):
        inside |= (((yy - a["lung_y"]) / (a["lung_ry"] * grow)) ** 2
                   + ((xx - side * a["lung_x"]) / (a["lung_rx"] * grow)) ** 2) <= 1
    return inside


@pytest.mark.parametrize("label", ["covid", "pneumonia"])
def test_disease_lies_inside_the_lungs(label):
    """Same patient and exposures, with and without disease: the mean difference sits in the lungs."""
    size, n = 64, 40
    anatomy = _anatomy(np.random.default_rng(3))
    sick = np.mean([make_phantom(label, size, anatomy, np.random.default_rng([9, i])) for i in range(n)], 0)
    well = np.mean([make_phantom("normal", size, anatomy, np.random.default_rng([9, i])) for i in range(n)], 0)
    diff = sick - well
    lungs = _lung_mask(anatomy, size)
    assert np.abs(diff[~lungs]).mean() < 2 and np.abs(diff[~lungs]).max() < 12  # outside: averaged noise only
    assert diff[lungs].max() > 20                                                 # inside: a visible opacity
    left, right = diff[:, : size // 2][lungs[:, : size // 2]], diff[:, size // 2:][lungs[:, size // 2:]]
    if label == "covid":                               # bilateral
        assert left.mean() > 1 and right.mean() > 1


def test_pneumonia_is_one_sided():
    size = 64
    for i in range(6):
        anatomy = _anatomy(np.random.default_rng([4, i]))
        sick = make_phantom("pneumonia", size, anatomy, np.random.default_rng([5, i])).astype(float)
        well = make_phantom("normal", size, anatomy, np.random.default_rng([5, i])).astype(float)
        d = sick - well  # the noise differs too; the halves' means leave the opacity
        left, right = d[:, : size // 2].mean(), d[:, size // 2:].mean()
        assert max(left, right) > 3 * max(min(left, right), 0.1)


def test_classes_are_learnable_by_a_small_cnn():
    """A 2-conv net trained for a few CPU seconds tells the classes apart on held-out patients."""
    torch.manual_seed(0)

    def data(n, seed):
        x = torch.from_numpy(np.concatenate([_stack(c, n, 64, seed) for c in CLASSES])).float().unsqueeze(1)
        x = (x - x.mean((2, 3), keepdim=True)) / x.std((2, 3), keepdim=True)  # exposure differs per image
        return x, torch.arange(3).repeat_interleave(n)

    x_train, y_train = data(60, seed=0)
    x_test, y_test = data(40, seed=1)
    net = nn.Sequential(nn.AvgPool2d(2),
                        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(16 * 8 * 8, 3))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(15):
        for idx in torch.randperm(len(y_train)).split(30):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x_train[idx]), y_train[idx]).backward()
            opt.step()
    with torch.no_grad():
        accuracy = (net(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy > 0.8
