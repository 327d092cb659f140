"""Lung-constrained translation: the composite that leaves everything outside the lungs as it
was, discriminators that see only the lungs, DiffAugment, domains chosen by source, and the whole chain
(gan-train → resume → synthesize → gan-eval) with exact phantom lung masks and with a trained segmenter."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from test_cyclegan_train import assert_same_state, tiny_config

import cyclegan.train
import foundation.loop
from augment.data import load_dataset
from augment.lungmask import feather_mask
from augment.phantoms import write_phantoms
from conftest import ROOT, StopAfter, assert_self_contained_report
from cyclegan import GanConfig, train_gan
from cyclegan.constraint import diff_augment, lung_view
from cyclegan.evaluate import evaluate_gan
from cyclegan.model import CycleGAN
from cyclegan.synthesize import synthesize
from foundation.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


class ExactMasker:
    """The phantoms' own lung masks (``phantoms --masks``), looked up by the image's pixels: exact at the size
    they were written."""

    def __init__(self, data):
        self.identity = "phantom-masks"
        self.masks = {}
        with open(data / "manifest.csv", newline="") as f:
            for row in csv.DictReader(f):
                image = np.asarray(Image.open(data / row["path"]))
                self.masks[image.tobytes()] = np.asarray(Image.open(data / row["mask"])) > 127

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.from_numpy(self.masks[im[0].numpy().tobytes()])[None] for im in images])


@pytest.fixture
def data(tmp_path):
    """12 phantoms per class at 32² with their exact lung masks."""
    return write_phantoms(tmp_path / "phantoms", 12, 32, seed=0, masks=True)


def lung_config(tmp_path, *overrides) -> GanConfig:
    return tiny_config(tmp_path, "train.lung_constraint=composite", "data.lungseg_run=phantom-masks", *overrides)


def square_mask(size=32, top=10, side=8) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size, dtype=torch.bool)
    mask[..., top:top + side, top:top + side] = True
    return mask


def test_composite_translation_changes_no_pixel_outside_the_feathered_mask(tmp_path):
    cfg = lung_config(tmp_path)
    model = CycleGAN(cfg, torch.device("cpu"), total_steps=1)
    real_a, real_b = torch.rand(2, 1, 32, 32) * 2 - 1, torch.rand(2, 1, 32, 32) * 2 - 1
    masks = torch.cat([square_mask(), square_mask(top=4, side=12)])
    model.set_input(real_a, real_b, masks, masks.flip(0))
    out = model.forward()
    outside_a, outside_b = model.weight_a == 0, model.weight_b == 0
    assert outside_a.any() and outside_b.any()
    for name, source, outside in (("fake_b", real_a, outside_a), ("rec_a", real_a, outside_a),
                                  ("idt_a", real_a, outside_a), ("fake_a", real_b, outside_b),
                                  ("rec_b", real_b, outside_b), ("idt_b", real_b, outside_b)):
        assert torch.equal(out[name][outside], source[outside]), name
        assert not torch.equal(out[name][~outside], source[~outside]), name  # inside, the generator's output


def test_the_lung_view_cannot_see_a_marker_outside_the_lungs_nor_the_windowing():
    x = torch.rand(1, 1, 32, 32)
    w = feather_mask(square_mask(), 1, 1.0)
    marked = x.clone()
    marked[..., 0:5, 0:12] = 1.0  # burned-in text in a corner
    marked[..., 26:, 26:] = 0.0   # a collimation edge
    assert torch.equal(lung_view(marked, w), lung_view(x, w))
    assert torch.allclose(lung_view(0.5 * x + 0.3, w), lung_view(x, w), atol=5e-3)  # another window, same view
    inside = x.clone()
    inside[..., 13:15, 13:15] += 0.5  # an opacity in the lung
    assert not torch.allclose(lung_view(inside, w), lung_view(x, w), atol=1e-3)
    view = lung_view(x, w)
    assert view.shape == x.shape and (w > 0).float().mean() < 0.3
    assert (view != 0).float().mean() > 0.7  # the box around the lungs fills the view


def test_diff_augment_shifts_and_cuts_each_image_and_passes_gradients():
    torch.manual_seed(0)
    x = torch.ones(16, 1, 32, 32, requires_grad=True)
    y = diff_augment(x)
    zero_share = (y == 0).float().mean((1, 2, 3))
    assert y.shape == x.shape and (zero_share >= 0.05).all() and (zero_share <= 0.6).all()
    assert len({round(float(z), 4) for z in zero_share}) > 4  # each image its own draw
    y.sum().backward()
    assert x.grad.sum() == (y != 0).sum() and set(x.grad.unique().tolist()) <= {0.0, 1.0}  # each kept pixel once


def test_a_lung_constraint_needs_a_segmenter(tmp_path, data):
    with pytest.raises(UserError, match="train.lung_constraint=composite needs the lung masks of data.lungseg_run"):
        tiny_config(tmp_path, "train.lung_constraint=composite")
    with pytest.raises(UserError, match="none were given"):
        train_gan(lung_config(tmp_path, "train.steps=1"), data, tmp_path / "runs", device="cpu")


@pytest.mark.slow
def test_lung_constrained_gan_resumes_exactly_synthesizes_and_is_evaluated(tmp_path, data, monkeypatch):
    cfg = lung_config(tmp_path, "train.steps=8", "train.pool_size=6", "train.diff_augment=true",
                      "train.eval_every=8", "train.eval_images=4")
    masker = ExactMasker(data)
    straight = train_gan(cfg, data, tmp_path / "a", device="cpu", seed=3, lung_masker=masker)
    monkeypatch.setattr(foundation.loop, "GracefulStop", StopAfter)
    first = train_gan(cfg, data, tmp_path / "b", device="cpu", seed=3, lung_masker=masker)
    monkeypatch.undo()
    resumed = train_gan(None, data, tmp_path / "b", device="cpu", resume=first.run_dir, lung_masker=masker)
    assert first.interrupted and resumed.step == 8
    assert (straight.run_dir / "translations-step8.png").exists() and (straight.run_dir / "translations-step8.pdf").exists()
    assert_same_state(resumed.model, straight.model)

    dest = synthesize(6, data, tmp_path / "b", first.run_dir, device="cpu", lung_masker=masker)
    ds = load_dataset(data, cfg.data, quiet=True)
    by_path = {str(ds.root / p): i for i, p in enumerate(ds.paths)}
    with open(dest / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["lung_segmenter_sha256"] for r in rows} == {"phantom-masks"}
    changed_inside = 0
    for row in rows:
        source = ds.images[by_path[row["source_image"]]]
        outside = feather_mask(masker(source[None]), *cfg.train.feathering(32))[0] == 0
        out = torch.from_numpy(np.array(Image.open(dest / row["path"])))[None]
        assert torch.equal(out[outside], source[outside])  # bit for bit outside the feathered lungs
        changed_inside += int(not torch.equal(out[~outside], source[~outside]))
    assert changed_inside == len(rows)

    class Other(ExactMasker):
        pass
    other = Other(data)
    other.identity = "another-segmenter"
    with pytest.raises(UserError, match="trained with the lung masks of a segmenter"):
        synthesize(2, data, tmp_path / "b", first.run_dir, dest=tmp_path / "s2", device="cpu", lung_masker=other)
    result = evaluate_gan(data, tmp_path / "b", first.run_dir, device="cpu", split="val", lung_masker=masker)
    assert result["lung_constraint"] == "composite" and result["n_translated"] > 0


def test_domains_are_chosen_by_source(tmp_path, data, monkeypatch):
    manifest = data / "manifest.csv"
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        row["source"] = "adults" if row["label"] == "normal" and int(row["group_id"][-1]) % 2 else "children"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    used = []
    real_sets = cyclegan.train.image_sets
    monkeypatch.setattr(cyclegan.train, "image_sets", lambda images, labels, dev, share, *rows:
                        used.append(rows) or real_sets(images, labels, dev, share, *rows))
    cfg = tiny_config(tmp_path, "train.steps=1", "train.domain_a_sources=[adults]")
    train_gan(cfg, data, tmp_path / "runs", device="cpu")
    ds = load_dataset(data, cfg.data, quiet=True)
    rows_a = used[0][0].tolist()
    assert rows_a and {ds.sources[i] for i in rows_a} == {"adults"}
    assert set(rows_a) == set(ds.indices("train", "normal", ["adults"]).tolist())
    with pytest.raises(UserError, match=r"no train-split image of normal \(hospital\).*come from: adults, children"):
        train_gan(tiny_config(tmp_path, "train.steps=1", "train.domain_a_sources=[hospital]"), data,
                  tmp_path / "refused", device="cpu")
    assert not (tmp_path / "refused" / "gan").exists()  # a refused run leaves no run folder


@pytest.mark.slow
def test_cli_chain_with_a_trained_segmenter(lung_run, lung_data, tmp_path):
    """gan-train with data.lungseg_run, synthesize and gan-eval from the command line, as a user runs them."""
    common = ["--data", str(lung_data), "--out", str(tmp_path / "runs"), "--device", "cpu"]
    sets = [f"data.cache_dir={tmp_path / 'cache'}", "data.size=32", "model.ngf=4", "model.ndf=4", "model.n_blocks=1",
            "model.n_layers_d=2", "train.pool_size=2", "train.steps=3", "train.log_every=1", "train.tensorboard=false",
            "train.lung_constraint=composite", f"data.lungseg_run={lung_run.run_dir}"]

    def run(*args):
        done = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True,
                              env={"OMP_NUM_THREADS": "1", "PATH": ""}, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    run("gan-train", *common, *[x for s in sets for x in ("--set", s)])
    run("synthesize", *common, "--n", "4")
    [manifest] = (tmp_path / "runs" / "synthetic").glob("*/manifest.csv")
    assert len(manifest.read_text().splitlines()) == 5 and ",lung_segmenter_sha256" in manifest.read_text()
    printed = run("gan-eval", *common, "--split", "val").stdout
    assert "SSIM" in printed and "Changes concentrate in the lungs" in printed
    [report] = (tmp_path / "runs" / "gan").glob("*/gan-eval-step3.json")
    assert {report.with_suffix(s).exists() for s in (".md", ".png", ".pdf")} == {True}
    assert_self_contained_report(report.with_suffix(".html"), report.with_suffix(".md"), ["gan-eval-step3.png"])
    diagnostics = json.loads(report.read_text())["diagnostics"]
    assert diagnostics["lung_change"]["value"] > 1 and {"probes", "copies", "checkerboard"} <= set(diagnostics)
