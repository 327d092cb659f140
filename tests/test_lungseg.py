"""Lung segmentation: U-Net shapes, Dice/IoU, joint augmentation, bad pairs, training on phantom masks,
exact resume, and the masks and overlays ``lungseg`` writes."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import foundation.loop
import lungs.train
from augment.data import file_sha256, to_square
from augment.phantoms import write_phantoms
from augment.transforms import AugmentConfig, build_augment
from cli import INTERRUPTED, cli
from conftest import StopAfter, tiny_lungseg_config
from foundation.errors import UserError
from lungs import LungSegmenter
from lungs.config import LungDataConfig
from lungs.data import from_square, load_pairs
from lungs.metrics import dice_iou
from lungs.train import joint_augment, train_lungseg
from lungs.unet import UNet


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


# ---------------------------------------------------------------- model and measures
@pytest.mark.parametrize("size,depth", [(32, 3), (48, 4), (37, 4), (64, 2)])
def test_unet_keeps_the_input_size(size, depth):
    model = UNet(1, width=4, depth=depth)
    assert model(torch.rand(2, 1, size, size)).shape == (2, 1, size, size)


def test_dice_and_iou_by_hand():
    pred = torch.zeros(3, 1, 4, 4, dtype=torch.bool)
    target = torch.zeros_like(pred)
    pred[0, 0, 0, :4] = True                  # 4 pixels predicted
    target[0, 0, 0, 1:4] = target[0, 0, 1, 1:4] = True  # 6 true, 3 of them predicted
    target[1, 0, 2, 2] = True                 # image 1: nothing predicted; image 2: both empty
    dice, iou = dice_iou(pred, target)
    torch.testing.assert_close(dice, torch.tensor([2 * 3 / (4 + 6), 0.0, 1.0]))
    torch.testing.assert_close(iou, torch.tensor([3 / 7, 0.0, 1.0]))


def test_joint_augmentation_keeps_a_planted_square_under_its_mask():
    torch.manual_seed(0)
    images = torch.zeros(8, 1, 48, 48)
    images[:, :, 14:26, 20:34] = 1.0
    masks = (images > 0.5).float()
    augment = build_augment(AugmentConfig(degrees=25, translate=0.15, brightness=0, contrast=0,
                                          gamma=(1.0, 1.0)), 48)
    x, y = joint_augment(augment, images, masks)
    bright = x > 0.75
    assert not torch.equal(y, masks)  # the geometry did change
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    assert (bright & (y > 0)).sum() / bright.sum() > 0.97  # the square stays under its mask
    assert ((y > 0) & ~(x > 0.25)).sum() / (y > 0).sum() < 0.03  # and the mask does not leave it


@pytest.mark.parametrize("resize", ["pad", "crop"])
def test_a_mask_mapped_to_the_square_and_back_lands_where_it_was(resize):
    mask = np.zeros((60, 90), bool)
    mask[10:40, 30:55] = True  # inside the centre crop too
    square = to_square(mask.astype(np.uint8) * 255, 32, resize)
    back = from_square(square.astype(np.float32) / 255, mask.shape, resize) >= 0.5
    assert back.shape == mask.shape
    assert (back & mask).sum() / (back | mask).sum() > 0.85


# ---------------------------------------------------------------- bad input
def test_a_mask_of_another_size_names_both_files(tmp_path):
    image = save(tmp_path / "images" / "a.png", np.zeros((32, 40), np.uint8))
    mask = save(tmp_path / "masks" / "a.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(UserError, match="mask") as e:
        load_pairs(tmp_path, LungDataConfig(size=16, cache_dir=str(tmp_path / "cache")), quiet=True)
    assert str(mask) in str(e.value) and str(image) in str(e.value) and "\n" not in str(e.value)


def test_a_mask_that_is_not_binary_is_refused_but_0_1_and_jpeg_0_255_are_read(tmp_path):
    cfg = LungDataConfig(size=16, cache_dir=str(tmp_path / "cache"))
    save(tmp_path / "images" / "a.png", np.full((20, 20), 90, np.uint8))
    gray = np.zeros((20, 20), np.uint8)
    gray[5:15, 5:15] = 1
    save(tmp_path / "masks" / "a.png", gray)
    assert load_pairs(tmp_path, cfg, quiet=True).masks.sum() > 0  # 0/1 is binary
    gray[5:15, 10:15] = 2
    save(tmp_path / "masks" / "a.png", gray)
    with pytest.raises(UserError, match=r"masks/a.png: not a binary mask \(3 gray values"):
        load_pairs(tmp_path, cfg, quiet=True)
    (tmp_path / "masks" / "a.png").unlink()
    save(tmp_path / "masks" / "a.jpg", np.where(gray > 0, 255, 0).astype(np.uint8))  # JPEG: near values
    assert load_pairs(tmp_path, cfg, quiet=True).masks.sum() > 0


def test_a_missing_partner_is_a_one_line_error(tmp_path):
    save(tmp_path / "images" / "a.png", np.zeros((20, 20), np.uint8))
    save(tmp_path / "images" / "b.png", np.zeros((20, 20), np.uint8))
    save(tmp_path / "masks" / "a.png", np.zeros((20, 20), np.uint8))
    cfg = LungDataConfig(size=16, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(UserError, match=r"images/b.png: no partner in .*masks/ with the name b"):
        load_pairs(tmp_path, cfg, quiet=True)
    (tmp_path / "manifest.csv").write_text("image,mask\nimages/a.png,masks/a.png\nimages/b.png,masks/b.png\n")
    with pytest.raises(UserError, match=r"line 3: masks/b.png \(partner of images/b.png\) does not exist"):
        load_pairs(tmp_path, cfg, quiet=True)


# ---------------------------------------------------------------- phantoms and training
def test_phantoms_with_masks_keep_the_images_and_give_a_lung_manifest(tmp_path, lung_data):
    plain = write_phantoms(tmp_path / "plain", 12, 32, seed=2)
    for p in plain.rglob("*.png"):
        assert p.read_bytes() == (lung_data / p.relative_to(plain)).read_bytes()
    rows = list(csv.DictReader(open(lung_data / "manifest.csv")))
    assert len(rows) == 36 and all((lung_data / r["mask"]).is_file() for r in rows)
    ds = load_pairs(lung_data, LungDataConfig(size=32, cache_dir=str(tmp_path / "cache")), quiet=True)
    share = ds.masks.float().mean().item()
    assert 0.08 < share < 0.3  # two lung fields, not the whole film
    dark = ds.images[ds.masks].float().mean() < ds.images[~ds.masks].float().mean()
    assert dark  # lungs are the dark fields of the film
    assert {g for g, s in zip([p.group for p in ds.pairs], ds.splits) if s == "test"}.isdisjoint(
        {p.group for p, s in zip(ds.pairs, ds.splits) if s == "train"})


def test_the_pairs_fingerprint_follows_images_and_masks_not_their_paths_or_file_times(tmp_path, lung_data):
    cfg = LungDataConfig(size=32, cache_dir=str(tmp_path / "cache"))
    first = load_pairs(lung_data, cfg, quiet=True).fingerprint
    copy = Path(shutil.copytree(lung_data, tmp_path / "copy", copy_function=shutil.copy))  # new path, new times
    assert load_pairs(copy, cfg, quiet=True).fingerprint == first
    mask = copy / next(csv.DictReader(open(copy / "manifest.csv")))["mask"]
    Image.fromarray(np.zeros_like(np.asarray(Image.open(mask)))).save(mask)  # one mask emptied
    assert load_pairs(copy, cfg, quiet=True).fingerprint != first


def test_training_on_phantom_masks_beats_the_trivial_masks(lung_run, lung_data, tmp_path):
    metrics = json.loads((lung_run.run_dir / "metrics.json").read_text())
    assert metrics == lung_run.metrics and metrics["split"] == "test"
    ds = load_pairs(lung_data, LungDataConfig(size=32, cache_dir=str(tmp_path / "cache")), quiet=True)
    truth = ds.masks[ds.indices("test")]
    all_ones = dice_iou(torch.ones_like(truth), truth)[0].mean().item()
    result = metrics["per_source"]["all"]
    assert result["dice"] > max(all_ones, 0.0) + 0.35 and result["dice"] > 0.7
    lo, hi = result["dice_ci"]
    assert lo <= result["dice"] <= hi and result["n_groups"] < result["n"]
    for name in ("checkpoint.pt", "split.csv", "config.yaml", "run.json"):
        assert (lung_run.run_dir / name).is_file()


def test_interrupt_then_resume_equals_a_straight_run(lung_data, tmp_path, monkeypatch, one_thread, capsys):
    cfg = tiny_lungseg_config(tmp_path / "cache", epochs=3)
    straight = train_lungseg(cfg, lung_data, tmp_path / "a", device="cpu", seed=3, quiet=True)
    monkeypatch.setattr(foundation.loop, "GracefulStop", lambda: StopAfter(3))
    first = train_lungseg(cfg, lung_data, tmp_path / "b", device="cpu", seed=3, quiet=True)
    assert first.interrupted and first.step == 3 and first.metrics is None
    assert f"--resume {first.run_dir}" in capsys.readouterr().err
    monkeypatch.undo()
    old = shutil.copytree(first.run_dir, tmp_path / "old")
    state = torch.load(old / "checkpoint.pt", weights_only=True)
    del state["layout"]  # written before the one-warp augmentation: its draws would differ
    torch.save(state, old / "checkpoint.pt")
    with pytest.raises(UserError, match=r"earlier lungseg-train \(checkpoint layout 0, now 1\)"):
        train_lungseg(None, None, tmp_path / "b", device="cpu", resume=old, quiet=True)
    unrecorded = shutil.copytree(first.run_dir, tmp_path / "unrecorded")
    (unrecorded / "run.json").unlink()
    with pytest.raises(UserError, match="does not say which data the run was trained on; pass --data"):
        train_lungseg(None, None, tmp_path / "b", device="cpu", resume=unrecorded, quiet=True)
    resumed = train_lungseg(None, None, tmp_path / "b", device="cpu", resume=first.run_dir, quiet=True)  # run.json's data
    assert resumed.run_dir == first.run_dir and resumed.step == straight.step and not resumed.interrupted
    for name, weight in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], weight, rtol=0, atol=1e-6, msg=name)
    assert resumed.metrics == straight.metrics


def test_cli_stop_exits_130_and_lungseg_writes_masks_and_overlays(lung_run, lung_data, tmp_path, monkeypatch):
    monkeypatch.setattr(foundation.loop, "GracefulStop", lambda: StopAfter(3))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{size: 32, cache_dir: {tmp_path / 'cache'}}}\nmodel: {{width: 4, depth: 2}}\n")
    stopped = CliRunner().invoke(cli, ["lungseg-train", "--data", str(lung_data), "--config", str(cfg),
                                       "--out", str(tmp_path), "--device", "cpu"])
    assert stopped.exit_code == INTERRUPTED, stopped.output

    wide = save(tmp_path / "in" / "wide.png", np.asarray(Image.open(lung_data / "covid" / "covid_00000.png")
                                                        .resize((48, 32))))
    args = ["lungseg", "--checkpoint", str(lung_run.run_dir), str(wide), str(lung_data / "normal" / "normal_00003.png"),
            "--dest", str(tmp_path / "out"), "--device", "cpu"]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 0, done.output
    mask = np.asarray(Image.open(tmp_path / "out" / "mask" / "wide.png"))
    assert mask.shape == (32, 48) and set(np.unique(mask)) <= {0, 255} and 0.05 < (mask > 0).mean() < 0.5
    shown = np.asarray(Image.open(tmp_path / "out" / "overlay" / "wide.png"))
    assert shown.shape == (32, 48, 3) and (shown[..., 0] != shown[..., 1]).any()  # a coloured outline
    assert (tmp_path / "out" / "mask" / "normal_00003.png").is_file()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert CliRunner().invoke(cli, args + ["--overwrite"]).exit_code == 0
    whole = CliRunner().invoke(cli, ["lungseg", "--checkpoint", str(lung_run.run_dir), "--data", str(lung_data),
                                     "--dest", str(tmp_path / "all"), "--device", "cpu"])
    assert whole.exit_code == 0, whole.output
    listed = list(csv.DictReader(open(tmp_path / "all" / "masks.csv")))
    assert len(listed) == 36 and (tmp_path / "all" / "mask" / "pneumonia" / "pneumonia_00011.png").is_file()


def test_the_segmenter_in_memory_agrees_with_the_training_truth(lung_run, lung_data, tmp_path):
    ds = load_pairs(lung_data, LungDataConfig(size=32, cache_dir=str(tmp_path / "cache")), quiet=True)
    idx = ds.indices("test")
    segmenter = LungSegmenter(lung_run.run_dir, "cpu")
    assert segmenter.identity == file_sha256(lung_run.run_dir / "checkpoint.pt")
    masks = segmenter(ds.images[idx])
    assert masks.dtype == torch.bool and masks.shape == (len(idx), 1, 32, 32)
    assert dice_iou(masks, ds.masks[idx])[0].mean() > 0.7
    bigger = segmenter(torch.nn.functional.interpolate(ds.images[idx].float(), size=48).byte())
    assert bigger.shape == (len(idx), 1, 48, 48)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(lung_data, tmp_path, monkeypatch, one_thread):
    real, calls = lungs.train.dice_bce_loss, []

    def poisoned(logits, target):
        calls.append(1)
        losses = real(logits, target)
        return losses * float("nan") if len(calls) == 5 else losses  # step 5, in the second epoch

    monkeypatch.setattr(lungs.train, "dice_bce_loss", poisoned)
    with pytest.raises(UserError, match=r"NaN or infinite at step 5; .*\(step 3\), is kept"):
        train_lungseg(tiny_lungseg_config(tmp_path / "cache", epochs=3), lung_data, tmp_path, device="cpu", quiet=True)
    [run] = (tmp_path / "lungseg").iterdir()
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 3
