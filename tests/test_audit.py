"""The shortcut audit: CAM mass and peak inside the lungs, lung area, patient-level intervals, the source probe
and its patient folds, the lungs-hidden controls through a model with a known answer, and ``audit`` end to
end on phantoms with two sources."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

from audit.checks import accuracy_summary, cam_mass_in_lungs, lung_area, mean_with_interval, peak_in_lungs, source_probe
from audit.report import cam_sentence, hidden_sentence, source_sentence
from audit.run import classify_variants
from augment.phantoms import write_phantoms
from classifier.model import Classifier
from cli import cli
from conftest import assert_self_contained_report, tiny_classifier_config
from foundation.probes import fit_softmax_regression, group_folds, probe_predictions

CLASSES = ("covid", "normal", "pneumonia")


# ---------------------------------------------------------------- check 1 on constructed maps
def test_cam_mass_peak_and_lung_area_have_the_known_answers():
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[:, :, :2] = True                          # left half: lungs, area 1/2
    maps = torch.zeros(3, 4, 4)
    maps[0, 0, 0], maps[0, 0, 3] = 3.0, 1.0          # 3 of 4 inside, peak inside
    maps[1, 1, 1], maps[1, 2, 2] = 1.0, 2.0          # 1 of 3 inside, peak outside
    np.testing.assert_allclose(cam_mass_in_lungs(maps, masks)[:2], [0.75, 1 / 3])
    np.testing.assert_array_equal(peak_in_lungs(maps, masks)[:2], [1.0, 0.0])
    assert np.isnan(cam_mass_in_lungs(maps, masks)[2]) and np.isnan(peak_in_lungs(maps, masks)[2])  # no mass
    np.testing.assert_allclose(lung_area(masks), 0.5)
    uniform = torch.ones(3, 4, 4)  # a map that ignores anatomy lands in the lungs as much as they cover
    np.testing.assert_allclose(cam_mass_in_lungs(uniform, masks), lung_area(masks))
    with pytest.raises(ValueError, match="must both be"):
        cam_mass_in_lungs(maps, masks[:, :2])


def test_intervals_resample_patients_not_images():
    values = np.array([0.0] * 20 + [1.0] * 20)
    two_patients = ["a"] * 20 + ["b"] * 20
    by_patient = mean_with_interval(values, two_patients, 400, seed=0)
    by_image = mean_with_interval(values, list(range(40)), 400, seed=0)
    assert by_patient["value"] == 0.5 and by_patient["n_groups"] == 2
    assert by_patient["ci"] == [0.0, 1.0]  # two patients: the mean is 0, 1/2 or 1
    assert 0.3 < by_image["ci"][0] < 0.5 < by_image["ci"][1] < 0.7
    assert mean_with_interval([np.nan, 1.0], ["a", "b"], 0, 0) == {"value": 1.0, "ci": None, "n": 1, "n_groups": 1}


# ---------------------------------------------------------------- check 2: the source probe
def test_folds_keep_patients_together_and_spread_each_source():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), rng.integers(1, 5, 40))
    sources = np.where(groups % 4 == 0, "rare", "common")
    folds = group_folds(groups.tolist(), sources.tolist(), 5, seed=0)
    for g in np.unique(groups):
        assert len(set(folds[groups == g])) == 1
    for s in ("rare", "common"):
        per_fold = np.bincount(folds[sources == s], minlength=5)
        assert per_fold.min() > 0 and per_fold.max() - per_fold.min() <= 4


def test_softmax_regression_matches_scikit_learn():
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(90, 4))
    y = (x[:, 0] + 0.5 * rng.normal(size=90) > 0).astype(int) + (x[:, 1] > 1)
    w, b = fit_softmax_regression(torch.from_numpy(x), torch.from_numpy(y), 3, l2=2.0)
    ours = torch.softmax(torch.from_numpy(x) @ w + b, 1).numpy()
    theirs = linear_model.LogisticRegression(C=0.5, tol=1e-10, max_iter=10000).fit(x, y).predict_proba(x)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def _probe_data(informative: bool, n_patients: int = 40, seed: int = 0):
    """Two images per patient, sources 70/30 by patient, 8 noise features and, if ``informative``, one
    feature that tells the source."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_patients), 2)
    sources = np.where(rng.random(n_patients) < 0.7, "a", "b")[groups]
    x = rng.normal(size=(len(groups), 9))
    if informative:
        x[:, 0] += 4 * (sources == "b")
    return x, sources.tolist(), groups.tolist()


