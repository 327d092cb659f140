"""Shared fixtures: tiny phantom data sets and a private image cache."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # parallel workers (pytest -n): one thread each, inherited by the
    os.environ["OMP_NUM_THREADS"] = "1"      # commands they start, so the workers do not stall one another

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # in case torch was imported before this file

from augment.data import DataConfig  # noqa: E402
from augment.phantoms import write_phantoms  # noqa: E402


@pytest.fixture
def one_thread():
    """One torch thread: tiny networks gain nothing from threads, on a shared CPU extra threads stall, and
    subprocess runs (one thread) are compared with in-process ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    """An image cache private to the test."""
    return tmp_path / "cache"


@pytest.fixture
def cfg(cache_dir) -> DataConfig:
    """Data settings at test size, caching into ``cache_dir``."""
    return DataConfig(size=32, cache_dir=str(cache_dir))


@pytest.fixture
def phantom_dir(tmp_path) -> Path:
    """Six 32² phantoms per class with ``manifest.csv`` (pairs of images share a patient)."""
    return write_phantoms(tmp_path / "phantoms", n_per_class=6, size=32, seed=0)


@pytest.fixture
def folder_data(tmp_path) -> Path:
    """Class folders without a manifest: four gray PNGs per class, one patient each."""
    root = tmp_path / "folders"
    for c, cls in enumerate(("covid", "normal", "pneumonia")):
        for i in range(4):
            save_gray(root / cls / f"{cls}{i}.png", 40 * c + 10 * i)
    return root


def tiny_lungseg_config(cache: Path, epochs: int = 12, **train):
    """A U-Net of width 8 and 3 levels at 32², batches of 8, cached under ``cache``; ``train`` overrides
    :class:`lungs.config.LungTrainConfig` fields."""
    from lungs.config import LungDataConfig, LungEvalConfig, LungsegConfig, LungTrainConfig, UNetConfig
    return LungsegConfig(data=LungDataConfig(size=32, cache_dir=str(cache)), model=UNetConfig(width=8, depth=3),
                         train=LungTrainConfig(epochs=epochs, batch_size=8, lr=5e-3, log_every=2, tensorboard=False,
                                               **train),
                         eval=LungEvalConfig(bootstrap=50))


@pytest.fixture(scope="session")
def lung_data(tmp_path_factory):
    """12 phantoms per class at 32² with their lung masks (``phantoms --masks``); read, never written."""
    return write_phantoms(tmp_path_factory.mktemp("lungs") / "data", 12, 32, seed=2, masks=True)


@pytest.fixture(scope="session")
def lung_run(lung_data, tmp_path_factory):
    """One finished lung-segmenter training run on ``lung_data``, shared by the tests that need a segmenter."""
    from lungs.train import train_lungseg
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs")
    try:
        yield train_lungseg(tiny_lungseg_config(out / "cache"), lung_data, out, device="cpu", quiet=True)
    finally:
        torch.set_num_threads(threads)


def tiny_classifier_config(tmp: Path, *more: str):
    """A shallow classifier at 32² trained for 2 epochs of batch 8, cached under ``tmp``; ``more``
    overrides as ``key=value``."""
    from classifier.config import ClassifierConfig
    from foundation.config import load_config
    return load_config(ClassifierConfig, None, [
        "data.size=32", f"data.cache_dir={tmp / 'cache'}", "model.backbone=shallow", "model.width=8",
        "model.input_size=32", "train.epochs=2", "train.batch_size=8", "train.tensorboard=false", *more])


def save_gray(path: Path, value: int, size: tuple[int, int] = (24, 24), **kwargs) -> Path:
    """A constant gray image at ``path`` (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(path, **kwargs)
    return path


class StopAfter:
    """Stands in for GracefulStop: a Ctrl-C arrives at the ``after``-th check (the 4th by default)."""

    def __init__(self, after: int = 4):
        self.checks, self.after = 0, after

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @property
    def requested(self):
        self.checks += 1
        return self.checks >= self.after


def sigint_at_call(monkeypatch, owner, name: str, n: int):
    """Make ``owner.name`` send this process SIGINT on its ``n``-th call (then run as usual); returns
    the original, to restore with ``monkeypatch.setattr(owner, name, original)``."""
    original = getattr(owner, name)
    calls = {"n": 0}

    def interrupted(self, *args):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args)

    monkeypatch.setattr(owner, name, interrupted)
    return original


def assert_self_contained_report(page: Path, markdown_file: Path, figures: list[str]) -> None:
    """``page`` is a report.html that opens offline: every table of ``markdown_file`` is there, every one of
    ``figures`` (PNG names) is embedded, and nothing is fetched from elsewhere."""
    import re
    text = page.read_text(encoding="utf-8")
    tables = sum(1 for line in markdown_file.read_text(encoding="utf-8").splitlines() if re.match(r"\|\s*-", line)
                 or re.match(r"\|-", line))
    assert text.count("<table>") == tables and tables > 0
    assert text.count("data:image/png;base64,") == len(figures)
    assert all(f"<figcaption>{name}</figcaption>" in text for name in figures)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)



def pytest_collection_modifyitems(config, items):
    """The suite's slow tests (each a minute or more of subprocesses) first: under ``pytest -n`` they start at once
    beside the rest instead of ending the run alone. Other modules keep their order, and so their fixtures."""
    items.sort(key=lambda item: not (item.path.name == "test_suite.py" and item.get_closest_marker("slow")))
