"""The split belongs to the run: both trainers write split.csv; evaluate tests a run on its own split
(found by content) whatever was added to the data since, refuses when a test image is gone, checks
external test sets for training images and reports each in its own folder; classify-train --synthetic
refuses images of non-training patients; synthesize refuses data other than the GAN's."""
import csv
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from augment.data import file_sha256, load_dataset
from augment.phantoms import write_phantoms
from augment.runsplit import read_split
from classifier.config import EvalConfig
from classifier.evaluate import evaluate
from classifier.train import Trainer, train
from conftest import tiny_classifier_config
from cyclegan import GanConfig, synthesize, train_gan
from foundation.checkpoints import load_checkpoint
from foundation.config import load_config
from foundation.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = EvalConfig(bootstrap=0)


def tiny_cfg(tmp):
    return tiny_classifier_config(tmp, "train.epochs=1", "data.split_fractions=[0.5,0.25,0.25]")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(data, run, cfg)``: 12 phantoms per class (no split column: the split is made at load) and a
    one-epoch classifier run on them."""
    tmp = tmp_path_factory.mktemp("runsplit")
    data = write_phantoms(tmp / "data", 12, size=32, seed=0)
    cfg = tiny_cfg(tmp)
    torch.set_num_threads(1)
    return data, train(cfg, data, tmp / "runs", device="cpu", quiet=True), cfg


def rows_of(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def add_phantoms(data, seed, n=6):
    """Add ``n`` new phantoms per class (new patients) to ``data`` and its manifest."""
    extra = write_phantoms(data / f"added{seed}", n, size=32, seed=seed)
    rows = rows_of(data / "manifest.csv")
    for r in rows_of(extra / "manifest.csv"):
        rows.append({**r, "path": f"added{seed}/{r['path']}", "group_id": f"added{seed}-{r['group_id']}"})
    write_rows(data / "manifest.csv", rows)


def evaluated(run_eval):
    return [(r["path"], r["sha256"]) for r in rows_of(run_eval / "images.csv")]


def test_classify_train_writes_its_split_and_best_pt_its_data(trained):
    data, run, cfg = trained
    ds = load_dataset(data, cfg.data, quiet=True)
    rows = read_split(run / "split.csv")
    assert sorted((r["path"], r["label"], r["split"], r["group_id"], r["sha256"], r["origin"]) for r in rows) == sorted(
        (str((data / p).resolve()), ds.classes[y], s, g, file_sha256(data / p), "data")
        for p, y, s, g in zip(ds.paths, ds.labels.tolist(), ds.splits, ds.groups))
    assert load_checkpoint(run / "best.pt")["data_fingerprint"] == ds.fingerprint
    # split.csv is a manifest: it gives back the run's images and splits
    again = load_dataset(run / "split.csv", cfg.data, quiet=True)
    assert sorted(zip(again.hashes, again.splits)) == sorted(zip(ds.hashes, ds.splits))


@pytest.mark.slow
def test_added_images_never_enter_the_evaluated_set(trained, tmp_path, capsys):
    data, run, cfg = trained
    copy = shutil.copytree(data, tmp_path / "data")
    before = evaluate(copy, run, cfg=QUICK, device="cpu", quiet=True)
    first = evaluated(run / "eval")
    run_test = [r["sha256"] for r in read_split(run / "split.csv") if r["split"] == "test"]
    assert sorted(h for _, h in first) == sorted(run_test)

    test_hashes = lambda ds: {h for h, s in zip(ds.hashes, ds.splits) if s == "test"}  # noqa: E731
    old_test = test_hashes(load_dataset(copy, cfg.data, quiet=True))
    add_phantoms(copy, seed=5)
    assert test_hashes(load_dataset(copy, cfg.data, quiet=True)) != old_test  # the data's own split moved
    after = evaluate(copy, run, cfg=QUICK, device="cpu")
    assert evaluated(run / "eval") == first and after["n"] == before["n"] == len(first)
    assert "18 image(s) new to run" in capsys.readouterr().err


@pytest.mark.slow
def test_a_gone_or_altered_test_image_is_a_one_line_refusal(trained, tmp_path, capsys):
    data, run, cfg = trained
    copy = shutil.copytree(data, tmp_path / "mine")
    tests = [r for r in read_split(run / "split.csv") if r["split"] == "test"]
    rel = [str(Path(r["path"]).relative_to(data.resolve())) for r in tests[:2]]
    (copy / rel[0]).unlink()
    Image.new("L", (32, 32), 7).save(copy / rel[1])  # same name, other content
    add_phantoms(copy, seed=8, n=1)  # with the altered image, 4 images are new to the run
    refusal = rf"2 of its {len(tests)} test images .* gone or altered.*, 4 image\(s\) new"
    with pytest.raises(UserError, match=refusal) as e:
        evaluate(copy, run, cfg=QUICK, device="cpu", quiet=True)
    assert "\n" not in str(e.value) and rel[0] in str(e.value) and "--split-from-data" in str(e.value)

    m = evaluate(copy, run, cfg=QUICK, device="cpu", quiet=True, split_from_data=True)
    assert (run / "eval" / "mine-test" / "metrics.json").is_file() and m["split"] == "test"
    assert "current test split" in capsys.readouterr().err


def test_an_external_set_holding_training_images_is_refused(trained, tmp_path):
    data, run, cfg = trained
    ext = write_phantoms(tmp_path / "leaky", 4, size=32, seed=9)
    trained_rows = [r for r in read_split(run / "split.csv") if r["split"] == "train"][:2]
    rows = rows_of(ext / "manifest.csv")
    for i, r in enumerate(trained_rows):
        shutil.copy(r["path"], ext / r["label"] / f"copy{i}.png")
        rows.append({"path": f"{r['label']}/copy{i}.png", "label": r["label"], "group_id": f"c{i}", "source": "x"})
    write_rows(ext / "manifest.csv", rows)
    with pytest.raises(UserError, match=r"2 image\(s\) are training or validation images") as e:
        evaluate(ext, run, cfg=QUICK, device="cpu", quiet=True)
    assert "\n" not in str(e.value) and "copy0.png" in str(e.value)
    assert not (run / "eval" / "leaky-all").exists()


@pytest.mark.slow
def test_external_sets_are_reported_whole_each_in_its_own_folder(trained, tmp_path):
    data, run, cfg = trained
    evaluate(data, run, cfg=QUICK, device="cpu", quiet=True)
    own = (run / "eval" / "images.csv").read_bytes()
    site = write_phantoms(tmp_path / "site-a", 4, size=32, seed=11)
    m = evaluate(site, run, cfg=QUICK, device="cpu", quiet=True)
    report = run / "eval" / "site-a-all"
    assert m["n"] == 12 and m["split"] == "all" and len(evaluated(report)) == 12
    assert (report / "metrics.json").is_file() and (run / "eval" / "images.csv").read_bytes() == own

    # a manifest with a split column: only its test rows, in a folder named after the manifest
    rows = rows_of(site / "manifest.csv")
    for i, r in enumerate(rows):
        r["split"] = "test" if i % 3 == 0 else "train"
    write_rows(site / "site-b.csv", rows)
    m = evaluate(site / "site-b.csv", run, cfg=QUICK, device="cpu", quiet=True)
    assert m["split"] == "test" and m["n"] == 4 and len(evaluated(run / "eval" / "site-b-test")) == 4

    # another set of the same name does not replace the earlier report
    kept = (report / "images.csv").read_bytes()
    other = write_phantoms(tmp_path / "elsewhere" / "site-a", 3, size=32, seed=12)
    with pytest.raises(UserError, match="--overwrite"):
        evaluate(other, run, cfg=QUICK, device="cpu", quiet=True)
    assert (report / "images.csv").read_bytes() == kept
    evaluate(other, run, cfg=QUICK, device="cpu", quiet=True, overwrite=True)
    assert len(evaluated(report)) == 9


def test_classify_train_refuses_synthetic_images_of_validation_patients(trained, tmp_path, capsys):
    data, _, cfg = trained
    ds = load_dataset(data, cfg.data, quiet=True)
    train_group = next(g for g, s in zip(ds.groups, ds.splits) if s == "train")
    val_group = next(g for g, s in zip(ds.groups, ds.splits) if s == "val")
    syn = write_phantoms(tmp_path / "syn", 4, size=32, seed=3, classes=("covid",))
    rows = rows_of(syn / "manifest.csv")
    for i, r in enumerate(rows):
        r["group_id"] = val_group if i < 2 else train_group
    write_rows(syn / "manifest.csv", rows)
    trainer = Trainer(cfg, data, tmp_path / "runs", synthetic=syn, device="cpu", quiet=True)
    assert trainer.n_synthetic == 2
    assert "refused 2 synthetic image(s)" in capsys.readouterr().err
    listed = [r for r in read_split(trainer.run_dir / "split.csv") if r["origin"] == "synthetic"]
    assert sorted(r["path"] for r in listed) == sorted(str((syn / r["path"]).resolve()) for r in rows[2:])
    assert {r["split"] for r in listed} == {"train"}


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gan")
    data = write_phantoms(tmp / "data", 8, size=32, seed=0)
    cfg = load_config(GanConfig, None, [
        "data.size=32", f"data.cache_dir={tmp / 'cache'}", "model.ngf=8", "model.ndf=8", "model.n_blocks=1",
        "model.n_layers_d=2", "train.steps=1", "train.tensorboard=false", "synth.batch_size=4"])
    torch.set_num_threads(1)
    return data, train_gan(cfg, data, tmp / "runs", device="cpu").run_dir, cfg


def test_gan_train_writes_its_split(gan_run):
    data, run, cfg = gan_run
    ds = load_dataset(data, cfg.data, quiet=True)
    rows = read_split(run / "split.csv")
    assert sorted((r["sha256"], r["split"], r["label"]) for r in rows) == sorted(
        (h, s, ds.classes[y]) for h, s, y in zip(ds.hashes, ds.splits, ds.labels.tolist()))


def test_synthesize_refuses_data_other_than_the_gans(gan_run, tmp_path):
    data, run, _ = gan_run
    moved = shutil.copytree(data, tmp_path / "moved")  # the same images elsewhere are the same data
    synthesize(2, moved, tmp_path, checkpoint=run, dest=tmp_path / "ok", device="cpu")
    add_phantoms(moved, seed=6, n=2)
    with pytest.raises(UserError, match=r"not the data GAN checkpoint .*checkpoint\.pt.*6 added.*--data") as e:
        synthesize(2, moved, tmp_path, checkpoint=run, dest=tmp_path / "no", device="cpu")
    assert "\n" not in str(e.value) and not (tmp_path / "no").exists()
