"""The ablation's bookkeeping with stand-in model stages: hygiene, resumption, statistics, verdict."""
import csv
import json
import math
import shutil
from pathlib import Path

import pytest

from ablation.seeds import Stages, mean_interval, run_ablation, summarize, verdict
from augment.data import DataConfig, load_dataset
from augment.phantoms import write_phantoms
from foundation.errors import UserError


class FakeStages:
    """Records what each stage was given; classifier quality depends on the condition by ``effect``."""

    def __init__(self, cfg, effect):
        self.cfg, self.effect = cfg, effect
        self.gan_manifests, self.gan_seeds, self.synthesized, self.classifier_calls = [], [], [], []

    def train_gan(self, manifest, out, seed):
        self.gan_manifests.append(Path(manifest))
        self.gan_seeds.append(seed)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"gan{seed}.pt").write_bytes(b"stand-in")
        return out / f"gan{seed}.pt"

    def synthesize(self, checkpoint, manifest, dest, n, seed):
        self.synthesized.append((Path(checkpoint).name, dest.name, seed))
        ds = load_dataset(manifest, self.cfg, quiet=True)
        normal_train = ds.indices("train", "normal").tolist()
        (dest / "covid").mkdir(parents=True, exist_ok=True)
        rows = []
        for k in range(n):
            i = normal_train[k % len(normal_train)]
            shutil.copy(ds.root / ds.paths[i], dest / "covid" / f"s{k:04d}.png")
            rows.append({"path": f"covid/s{k:04d}.png", "label": "covid", "split": "train", "source": "synthetic",
                         "group_id": ds.groups[i], "source_image": ds.paths[i], "checkpoint_sha256": "0" * 64})
        with open(dest / "manifest.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return dest

    def train_classifier(self, manifest, out, seed, classic):
        self.classifier_calls.append((Path(manifest).name, seed, classic))
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest").write_text(str(manifest))
        return out

    def evaluate(self, run):
        manifest = Path((run / "manifest").read_text()).name
        seed = int(run.name.rsplit("seed", 1)[1])
        gain = self.effect if manifest.startswith("balanced") else 0.0
        noise = 0.01 * ((seed * 7) % 3 - 1)  # the same seed noise in each condition: paired
        acc = 0.8 + gain + noise
        return {"accuracy": acc, "sensitivity": {"covid": acc - 0.1}, "f1": {"covid": acc - 0.05}, "macro_auc": 0.9}

    def stages(self):
        return Stages(self.train_gan, self.synthesize, self.train_classifier, self.evaluate)


@pytest.fixture
def data(tmp_path):
    return write_phantoms(tmp_path / "real", 24, 32, seed=3), DataConfig(size=32, cache_dir=str(tmp_path / "cache"))


def test_gan_and_classifier_share_the_subsampled_minority_and_synthetic_stays_in_training(data, tmp_path):
    real, cfg = data
    fake = FakeStages(cfg, effect=0.05)
    run_ablation(real, tmp_path / "abl", fake.stages(), cfg, seeds=(0, 1), minority_fraction=0.5, log=lambda s: None)
    full = load_dataset(real, cfg, quiet=True)
    base = load_dataset(tmp_path / "abl" / "real.csv", cfg, quiet=True)
    full_covid_groups = {g for g in (full.groups[i] for i in full.indices("train", "covid").tolist())}
    kept_groups = {g for g in (base.groups[i] for i in base.indices("train", "covid").tolist())}
    assert len(kept_groups) == round(0.5 * len(full_covid_groups))
    assert fake.gan_manifests == [tmp_path / "abl" / "real.csv"]  # the GAN saw exactly that subset
    # validation and test are the full, untouched real splits
    assert len(base.indices("val")) == len(full.indices("val")) and len(base.indices("test")) == len(full.indices("test"))
    balanced = list(csv.DictReader(open(tmp_path / "abl" / "balanced.csv")))
    assert all(r["split"] == "train" for r in balanced if r["origin"] == "synthetic")
    # the train-on-synthetic manifest has no real covid training image, but all real val/test rows
    tstr = list(csv.DictReader(open(tmp_path / "abl" / "tstr.csv")))
    assert not [r for r in tstr if r["label"] == "covid" and r["split"] == "train" and r["origin"] == "real"]
    assert sum(r["split"] != "train" for r in tstr) == sum(r["split"] != "train" for r in balanced)


def test_finished_cells_are_not_rerun(data, tmp_path):
    real, cfg = data
    fake = FakeStages(cfg, effect=0.05)
    first = run_ablation(real, tmp_path / "abl", fake.stages(), cfg, seeds=(0, 1), log=lambda s: None)
    assert len(fake.classifier_calls) == 2 * 3 + 1
    (tmp_path / "abl" / "cells" / "classic-seed1.json").unlink()  # as if the run died in that cell
    again = FakeStages(cfg, effect=0.05)
    second = run_ablation(real, tmp_path / "abl", again.stages(), cfg, seeds=(0, 1), log=lambda s: None)
    assert again.classifier_calls == [("real.csv", 1, True)]
    assert again.gan_manifests == []  # the GAN and the synthetic set are kept too
    assert first["synthetic_minus_classic"] == second["synthetic_minus_classic"]
    with pytest.raises(UserError, match="backbone differ"):  # another experiment never reuses these cells
        run_ablation(real, tmp_path / "abl", again.stages(), cfg, seeds=(0, 1), log=lambda s: None,
                     settings={"backbone": "vgg16"})


@pytest.mark.parametrize("effect,word", [(0.05, "accuracy rose by 0.050"), (-0.05, "accuracy fell by 0.050"),
                                         (0.0, "accuracy showed no measurable change")])
def test_verdict_follows_the_paired_interval(data, tmp_path, effect, word):
    real, cfg = data
    summary = run_ablation(real, tmp_path / "abl", FakeStages(cfg, effect).stages(), cfg, seeds=(0, 1, 2),
                           log=lambda s: None)
    assert word in summary["verdict"] and "covid sensitivity" in summary["verdict"] and "macro AUC" in summary["verdict"]
    assert summary["synthetic_minus_classic"]["accuracy"]["mean"] == pytest.approx(effect)
    table = (tmp_path / "abl" / "table.md").read_text()
    assert "synthetic − classic" in table and word in table


def test_verdict_names_three_metrics_with_intervals_and_refuses_an_interval_below_three_seeds():
    diff = {"accuracy": {"mean": 0.05, "low": 0.03, "high": 0.07},
            "minority_sensitivity": {"mean": -0.02, "low": -0.03, "high": -0.01},
            "macro_auc": {"mean": 0.001, "low": -0.01, "high": 0.012}}
    text = verdict(diff, 3, "covid")
    assert "over 3 seeds" in text
    assert "accuracy rose by 0.050 (95 % CI +0.030 to +0.070)" in text
    assert "covid sensitivity fell by 0.020 (95 % CI -0.030 to -0.010)" in text
    assert "macro AUC showed no measurable change (+0.001, 95 % CI -0.010 to +0.012" in text
    few = {k: {"mean": v["mean"], "low": None, "high": None} for k, v in diff.items()}
    text = verdict(few, 2, "covid")
    assert "uninformative" in text and "at least 3 seeds" in text and "CI" not in text
    assert "accuracy +0.050, covid sensitivity -0.020, macro AUC +0.001" in text
    assert "no interval" in verdict(few, 1, "covid")


def test_two_seeds_print_no_interval(data, tmp_path):
    real, cfg = data
    summary = run_ablation(real, tmp_path / "abl", FakeStages(cfg, 0.05).stages(), cfg, seeds=(0, 1), log=lambda s: None)
    assert summary["synthetic_minus_classic"]["accuracy"]["low"] is None and "uninformative" in summary["verdict"]
    table = (tmp_path / "abl" / "table.md").read_text()
    assert "+0.050 (no interval: fewer than 3 seeds)" in table and "uninformative" in table
    json.loads((tmp_path / "abl" / "summary.json").read_text(), parse_constant=pytest.fail)  # strict JSON


def test_gan_per_seed_trains_one_gan_and_synthetic_set_per_seed(data, tmp_path):
    real, cfg = data
    fake = FakeStages(cfg, effect=0.05)
    run = dict(seeds=(3, 4), minority_fraction=0.5, log=lambda s: None)  # half the covid: synthetic images join
    run_ablation(real, tmp_path / "abl", fake.stages(), cfg, gan_per_seed=True, **run)
    assert fake.gan_seeds == [3, 4]
    assert fake.synthesized == [("gan3.pt", "synthetic-seed3", 3), ("gan4.pt", "synthetic-seed4", 4)]
    assert ("balanced-seed3.csv", 3, True) in fake.classifier_calls and ("balanced-seed4.csv", 4, True) in fake.classifier_calls
    assert ("tstr-seed3.csv", 3, True) in fake.classifier_calls  # tstr on the first seed's synthetic set
    for seed in (3, 4):
        rows = list(csv.DictReader(open(tmp_path / "abl" / f"balanced-seed{seed}.csv")))
        assert any(f"synthetic-seed{seed}" in r["path"] for r in rows if r["origin"] == "synthetic")
    (tmp_path / "abl" / "cells" / "synthetic-seed4.json").unlink()
    again = FakeStages(cfg, effect=0.05)
    run_ablation(real, tmp_path / "abl", again.stages(), cfg, gan_per_seed=True, **run)
    assert again.gan_seeds == [] and again.classifier_calls == [("balanced-seed4.csv", 4, True)]
    with pytest.raises(UserError, match="gan_per_seed differ"):  # a folder of the other mode is refused
        run_ablation(real, tmp_path / "abl", again.stages(), cfg, **run)


def test_mean_interval_on_a_known_case():
    m, lo, hi = mean_interval([1.0, 2.0, 3.0])  # sd 1, n 3, t(0.975, 2) = 4.303
    assert m == 2.0
    assert hi - m == pytest.approx(4.303 / math.sqrt(3), rel=1e-6) and m - lo == pytest.approx(hi - m)
    assert mean_interval([0.5, 0.7])[1:] == (None, None)  # t with 1 degree of freedom: ±12.7 sd, no use


def test_summary_pairs_by_seed():
    # seed noise is large, but the synthetic − classic difference is the same in every seed: a tight interval
    cells = {}
    for s, base in zip((0, 1, 2), (0.6, 0.8, 0.7)):
        for cond, gain in (("real", -0.1), ("classic", 0.0), ("synthetic", 0.02)):
            v = base + gain
            cells[(cond, s)] = {"accuracy": v, "minority_sensitivity": v, "minority_f1": v, "macro_auc": v}
    summary = summarize(cells, (0, 1, 2))
    d = summary["synthetic_minus_classic"]["accuracy"]
    assert d["mean"] == pytest.approx(0.02) and d["high"] - d["low"] < 1e-9
    assert summary["conditions"]["classic"]["accuracy"]["sd"] == pytest.approx(0.1)
    assert "accuracy rose by 0.020" in summary["verdict"]


def cli_ablation_args(tmp_path, seeds: int, gan_steps: int) -> list[str]:
    """``ablation`` on 32² phantoms with a shallow CNN and a tiny CycleGAN, into ``tmp_path / "abl"``."""
    data = write_phantoms(tmp_path / "data", {"covid": 8, "normal": 16, "pneumonia": 16}, 32, seed=0)
    return ["ablation", "--data", str(data), "--out", str(tmp_path / "runs"), "--device", "cpu", "--seeds", str(seeds),
            "--dest", str(tmp_path / "abl"), "--backbone", "shallow", *[f"--set={s}" for s in (
                "data.size=32", f"data.cache_dir={tmp_path / 'cache'}", "model.width=4", "model.input_size=32",
                "train.epochs=1", "train.tensorboard=false", "eval.bootstrap=10")],
            *[f"--gan-set={s}" for s in ("data.size=32", f"data.cache_dir={tmp_path / 'cache'}", "model.ngf=4",
                                         "model.ndf=4", "model.n_blocks=1", "model.n_layers_d=2",
                                         f"train.steps={gan_steps}", "train.tensorboard=false")]]


@pytest.mark.slow
def test_cli_ablation_runs_every_stage_and_resumes(tmp_path):
    from click.testing import CliRunner

    from cli import cli
    args, dest = cli_ablation_args(tmp_path, seeds=2, gan_steps=2), tmp_path / "abl"
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    summary = json.loads((dest / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and set(summary["conditions"]) == {"real", "classic", "synthetic"}
    assert summary["gan_quality"]["features"] == "classifier_penultimate_features"
    assert list((dest / "gan").glob("*/checkpoint.pt")) and "synthetic − classic" in (dest / "table.md").read_text()

    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0 and r.output.count("done earlier, kept") == 7, r.output
    r = CliRunner().invoke(cli, [*args, "--gan-per-seed"])
    assert r.exit_code == 2 and "gan_per_seed differ" in r.output
    r = CliRunner().invoke(cli, [*args, "--policy", "count:3"])
    assert r.exit_code == 2 and "policy differ" in r.output
    r = CliRunner().invoke(cli, [*args, "--set", "train.epochs=2"])
    assert r.exit_code == 2 and "classifier_config differ" in r.output


@pytest.mark.slow
def test_cli_ablation_resumes_a_stopped_gan_and_a_stopped_classifier_in_their_own_runs(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import foundation.loop
    from classifier.train import Trainer
    from cli import INTERRUPTED, cli
    from conftest import StopAfter, sigint_at_call
    from foundation.checkpoints import load_checkpoint
    args, dest = cli_ablation_args(tmp_path, seeds=1, gan_steps=6), tmp_path / "abl"
    monkeypatch.setattr(foundation.loop, "GracefulStop", lambda: StopAfter(3))
    assert CliRunner().invoke(cli, args).exit_code == INTERRUPTED
    [gan] = (dest / "gan").iterdir()
    assert load_checkpoint(gan / "checkpoint.pt")["step"] == 3 and not (dest / "gan.json").exists()
    monkeypatch.undo()
    step = sigint_at_call(monkeypatch, Trainer, "train_step", 1)
    assert CliRunner().invoke(cli, args).exit_code == INTERRUPTED  # the GAN finishes, the first cell stops
    [cell] = (dest / "runs" / "real-seed0" / "classifier").iterdir()
    assert (cell / "last.pt").exists() and not (cell / "best.pt").exists()
    monkeypatch.setattr(Trainer, "train_step", step)
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert list((dest / "gan").iterdir()) == [gan] and load_checkpoint(gan / "checkpoint.pt")["step"] == 6
    assert json.loads((dest / "gan.json").read_text())["checkpoint"] == str(gan)
    assert list((dest / "runs" / "real-seed0" / "classifier").iterdir()) == [cell] and (cell / "best.pt").exists()
