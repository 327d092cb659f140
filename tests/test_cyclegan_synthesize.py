"""synthesize and gan-eval: manifest, determinism, overwrite refusal, latest-run pick-up, metrics, CLI."""
import csv
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import cyclegan.checkpoint
from augment.data import file_sha256, load_dataset
from augment.phantoms import write_phantoms
from cyclegan import GanConfig, evaluate_gan, measure_translation, synthesize, train_gan
from cyclegan.checkpoint import load_generator_ab
from cyclegan.inference import translate
from cyclegan.metrics import frechet_distance, kernel_inception_distance, ssim_pairs
from cyclegan.networks import Generators, ResnetGenerator
from cyclegan.synthesize import MANIFEST_COLUMNS
from foundation.checkpoints import load_checkpoint, save_checkpoint
from foundation.config import load_config
from foundation.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    """A GAN trained 2 steps on 32² phantoms: ``(data, out, run_dir, cfg)``."""
    tmp = tmp_path_factory.mktemp("gan")
    data = write_phantoms(tmp / "phantoms", 12, 32, seed=0)
    cfg = load_config(GanConfig, None, [
        "data.size=32", f"data.cache_dir={tmp / 'cache'}", "model.ngf=8", "model.ndf=8", "model.n_blocks=1",
        "model.n_layers_d=2", "train.steps=2", "train.tensorboard=false", "synth.batch_size=4"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run = train_gan(cfg, data, tmp / "runs", device="cpu").run_dir
    torch.set_num_threads(threads)
    return data, tmp / "runs", run, cfg


def with_cancelled_biases(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` in the earlier layout: a random bias on every convolution an instance norm follows."""
    g = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and m.bias is None:
            m.bias = torch.nn.Parameter(torch.randn(m.out_channels, generator=g))
    return module


def earlier_layout(state: dict, cfg, layout: int) -> dict:
    """A checkpoint as an earlier gan-train wrote it. Layout 1: biases on the convolutions before
    instance norms (random here; they cancel out), LambdaLR schedulers, no layout stamp. Layout 0 also
    lacks per-process state and stored the classifier's augmentation keys."""
    generators = Generators(cfg.model)
    generators.load_state_dict(state["model"]["generators"])
    state = {k: v for k, v in state.items() if k != "layout"}
    state["model"] = {**state["model"], "generators": with_cancelled_biases(generators).state_dict(),
                      "sched_g": {"last_epoch": 2}, "sched_d": {"last_epoch": 2}}
    del state["model"]["step"]
    if layout == 0:
        del state["ranks"]
        state["config"] = {**state["config"], "augment": {"enabled": True, "crop_scale": [0.8, 1.0], "degrees": 10.0}}
    return state


@pytest.mark.parametrize("layout", [0, 1])
def test_checkpoint_of_an_earlier_layout_translates_the_same_but_does_not_resume(gan_run, tmp_path, layout):
    data, out, run, cfg = gan_run
    state = load_checkpoint(run / "checkpoint.pt")
    earlier = earlier_layout(state, cfg, layout)
    assert "ab.net.1.bias" in earlier["model"]["generators"] and "ab.net.1.bias" not in state["model"]["generators"]
    old = tmp_path / "old" / "checkpoint.pt"
    save_checkpoint(earlier, old)
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    now, _, _ = load_generator_ab(run / "checkpoint.pt", torch.device("cpu"))
    before, _, _ = load_generator_ab(old, torch.device("cpu"))
    torch.testing.assert_close(translate(before, x), translate(now, x), rtol=0, atol=1e-5)
    dest = synthesize(3, data, out, checkpoint=old, dest=tmp_path / "syn", device="cpu")
    assert len(read_manifest(dest)) == 3
    with pytest.raises(UserError, match=f"earlier gan-train \\(checkpoint layout {layout}, now 2\\).*start a new run"):
        train_gan(None, data, out, device="cpu", resume=old)


@pytest.mark.parametrize("flag", [False, True])
def test_checkpoint_naming_the_upsampling_by_the_earlier_flag_loads_the_same_network(gan_run, tmp_path, flag):
    """Before ``model.upsample`` a flag, ``model.subpixel_upsample``, chose between the two forms of the
    transposed convolutions; such checkpoints translate the same and still resume."""
    data, out, run, cfg = gan_run
    state = load_checkpoint(run / "checkpoint.pt")
    model = {k: v for k, v in state["config"]["model"].items() if k != "upsample"}
    state["config"] = {**state["config"], "model": {**model, "subpixel_upsample": flag}}
    old = tmp_path / "old" / "checkpoint.pt"
    save_checkpoint(state, old)
    _, resumed_cfg = cyclegan.checkpoint.read_gan_checkpoint(old, resume=True)
    assert resumed_cfg.model.upsample == ("subpixel" if flag else "transposed")
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    now, _, _ = load_generator_ab(run / "checkpoint.pt", torch.device("cpu"))
    before, _, _ = load_generator_ab(old, torch.device("cpu"))
    torch.testing.assert_close(translate(before, x), translate(now, x), rtol=0, atol=1e-5)


def read_manifest(dest):
    with open(dest / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def digests(dest, rows):
    return [hashlib.sha1((dest / r["path"]).read_bytes()).hexdigest() for r in rows]


def test_manifest_describes_training_pngs_of_the_source_patients(gan_run, tmp_path):
    data, out, run, cfg = gan_run
    dest = synthesize(5, data, out, checkpoint=run, dest=tmp_path / "syn", device="cpu", seed=7)
    rows = read_manifest(dest)
    assert list(rows[0]) == list(MANIFEST_COLUMNS) and len(rows) == 5
    ds = load_dataset(data, cfg.data, quiet=True)
    group_of = {str(ds.root / p): g for p, g in zip(ds.paths, ds.groups)}
    train_normals = {str(ds.root / ds.paths[i]) for i in ds.indices("train", "normal").tolist()}
    sha = file_sha256(run / "checkpoint.pt")
    for r in rows:
        assert (r["label"], r["split"], r["source"], r["seed"], r["checkpoint_sha256"]) == ("covid", "train", "synthetic", "7", sha)
        assert r["source_image"] in train_normals and r["group_id"] == group_of[r["source_image"]]
        img = Image.open(dest / r["path"])
        assert img.mode == "L" and img.size == (32, 32) and r["path"].startswith("covid/")
    assert len({r["source_image"] for r in rows}) == 5  # fewer than the sources: no repeats


def test_pngs_are_the_checkpoints_generator_applied_to_the_listed_sources(gan_run, tmp_path):
    """Reading only the generator's weights, copying through pinned memory and writing on a thread pool
    change no output: each PNG is the A→B generator of the full checkpoint applied to its source."""
    data, out, run, cfg = gan_run
    dest = synthesize(5, data, out, checkpoint=run, dest=tmp_path / "syn", device="cpu", batch_size=5)
    rows = read_manifest(dest)
    ds = load_dataset(data, cfg.data, quiet=True)
    position = {str(ds.root / p): i for i, p in enumerate(ds.paths)}
    sources = ds.images[[position[r["source_image"]] for r in rows]].float() / 255
    generator = ResnetGenerator(cfg.model.ngf, cfg.model.n_blocks)
    weights = load_checkpoint(run / "checkpoint.pt")["model"]["generators"]
    generator.load_state_dict({k[3:]: v for k, v in weights.items() if k.startswith("ab.")})
    with torch.no_grad():
        expected = ((generator(sources * 2 - 1) + 1) / 2).clamp(0, 1).mul(255).add(0.5).to(torch.uint8)
    got = torch.stack([torch.from_numpy(np.array(Image.open(dest / r["path"]))) for r in rows]).unsqueeze(1)
    assert torch.equal(got, expected)


def test_the_sha256_stored_with_the_checkpoint_is_used_and_one_without_is_hashed(gan_run, tmp_path, monkeypatch):
    data, out, run, cfg = gan_run
    stored = json.loads((run / "checkpoint.sha256.json").read_text())
    assert stored["sha256"] == file_sha256(run / "checkpoint.pt")

    def no_hashing(path):
        raise AssertionError(f"hashed {path}")
    monkeypatch.setattr(cyclegan.checkpoint, "file_sha256", no_hashing)
    dest = synthesize(2, data, out, checkpoint=run, dest=tmp_path / "stored", device="cpu")
    assert {r["checkpoint_sha256"] for r in read_manifest(dest)} == {stored["sha256"]}
    monkeypatch.undo()

    older = tmp_path / "older"  # a run saved before the sha256 was stored
    shutil.copytree(run, older)
    (older / "checkpoint.sha256.json").unlink()
    dest = synthesize(2, data, out, checkpoint=older, dest=tmp_path / "older-syn", device="cpu")
    assert {r["checkpoint_sha256"] for r in read_manifest(dest)} == {stored["sha256"]}

    replaced = tmp_path / "replaced"  # a checkpoint changed after its sha256 was stored: hashed anew
    shutil.copytree(run, replaced)
    state = load_checkpoint(replaced / "checkpoint.pt")
    save_checkpoint({**state, "step": 3}, replaced / "checkpoint.pt")
    dest = synthesize(2, data, out, checkpoint=replaced, dest=tmp_path / "replaced-syn", device="cpu")
    assert {r["checkpoint_sha256"] for r in read_manifest(dest)} == {file_sha256(replaced / "checkpoint.pt")}
    assert file_sha256(replaced / "checkpoint.pt") != stored["sha256"]


def test_same_seed_same_files_and_repeats_differ(gan_run, tmp_path):
    data, out, run, _ = gan_run
    n = 30  # more than the training normals, so sources repeat with augmentation
    a = synthesize(n, data, out, checkpoint=run, dest=tmp_path / "a", device="cpu", seed=1)
    b = synthesize(n, data, out, checkpoint=run, dest=tmp_path / "b", device="cpu", seed=1)
    c = synthesize(n, data, out, checkpoint=run, dest=tmp_path / "c", device="cpu", seed=2)
    rows = read_manifest(a)
    assert len({r["source_image"] for r in rows}) < n
    assert digests(a, rows) == digests(b, read_manifest(b))
    assert digests(a, rows) != digests(c, read_manifest(c))
    assert len(set(digests(a, rows))) == n  # every output differs


def test_refuses_to_overwrite_without_overwrite(gan_run, tmp_path):
    data, out, run, _ = gan_run
    dest = synthesize(6, data, out, checkpoint=run, dest=tmp_path / "syn", device="cpu")
    before = (dest / "manifest.csv").read_bytes()
    with pytest.raises(UserError, match="--overwrite"):
        synthesize(3, data, out, checkpoint=run, dest=dest, device="cpu", seed=5)
    assert (dest / "manifest.csv").read_bytes() == before
    synthesize(3, data, out, checkpoint=run, dest=dest, device="cpu", seed=5, overwrite=True)
    assert len(read_manifest(dest)) == 3 and len(list((dest / "covid").glob("*.png"))) == 3
    assert not list(dest.rglob(".*tmp"))  # no temporary files left behind


def test_default_checkpoint_is_the_latest_gan_run(gan_run, tmp_path):
    data, out, run, _ = gan_run
    dest = synthesize(2, data, out, device="cpu", overwrite=True)
    assert dest == out / "synthetic" / run.name
    with pytest.raises(UserError, match="gan-train"):
        synthesize(2, data, tmp_path / "empty", device="cpu")


def test_frechet_distance_and_kid_match_known_values():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4)) + 1.0
    shift = np.array([1.0, 0, 2, 0])
    assert frechet_distance(x, x) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(x, x + shift) == pytest.approx(5.0, rel=1e-6)
    # scaling by 2: ‖μ‖² + tr Σ + 4 tr Σ − 2 · 2 tr Σ = ‖μ‖² + tr Σ
    expected = (x.mean(0) ** 2).sum() + np.trace(np.cov(x, rowvar=False))
    assert frechet_distance(x, 2 * x) == pytest.approx(expected, rel=1e-6)
    assert np.isnan(frechet_distance(x[:1], x))  # one image has no covariance: no value, no crash
    same, _ = kernel_inception_distance(x[:250], x[250:], subsets=5, subset_size=200)
    moved, _ = kernel_inception_distance(x[:250], x[250:] + shift, subsets=5, subset_size=200)
    assert abs(same) < 0.05 < moved


def test_measures_use_the_given_features_and_classifier():
    torch.manual_seed(0)
    real = torch.rand(20, 1, 32, 32)
    mean_feature = lambda x: x.mean(dim=(2, 3))  # noqa: E731
    r = measure_translation(real, real.clone(), real, features=mean_feature, classify=lambda x: x.mean(dim=(1, 2, 3)) > 0.5)
    assert r["fd"] == pytest.approx(0, abs=1e-9) and r["ssim_mean"] == pytest.approx(1.0)
    assert r["share_called_b"] == pytest.approx((real.mean(dim=(1, 2, 3)) > 0.5).float().mean().item())
    dark = measure_translation(real, real * 0.3, real)  # fallback features
    assert dark["features"] == "intensity_texture_features" and dark["fd"] > 0.1 and dark["share_called_b"] is None


def test_ssim_is_wang_et_al_gaussian_11x11_window():
    """SSIM against a direct computation: an 11×11 Gaussian window (σ 1.5) where it fits, population
    covariances, C1 = 0.01², C2 = 0.03² (Wang et al. 2004)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 32, 32, generator=g, dtype=torch.float64)
    y = (0.7 * x + 0.3 * torch.rand(3, 1, 32, 32, generator=g, dtype=torch.float64)).clamp(0, 1)
    r = torch.arange(-5, 6, dtype=torch.float64)
    w = torch.exp(-r ** 2 / (2 * 1.5 ** 2))
    window = (w[:, None] * w[None, :] / w.sum() ** 2).view(1, 1, 11, 11)
    mean = lambda a: torch.nn.functional.conv2d(a, window)  # noqa: E731  (valid positions only)
    mx, my = mean(x), mean(y)
    vx, vy, cxy = mean(x * x) - mx ** 2, mean(y * y) - my ** 2, mean(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim_map = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    expected = ssim_map.mean(dim=(1, 2, 3)).numpy()
    np.testing.assert_allclose(ssim_pairs(x.float(), y.float()), expected, rtol=0, atol=2e-5)


def manifest_with_splits(data, cfg, rename: dict) -> tuple[list[dict], object]:
    """The phantom manifest with its resolved splits, renamed by ``rename``, written beside it."""
    rows = list(csv.DictReader(open(data / "manifest.csv")))
    for row, split in zip(rows, load_dataset(data, cfg.data, quiet=True).splits):  # the manifest's order
        row["split"] = rename.get(split, split)
    manifest = data / f"manifest_{'_'.join(f'{a}-{b}' for a, b in rename.items())}.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows, manifest


@pytest.mark.slow
def test_gan_eval_writes_json_and_prints_a_table(gan_run, capsys):
    data, out, run, cfg = gan_run
    result = evaluate_gan(data, out, device="cpu")
    saved = json.loads((run / "gan-eval-step2.json").read_text())
    assert saved["fd"] == pytest.approx(result["fd"]) and saved["n_translated"] > 0
    assert "Fréchet distance" in capsys.readouterr().out
    # data without a test split: the held-out val split is measured, and that is said
    rows, manifest = manifest_with_splits(data, cfg, {"test": "val"})
    result = evaluate_gan(manifest, out, run, device="cpu")
    assert result["split"] == "val" and "no test image" in capsys.readouterr().out
    assert result["n_translated"] == sum(r["split"] == "val" and r["label"] == "normal" for r in rows) > 0


@pytest.mark.slow
def test_gan_eval_measures_the_test_split_by_default(gan_run, tmp_path, capsys):
    data, out, run, cfg = gan_run
    rows, manifest = manifest_with_splits(data, cfg, {"val": "test"})  # every image the GAN never saw is test
    result = evaluate_gan(manifest, out, run, device="cpu")
    assert result["split"] == "test" and "no test image" not in capsys.readouterr().out
    assert result["n_translated"] == sum(r["split"] == "test" and r["label"] == "normal" for r in rows) > 0


def test_cli_gan_train_then_synthesize_picks_up_the_run(tmp_path):
    from cli import cli
    data = write_phantoms(tmp_path / "phantoms", 6, 32, seed=0)
    tiny = ["--set", "data.size=32", "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "model.ngf=8",
            "--set", "model.ndf=8", "--set", "model.n_blocks=1", "--set", "model.n_layers_d=2"]
    common = ["--data", str(data), "--out", str(tmp_path / "runs"), "--device", "cpu"]
    runner = CliRunner()
    result = runner.invoke(cli, ["gan-train", *common, *tiny, "--steps", "2"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["synthesize", *common, "--n", "4"])
    assert result.exit_code == 0, result.output
    [run] = (tmp_path / "runs" / "gan").iterdir()
    assert len(read_manifest(tmp_path / "runs" / "synthetic" / run.name)) == 4
    result = runner.invoke(cli, ["synthesize", *common, "--n", "4"])
    assert result.exit_code == 2 and "--overwrite" in result.output


def test_gan_eval_with_a_classifier_uses_its_features_and_its_covid_calls(gan_run, tmp_path):
    from classifier.config import ClassifierConfig
    from classifier.inference import classifier_probe, predict
    from classifier.train import train
    from cli import cli
    data, out, run, _ = gan_run
    clf_cfg = load_config(ClassifierConfig, None, [
        "data.size=32", f"data.cache_dir={tmp_path / 'cache'}", "model.backbone=shallow", "model.width=4",
        "model.input_size=32", "train.epochs=1", "train.tensorboard=false"])
    clf_run = train(clf_cfg, data, tmp_path / "clf", device="cpu", quiet=True)

    r = CliRunner().invoke(cli, ["gan-eval", "--data", str(data), "--out", str(out), "--device", "cpu",
                                 "--checkpoint", str(run), "--classifier", str(clf_run)])
    assert r.exit_code == 0, r.output
    saved = json.loads((run / "gan-eval-step2.json").read_text())
    assert saved["features"] == "classifier_penultimate_features" and 0 <= saved["share_called_b"] <= 1

    from classifier.checkpoint import load_classifier
    from classifier.model import feature_channels
    model, meta = load_classifier(clf_run / "best.pt", torch.device("cpu"))
    u8 = torch.randint(0, 256, (6, 1, 32, 32), dtype=torch.uint8)
    features, calls_covid = classifier_probe(model, 32, list(meta["classes"]), "covid")
    assert features(u8 / 255).shape == (6, feature_channels(model.backbone, 1, 32))
    probs = predict(model, u8, 32, torch.device("cpu"))
    assert torch.equal(calls_covid(u8 / 255), probs.argmax(1) == meta["classes"].index("covid"))
    with pytest.raises(UserError, match="not 'cat'"):
        classifier_probe(model, 32, list(meta["classes"]), "cat")