def test_the_probe_finds_an_informative_feature_and_not_noise():
    found = source_probe(*_probe_data(True), folds=5, rounds=200, seed=0)
    assert found["accuracy"]["value"] > 0.9 and found["accuracy_minus_majority"]["ci"][0] > 0
    assert found["majority_source"] == "a" and found["sources"]["a"] > found["sources"]["b"]
    noise = source_probe(*_probe_data(False), folds=5, rounds=200, seed=0)
    assert abs(noise["accuracy"]["value"] - noise["majority_rate"]["value"]) < 0.15
    assert noise["accuracy_minus_majority"]["ci"][0] < 0


def test_patient_folds_stop_the_probe_from_recognising_patients():
    """Each patient's images share a feature vector and sources are random per patient: a probe that may see
    a patient in training recognises the patient and so names the source; patient folds leave it guessing."""
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(30), 3)
    sources = rng.choice(["a", "b"], 30)[groups]
    x = rng.normal(size=(30, 20))[groups] + 0.01 * rng.normal(size=(90, 20))
    y = (sources == "b").astype(int)
    by_image = probe_predictions(x, y, np.arange(90) % 5, l2=0.1)
    assert (by_image == y).mean() > 0.9
    by_patient = source_probe(x, sources.tolist(), groups.tolist(), folds=5, rounds=100, seed=0)
    assert by_patient["accuracy"]["value"] < by_patient["majority_rate"]["value"] + 0.15


def test_the_probe_says_why_it_did_not_run():
    x, _, groups = _probe_data(True, n_patients=4)
    sources = ["a", "a", "b", "b"] * 2
    assert "one source (a)" in source_probe(x, ["a"] * len(x), groups, 5, 10, 0)["skipped"]
    assert "4 patients, fewer than the 5 folds" in source_probe(x, sources, groups, 5, 10, 0)["skipped"]


# ---------------------------------------------------------------- check 3: lungs hidden, on a known model
class SideReader(nn.Module):
    """Logits of class k: how close the mean of one image side (columns ``cols``) is to ``level[k]``."""

    def __init__(self, cols: slice, levels: torch.Tensor):
        super().__init__()
        self.cols, self.levels = cols, levels

    def forward(self, feats):
        return -100 * (feats[:, 0, :, self.cols].mean((1, 2))[:, None] - self.levels) ** 2


def test_hiding_the_lungs_leaves_chance_for_a_model_that_reads_them_and_full_accuracy_for_one_that_does_not():
    levels = torch.tensor([60.0, 140.0, 220.0])
    y = np.repeat(np.arange(3), 4)
    images = torch.full((12, 1, 8, 8), 100, dtype=torch.uint8)
    masks = torch.zeros(12, 1, 8, 8, dtype=torch.bool)
    masks[..., :4] = True                                        # lungs: the left half
    images[..., :4] = levels[y].to(torch.uint8)[:, None, None, None]   # the disease: in the lungs
    images[..., 4:] = levels[y].to(torch.uint8)[:, None, None, None]   # a shortcut: outside them
    for cols, hidden, kept in ((slice(0, 4), 1 / 3, 1.0), (slice(4, 8), 1.0, 1 / 3)):
        model = Classifier(nn.Identity(), SideReader(cols, levels / 255), input_size=8)
        model.set_normalisation(0.0, 1.0)
        probs, features = classify_variants(model, images, masks, 8, torch.device("cpu"), batch_size=5)
        predicted = {v: p.argmax(1).numpy() for v, p in probs.items()}
        acc = accuracy_summary(y, predicted, [str(i) for i in range(12)], rounds=50, seed=0)
        assert acc["plain"]["value"] == 1.0
        assert acc["hidden"]["value"] == pytest.approx(hidden) and acc["kept"]["value"] == pytest.approx(kept)
        assert acc["hidden_minus_plain"]["value"] == pytest.approx(hidden - 1)
        torch.testing.assert_close(features, images.float().div(255).mean((2, 3)))  # plain images' pooled map


