"""Lung-cropped and lung-masked classifier data (Maguolo & Nanni 2021; DeGrave et al. 2021): the crop on
phantoms with exact lungs, the cache and its key, the errors, and classify-train → evaluate → predict → cam
with a tiny trained lung segmenter."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from test_ablation import FakeStages

from ablation.stages import ablation_stages
from augment.data import DataConfig, load_dataset
from augment.lungmask import MIN_LUNG_FRACTION, crop_and_mask
from augment.phantoms import _anatomy, phantom_with_lungs, write_phantoms
from classifier.checkpoint import precision
from classifier.config import ClassifierConfig
from classifier.evaluate import load_evaluation
from classifier.inference import predict
from classifier.predict import predict_files
from cli import cli
from cyclegan import GanConfig
from foundation.config import load_config
from foundation.errors import UserError
from lungs import LungSegmenter, masker_for

CLASSES = ("covid", "normal", "pneumonia")
CPU = torch.device("cpu")


class ExactMasker:
    """A :class:`augment.lungmask.LungMasker` that knows the exact lungs of a ``phantoms --masks`` folder (each
    image's mask found by its pixels), so no segmenter needs training; images of the ``blind`` classes get
    empty masks."""

    def __init__(self, data: Path, identity: str = "exact", blind: tuple[str, ...] = ()):
        self.identity, self.calls, self.masks = identity, 0, {}
        for png in sorted(data.glob("*/*.png")):
            mask = np.asarray(Image.open(data / "masks" / png.parent.name / png.name)) > 0
            self.masks[np.asarray(Image.open(png)).tobytes()] = mask & (png.parent.name not in blind)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.from_numpy(np.stack([self.masks[im[0].numpy().tobytes()] for im in images]))[:, None]


@pytest.fixture
def phantoms(tmp_path) -> Path:
    """Six 64² phantoms per class with their exact lung masks."""
    return write_phantoms(tmp_path / "data", 6, 64, seed=0, masks=True)


def lung_cfg(tmp_path, **lungs) -> DataConfig:
    return DataConfig(size=32, cache_dir=str(tmp_path / "cache"), **{"lungseg_run": "exact", **lungs})


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


# ---------------------------------------------------------------- the crop itself
def test_the_crop_frames_the_whole_lungs_of_a_phantom_with_the_margin_around_them():
    rng = np.random.default_rng(4)
    image, mask = phantom_with_lungs("normal", 128, _anatomy(rng), rng)
    white = torch.full((1, 1, 128, 128), 255, dtype=torch.uint8)
    masks = torch.from_numpy(mask)[None, None]
    out, faint = crop_and_mask(white, masks, 32, crop=True, margin=0.1, mode="keep-lungs")
    lungs = out[0, 0].numpy() > 0  # the cropped, resized mask: white where kept
    top, bottom, left, right = box_of(lungs)
    assert not faint[0]
    assert max(bottom - top, right - left) == pytest.approx(32 / 1.2, abs=1.5)  # lungs fill all but the margin
    assert (top + bottom) / 2 == pytest.approx(16, abs=1.5) and (left + right) / 2 == pytest.approx(16, abs=1.5)
    t, b, l, r = box_of(mask)
    scale = 32 / (max(b - t, r - l) * 1.2)
    assert lungs.sum() == pytest.approx(mask.sum() * scale ** 2, rel=0.1)  # no lung left outside the crop
    hidden, _ = crop_and_mask(torch.from_numpy(image)[None, None], masks, 32, True, 0.1, "hide-lungs")
    assert (hidden[0, 0][torch.from_numpy(lungs)] == 0).all() and (hidden[0, 0][~torch.from_numpy(lungs)] > 0).all()


def test_an_image_whose_lungs_are_missing_or_too_small_is_kept_whole():
    images = torch.randint(0, 256, (3, 1, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(3, 1, 64, 64, dtype=torch.bool)
    masks[1, 0, :8, :8] = True  # 1.6 % of the image
    masks[2, 0, 16:48, 20:40] = True  # 16 %
    out, faint = crop_and_mask(images, masks, 32, True, 0.0, "none")
    whole, _ = crop_and_mask(images, masks, 32, False, 0.0, "none")
    assert faint.tolist() == [True, True, False] and 64 * 64 * MIN_LUNG_FRACTION > 64
    assert torch.equal(out[:2], whole[:2]) and not torch.equal(out[2], whole[2])


# ---------------------------------------------------------------- the cache
def test_the_cache_key_follows_the_segmenter_and_every_lung_setting(phantoms, tmp_path):
    caches = lambda: len(list((tmp_path / "cache").glob("*.npy")))  # noqa: E731
    masker = ExactMasker(phantoms, "segmenter-a")
    load_dataset(phantoms, lung_cfg(tmp_path, lung_crop=True), quiet=True, lung_masker=masker)
    calls = masker.calls
    load_dataset(phantoms, lung_cfg(tmp_path, lung_crop=True), quiet=True, lung_masker=masker)
    assert caches() == 1 and masker.calls == calls  # reused: nothing segmented again
    load_dataset(phantoms, lung_cfg(tmp_path, lung_crop=True), quiet=True, lung_masker=ExactMasker(phantoms, "segmenter-b"))
    assert caches() == 2  # another segmenter, another cache
    for i, lungs in enumerate([dict(lung_crop=True, lung_crop_margin=0.2), dict(lung_crop=True, lung_mask="hide-lungs"),
                               dict(lung_crop=True, lung_mask="keep-lungs")], start=3):
        load_dataset(phantoms, lung_cfg(tmp_path, **lungs), quiet=True, lung_masker=masker)
        assert caches() == i
    load_dataset(phantoms, DataConfig(size=32, cache_dir=str(tmp_path / "cache")), quiet=True, lung_masker=masker)
    assert caches() == 6  # without lung settings the masker is not used and the plain cache is built


@pytest.mark.parametrize("mode", ["hide-lungs", "keep-lungs"])
def test_the_cache_holds_the_images_with_exactly_the_lungs_or_all_but_them_hidden(phantoms, tmp_path, mode):
    plain = load_dataset(phantoms, DataConfig(size=64, cache_dir=str(tmp_path / "cache")), quiet=True)
    cfg = DataConfig(size=64, cache_dir=str(tmp_path / "cache"), lung_mask=mode, lungseg_run="exact")
    ds = load_dataset(phantoms, cfg, quiet=True, lung_masker=ExactMasker(phantoms))
    assert ds.paths == plain.paths
    lungs = torch.stack([torch.from_numpy(np.asarray(Image.open(phantoms / "masks" / p)) > 0) for p in ds.paths])[:, None]
    hidden = lungs if mode == "hide-lungs" else ~lungs
    assert (ds.images[hidden] == 0).all() and torch.equal(ds.images[~hidden], plain.images[~hidden])


def test_cropped_images_are_mostly_lung_and_images_without_lungs_are_counted_in_one_warning(phantoms, tmp_path, capsys):
    whole = load_dataset(phantoms, DataConfig(size=64, cache_dir=str(tmp_path / "cache"), lung_mask="keep-lungs",
                                              lungseg_run="exact"), quiet=True, lung_masker=ExactMasker(phantoms))
    cropped = load_dataset(phantoms, lung_cfg(tmp_path, lung_crop=True, lung_mask="keep-lungs"), quiet=True,
                           lung_masker=ExactMasker(phantoms, blind=("covid",)))
    lung_share = lambda ds, label: (ds.images[ds.indices(label=label)] > 0).float().mean().item()  # noqa: E731
    assert lung_share(cropped, "normal") > 1.5 * lung_share(whole, "normal")  # phantom lungs span ~60 % of the side
    assert lung_share(cropped, "covid") == 0  # no lungs found: uncropped, and keep-lungs hides everything
    assert cropped.no_lungs == [p for p in cropped.paths if p.startswith("covid/")] and len(cropped.no_lungs) == 6
    capsys.readouterr()
    load_dataset(phantoms, lung_cfg(tmp_path, lung_crop=True, lung_mask="keep-lungs"),
                 lung_masker=ExactMasker(phantoms, blind=("covid",)))  # from the cache: warned again
    lines = [line for line in capsys.readouterr().err.splitlines() if "lungs over less than" in line]
    assert len(lines) == 1 and "6 of 18 images" in lines[0] and "kept uncropped" in lines[0]


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("setting", ["data.lung_crop=true", "data.lung_mask=hide-lungs"])
def test_lung_settings_without_a_segmenter_are_a_one_line_config_error(setting):
    with pytest.raises(UserError, match="need data.lungseg_run") as e:
        load_config(ClassifierConfig, None, [setting])
    assert setting in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="lung_crop_margin"):
        load_config(ClassifierConfig, None, ["data.lung_crop_margin=-0.1"])
    with pytest.raises(UserError, match="CycleGAN translates whole images"):
        load_config(GanConfig, None, [setting, "data.lungseg_run=runs/lungseg/x"])


def test_loading_lung_data_without_masks_names_the_settings_and_the_segmenter_run(phantoms, tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset(phantoms, lung_cfg(tmp_path, lung_crop=True, lung_mask="keep-lungs"))
    assert "data.lung_crop=true and data.lung_mask=keep-lungs" in str(e.value) and "data.lungseg_run" in str(e.value)
    with pytest.raises(UserError, match="no such lungseg run"):
        masker_for(lung_cfg(tmp_path, lung_crop=True, lungseg_run=str(tmp_path / "missing")))
    assert masker_for(DataConfig()) is None


def test_the_ablation_makes_its_split_on_whole_images_and_gives_its_classifiers_the_masker(phantoms, tmp_path):
    from ablation.seeds import run_ablation
    cfg = ClassifierConfig(data=lung_cfg(tmp_path, lung_crop=True))
    masker = ExactMasker(phantoms)
    stages = FakeStages(DataConfig(size=32, cache_dir=cfg.data.cache_dir), effect=0.0).stages()
    run_ablation(phantoms, tmp_path / "abl", stages, cfg.data, seeds=(0,), log=lambda s: None)  # no masker needed
    assert ablation_stages(GanConfig(), cfg, tmp_path, "cpu", masker).gan_eval is None
    assert ablation_stages(GanConfig(), ClassifierConfig(), tmp_path, "cpu").gan_eval is not None


# ---------------------------------------------------------------- with a trained segmenter, end to end
@pytest.fixture(scope="module")
def segmenter_and_data(lung_run, lung_data, tmp_path_factory):
    """The tiny lung segmenter of conftest (12 phantoms per class at 32² with masks), its data, and a folder
    for this module's runs."""
    return lung_run.run_dir, lung_data, tmp_path_factory.mktemp("lungcrop")


@pytest.mark.slow
def test_classify_train_evaluate_predict_and_cam_on_lung_cropped_images(segmenter_and_data, one_thread):
    segmenter, data, tmp = segmenter_and_data
    out = tmp / "classifier-runs"
    common = ["--data", str(data), "--out", str(out), "--device", "cpu"]
    sets = ["data.size=32", f"data.cache_dir={tmp / 'cache'}", "data.lung_crop=true", f"data.lungseg_run={segmenter}",
            "model.backbone=shallow", "model.pretrained=none", "model.width=8", "model.input_size=32",
            "train.epochs=2", "train.batch_size=8", "train.tensorboard=false", "train.cpu_bf16=true", "eval.bootstrap=20"]
    runner = CliRunner()
    r = runner.invoke(cli, ["classify-train", *common, *[a for s in sets for a in ("--set", s)]])
    assert r.exit_code == 0, r.output
    run = next((out / "classifier").iterdir())
    identity = LungSegmenter(segmenter, "cpu").identity
    assert json.loads((run / "run.json").read_text())["lung_masker"] == identity
    assert torch.load(run / "best.pt", weights_only=True)["lung_masker"] == identity
    r = runner.invoke(cli, ["evaluate", *common, "--checkpoint", str(run), "--cam", "1"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((run / "eval" / "metrics.json").read_text())

    masker = masker_for(load_config(ClassifierConfig, run / "config.yaml").data, "cpu")
    model, ckpt, ds, chosen = load_evaluation(data, run / "best.pt", CPU, lung_masker=masker)
    assert len(chosen.indices) == metrics["n"] and len(ds.no_lungs) < len(ds) / 4  # the segmenter finds most lungs
    expected = predict(model, ds.images[chosen.indices], ckpt["input_size"], CPU, **precision(ckpt)).numpy()  # the run's
    files = [data / ds.paths[i] for i in chosen.indices.tolist()]
    r = runner.invoke(cli, ["predict", "--checkpoint", str(run), "--out", str(out), "--device", "cpu",
                            "--dest", str(tmp / "pred"), *map(str, files)])
    assert r.exit_code == 0, r.output
    with open(tmp / "pred" / "predictions.csv", newline="") as f:
        got = np.array([[float(row[f"prob_{c}"]) for c in CLASSES] for row in csv.DictReader(f)])
    assert np.allclose(got, expected, atol=2e-6)  # the same crop as the cache's: the same probabilities
    r = runner.invoke(cli, ["cam", "--checkpoint", str(run), "--out", str(out), "--device", "cpu", str(files[0])])
    assert r.exit_code == 0, r.output
    assert len(list((run / "cam").rglob("*.png"))) == 1
    r = runner.invoke(cli, ["audit", "--checkpoint", str(run), "--lungs", str(segmenter), "--data", str(data),
                            "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    audited = json.loads((run / "audit" / "audit.json").read_text())
    assert audited["input"] == "data.lung_crop=true" and audited["n"] == metrics["n"]
    assert audited["lungs_hidden"]["plain"]["value"] == pytest.approx(metrics["accuracy"])  # the run's own view

    with pytest.raises(UserError, match="lung segmenter of its data.lungseg_run"):
        predict_files(files, run, dest=tmp / "pred2", device="cpu", quiet=True)
    other = ExactMasker(data, identity="another segmenter")
    with pytest.raises(UserError, match="trained on the lung masks of segmenter") as e:
        load_evaluation(data, run / "best.pt", CPU, lung_masker=other)
    assert "\n" not in str(e.value)