def _mean(value, lo, hi):
    return {"value": value, "ci": [lo, hi], "n": 10, "n_groups": 5}


@pytest.mark.parametrize("hidden,kept,says", [
    ((0.8, 0.7, 0.9), (0.5, 0.3, 0.7), "uses something outside the lungs"),
    ((0.4, 0.2, 0.6), (0.9, 0.8, 1.0), "what it uses lies in the lungs"),
    ((0.4, 0.2, 0.6), (0.5, 0.3, 0.7), "says little about this model"),
])
def test_the_lungs_hidden_verdict_compares_the_interval_with_guessing(hidden, kept, says):
    h = {"plain": _mean(0.95, 0.9, 1.0), "hidden": _mean(*hidden), "kept": _mean(*kept),
         "kept_minus_plain": _mean(-0.1, -0.2, 0.0), "chance": 1 / 3, "majority_class": "normal", "majority_rate": 0.5}
    assert says in hidden_sentence(h)


@pytest.mark.parametrize("excess,says", [((0.2, 0.1, 0.3), "favour the lungs"), ((0.02, -0.05, 0.1), "no more than"),
                                         ((-0.2, -0.3, -0.1), "avoid the lungs")])
def test_the_cam_verdict_compares_the_mass_with_the_lung_area(excess, says):
    c = {"share": _mean(0.5, 0.4, 0.6), "area": _mean(0.3, 0.28, 0.32), "peak": _mean(0.6, 0.5, 0.7),
         "share_minus_area": _mean(*excess)}
    sentence = cam_sentence(c, "Grad-CAM")
    assert says in sentence and "50.0 % [40.0, 60.0] of the Grad-CAM mass" in sentence


# ---------------------------------------------------------------- audit end to end
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Phantoms with lung masks from two hospitals (alternate patients), a tiny classifier and a tiny lung
    segmenter trained on them."""
    from classifier.train import train
    from lungs import train_lungseg
    from lungs.config import LungDataConfig, LungEvalConfig, LungsegConfig, LungTrainConfig, UNetConfig
    tmp = tmp_path_factory.mktemp("audit")
    data = write_phantoms(tmp / "data", 16, size=32, seed=0, masks=True)
    with open(data / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["source"] = f"hospital-{'ab'[int(r['group_id'].split('-')[1]) % 2]}"
    with open(data / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = tiny_classifier_config(tmp, "data.split_fractions=[0.5,0.2,0.3]", "eval.bootstrap=50")
        classifier = train(cfg, data, tmp / "runs", device="cpu", quiet=True)
        lung_cfg = LungsegConfig(data=LungDataConfig(size=32, cache_dir=str(tmp / "cache")),
                                 model=UNetConfig(width=8, depth=3), eval=LungEvalConfig(bootstrap=20),
                                 train=LungTrainConfig(epochs=6, batch_size=8, lr=5e-3, tensorboard=False))
        lungs = train_lungseg(lung_cfg, data, tmp / "runs", device="cpu", quiet=True).run_dir
        yield classifier, lungs, tmp
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_audit_writes_the_four_checks_and_refuses_to_overwrite(runs):
    classifier, lungs, tmp = runs
    args = ["audit", "--checkpoint", str(classifier), "--lungs", str(lungs), "--device", "cpu", "--folds", "2",
            "--examples", "2", "--out", str(tmp / "runs")]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    dest = classifier / "audit"
    for name in ("audit.json", "audit.md", "images.csv", "cam_in_lungs.png", "cam_in_lungs.pdf", "examples.png",
                 "examples.pdf"):
        assert (dest / name).is_file(), name
    assert_self_contained_report(dest / "report.html", dest / "audit.md", ["cam_in_lungs.png", "examples.png"])
    result = json.loads((dest / "audit.json").read_text())
    test_rows = [r for r in csv.DictReader(open(classifier / "split.csv")) if r["split"] == "test"]
    assert result["split"] == "test" and result["n"] == len(test_rows) and result["method"] == "Grad-CAM++"
    assert set(result["per_source"]) == {"hospital-a", "hospital-b"}
    assert set(result["cam"]["per_class"]) == set(CLASSES)
    probe = result["source_probe"]["all"]
    assert probe["folds"] == 2 and 0 <= probe["accuracy"]["value"] <= 1 and len(probe["accuracy"]["ci"]) == 2
    hidden = result["lungs_hidden"]
    assert hidden["chance"] == pytest.approx(1 / 3) and hidden["plain"]["n"] == result["n"]
    assert 0 < result["cam"]["all"]["area"]["value"] < 1  # the segmenter found lungs
    assert set(result["sentences"]) == {"cam", "source_probe", "lungs_hidden", "per_source"}
    images = list(csv.DictReader(open(dest / "images.csv")))
    assert len(images) == result["n"] and {r["source"] for r in images} == {"hospital-a", "hospital-b"}
    report = (dest / "audit.md").read_text()
    assert all(s in report for s in result["sentences"].values())
    assert "CAM mass inside the lungs" in r.output and "accuracy, lungs hidden" in r.output

    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "--overwrite" in again.output and "Traceback" not in again.output
    again = CliRunner().invoke(cli, [*args, "--overwrite", "--method", "cam"])
    assert again.exit_code == 0, again.output
    assert json.loads((dest / "audit.json").read_text())["method"] == "CAM"


def test_another_test_set_is_audited_whole_in_its_own_folder(runs):
    classifier, lungs, tmp = runs
    other = write_phantoms(tmp / "other-hospital", 2, size=32, seed=7)
    r = CliRunner().invoke(cli, ["audit", "--checkpoint", str(classifier), "--lungs", str(lungs), "--data", str(other),
                                 "--device", "cpu", "--examples", "0", "--out", str(tmp / "runs")])
    assert r.exit_code == 0, r.output
    result = json.loads((classifier / "audit" / "other-hospital-all" / "audit.json").read_text())
    assert result["split"] == "all" and result["n"] == 6 and result["figures"] == ["cam_in_lungs"]
    assert "one source (phantom)" in result["source_probe"]["all"]["skipped"]


@pytest.mark.parametrize("which", ["missing", "classifier run"])
def test_a_bad_lungs_path_is_one_line(runs, which):
    classifier, _, tmp = runs
    lungs = tmp / "no-such-run" if which == "missing" else classifier
    r = CliRunner().invoke(cli, ["audit", "--checkpoint", str(classifier), "--lungs", str(lungs), "--device", "cpu",
                                 "--dest", str(tmp / "bad"), "--out", str(tmp / "runs")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.output.count("\n") == 1 and str(lungs) in r.output
    assert not (tmp / "bad").exists()


def test_check_4_ranks_only_sources_with_enough_patients():
    def source(patients, plain, hidden):
        return {"n": patients, "n_groups": patients,
                "accuracy": {v: {"value": x, "ci": [x - 0.1, x + 0.1]} for v, x in (("plain", plain), ("hidden", hidden))}}

    per_source = {"big-a": source(20, 0.9, 0.6), "big-b": source(15, 0.7, 0.5), "tiny": source(1, 1.0, 1.0)}
    text = source_sentence(per_source)
    assert "highest on big-a" in text and "lowest on big-b" in text and "tiny: fewer than 10 patients" in text
    assert "big-a is also the source classified best with the lungs hidden" in text
    assert "not ranked" in source_sentence({"big-a": per_source["big-a"], "tiny": per_source["tiny"]})
