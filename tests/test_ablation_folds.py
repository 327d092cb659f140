"""The cross-validated ablation (``ablation --folds``) on phantoms from two hospitals: its folds and parts, the
fold's CycleGANs (trained on the fold's training patients only), the placebo films, one out-of-fold prediction
per image and arm, the paired intervals over patients, the decision rules, and resuming."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from ablation.crossval import ARMS, parse_arms
from ablation.decision import decide
from ablation.endpoints import Predictions, compare_arms, covid_sources, resampling_weights
from ablation.folds import assign_folds, fold_parts, validation_patients
from ablation.placebo import match_histogram, placebo_film
from augment.data import csv_rows, decode_to_square
from augment.phantoms import write_phantoms
from foundation.errors import UserError

CLASSES = ("covid", "normal", "pneumonia")


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return csv_rows(f)


def two_hospitals(root: Path, counts=None) -> Path:
    """Phantoms (two films per patient) from two sources: hospA holds every covid film and half the other patients,
    hospB the rest, as when the covid films come from other hospitals than most normal ones."""
    root = write_phantoms(root, counts or {"covid": 12, "normal": 16, "pneumonia": 16}, 32, seed=0)
    manifest = rows(root / "manifest.csv")
    for r in manifest:
        patient = int(r["group_id"].rsplit("-", 1)[1])
        r["source"] = "hospA" if r["label"] == "covid" or patient % 2 else "hospB"
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(manifest[0]))
        w.writeheader()
        w.writerows(manifest)
    return root


def tiny_args(tmp: Path, data: Path, *extra: str) -> list[str]:
    """``ablation --folds 2`` with a shallow classifier of 1 epoch and a CycleGAN of 2 steps at 32²."""
    cache = f"data.cache_dir={tmp / 'cache'}"
    return ["ablation", "--data", str(data), "--out", str(tmp / "runs"), "--device", "cpu", "--folds", "2",
            "--dest", str(tmp / "abl"), "--backbone", "shallow",
            *[f"--set={s}" for s in ("data.size=32", cache, "model.width=4", "model.input_size=32", "train.epochs=1",
                                     "train.batch_size=8", "train.tensorboard=false", "eval.bootstrap=50")],
            *[f"--gan-set={s}" for s in ("data.size=32", cache, "model.ngf=4", "model.ndf=4", "model.n_blocks=1",
                                         "model.n_layers_d=2", "train.steps=2", "train.pool_size=2",
                                         "train.tensorboard=false")], *extra]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, lung_run):
    """Every arm of a 2-fold ablation, run once through the command line for the tests of this module."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("folds")
    data = two_hospitals(tmp / "data")
    args = tiny_args(tmp, data, "--arms", "real,classic,gan,gan-lungs,placebo", "--lungs", str(lung_run.run_dir))
    try:
        from cli import cli
        r = CliRunner().invoke(cli, args)
    finally:
        torch.set_num_threads(threads)
    assert r.exit_code == 0, r.output
    return {"dest": tmp / "abl", "data": data, "args": args, "output": r.output, "tmp": tmp,
            "lungs": lung_run.run_dir}


# ---------------------------------------------------------------- the design, end to end
def test_no_patient_is_in_two_parts_of_a_fold_and_every_film_is_tested_once(experiment):
    dest = experiment["dest"]
    images = rows(dest / "images.csv")
    tested = Counter()
    for k in range(2):
        fold = rows(dest / "folds" / f"fold{k}" / "real.csv")
        parts = {s: {r["group_id"] for r in fold if r["split"] == s} for s in ("train", "val", "test")}
        assert parts["train"] and parts["val"] and parts["test"]
        assert not (parts["train"] & parts["val"]) and not (parts["train"] & parts["test"]) and not (parts["val"] & parts["test"])
        assert {r["label"] for r in fold if r["split"] == "val"} == set(CLASSES)  # the threshold can be chosen
        tested.update(r["path"] for r in fold if r["split"] == "test")
        assert {r["path"] for r in fold if r["split"] == "test"} == {r["path"] for r in images if r["fold"] == str(k)}
    assert sorted(tested.elements()) == sorted(r["path"] for r in images)
    by_patient = {}
    for r in images:  # a patient's films share a fold
        assert by_patient.setdefault(r["group_id"], r["fold"]) == r["fold"]


def test_every_image_gets_exactly_one_out_of_fold_prediction_per_arm(experiment):
    dest = experiment["dest"]
    images = rows(dest / "images.csv")
    for arm in ARMS:
        predicted = rows(dest / "arms" / arm / "predictions.csv")
        assert [r["path"] for r in predicted] == [r["path"] for r in images], arm
        assert [r["fold"] for r in predicted] == [r["fold"] for r in images]
        assert list(predicted[0])[:5] == ["path", "fold", "label", "source", "patient"]
        for r in predicted:
            assert sum(float(r[f"prob_{c}"]) for c in CLASSES) == pytest.approx(1, abs=1e-4)
        for k in range(2):  # each fold's cell chose its threshold on its own validation part
            cell = json.loads((dest / "folds" / f"fold{k}" / arm / "cell.json").read_text())
            assert cell["n_test"] == sum(r["fold"] == str(k) for r in images)
    for arm in ("real", "classic"):
        assert all(json.loads((dest / "folds" / f"fold{k}" / arm / "cell.json").read_text())["n_added"] == 0
                   for k in range(2))


def test_every_arm_of_a_fold_trains_on_the_same_split_with_the_same_seed(experiment):
    dest = experiment["dest"].resolve()
    for k in range(2):
        fold = {r["path"]: r["split"] for r in rows(dest / "folds" / f"fold{k}" / "real.csv")}
        for arm in ARMS:
            run = Path(json.loads((dest / "folds" / f"fold{k}" / arm / "cell.json").read_text())["run"])
            split = rows(run / "split.csv")
            real = {r["path"]: r["split"] for r in split if not r["path"].startswith(str(dest / "folds"))}
            assert real == fold, (k, arm)
            assert json.loads((run / "run.json").read_text())["seed"] == k  # --seed 0 + fold
            added = [r for r in split if r["path"].startswith(str(dest / "folds"))]
            assert all(r["split"] == "train" for r in added) and (len(added) > 0) == (arm not in ("real", "classic"))
        counts = {arm: json.loads((dest / "folds" / f"fold{k}" / arm / "cell.json").read_text())["n_added"]
                  for arm in ("gan", "gan-lungs", "placebo")}
        assert len(set(counts.values())) == 1 and counts["gan"] > 0  # the same number of added covid films


def test_the_gan_of_a_fold_never_saw_its_test_or_validation_patients(experiment):
    from lungs import LungSegmenter
    dest = experiment["dest"]
    for k in range(2):
        fold = rows(dest / "folds" / f"fold{k}" / "real.csv")
        held_out = {r["group_id"] for r in fold if r["split"] in ("val", "test")}
        training = {r["group_id"] for r in fold if r["split"] == "train"}
        for arm in ("gan", "gan-lungs"):
            run = Path(json.loads((dest / "folds" / f"fold{k}" / arm / "gan.json").read_text())["run"])
            seen = rows(run / "split.csv")
            assert seen and all(r["split"] == "train" for r in seen)
            assert {r["group_id"] for r in seen} == training and not ({r["group_id"] for r in seen} & held_out)
            synthetic = rows(dest / "folds" / f"fold{k}" / arm / "added" / "manifest.csv")
            assert {r["group_id"] for r in synthetic} <= training
            info, config = json.loads((run / "run.json").read_text()), yaml.safe_load((run / "config.yaml").read_text())
            if arm == "gan-lungs":
                assert config["train"]["lung_constraint"] == "composite"
                assert info["lung_masker"] == LungSegmenter(experiment["lungs"], "cpu").identity
            else:
                assert config["train"]["lung_constraint"] == "none" and info["lung_masker"] is None


def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of the sorted gray values (images of one size): the earth mover's distance."""
    return float(np.abs(np.sort(a.ravel()).astype(float) - np.sort(b.ravel()).astype(float)).mean())


def test_the_placebo_films_match_their_covid_targets_histograms(experiment):
    dest = experiment["dest"]
    for k in range(2):
        folder = dest / "folds" / f"fold{k}" / "placebo" / "added"
        made = rows(folder / "manifest.csv")
        training = {r["path"]: r for r in rows(dest / "folds" / f"fold{k}" / "real.csv") if r["split"] == "train"}
        assert made and all(r["label"] == "covid" and r["split"] == "train" and r["source"] == "placebo" for r in made)
        closer = 0
        for r in made:
            assert training[r["source_image"]]["label"] == "normal" and training[r["target_image"]]["label"] == "covid"
            film = np.asarray(Image.open(folder / r["path"]))
            target = decode_to_square(Path(r["target_image"]), 32, "crop")
            source = decode_to_square(Path(r["source_image"]), 32, "crop")
            assert film.shape == target.shape and wasserstein(film, target) < 3  # blur and noise move it a little
            closer += wasserstein(film, target) < wasserstein(source, target)
        assert closer >= 0.8 * len(made)


def test_the_report_names_the_covid_source_the_rules_and_the_rule_that_fired(experiment):
    dest = experiment["dest"]
    summary = json.loads((dest / "summary.json").read_text(), parse_constant=pytest.fail)  # strict JSON
    assert summary["covid_source"] == "hospA" and summary["covid_free_sources"] == ["hospB"]
    assert set(summary["arms"]) == set(ARMS) and summary["skipped"] == {}
    assert "gan − classic" in summary["differences"] and "gan − placebo" in summary["differences"]
    d = summary["differences"]["gan − classic"]["auc_in_source"]
    assert len(d["signs"]) == 2 and d["value"] is not None
    assert [x["arm"] for x in summary["decisions"]] == ["gan", "gan-lungs"]
    report = (dest / "report.md").read_text()
    assert "covid-vs-rest AUC within hospA" in report and "1. positive:" in report and "4. inconclusive" in report
    for decision in summary["decisions"]:
        assert decision["outcome"] in ("positive", "negative", "null", "inconclusive")
        assert decision["sentence"] in report and decision["sentence"] in experiment["output"]
        assert decision["sentence"].startswith(decision["outcome"].capitalize()) and decision["sentence"].count(". ") == 0


def test_a_second_run_keeps_every_unit_and_a_lost_cell_trains_alone(experiment):
    dest, args = experiment["dest"], experiment["args"]
    from cli import cli
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0 and r.output.count("done earlier, kept") == 2 * len(ARMS), r.output
    (dest / "folds" / "fold1" / "placebo" / "cell.json").unlink()
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert r.output.count("done earlier, kept") == 2 * len(ARMS) - 1 and "fold 1 arm placebo: training the classifier" in r.output
    assert "training the CycleGAN" not in r.output  # no GAN trains again
    assert len(list((dest / "folds" / "fold1" / "placebo" / "classifier").iterdir())) == 1  # its finished run, kept
    r = CliRunner().invoke(cli, [*args, "--minority-fraction", "0.5"])
    assert r.exit_code == 2 and "minority_fraction differ" in r.output


def test_without_a_lung_segmenter_the_lung_arm_is_skipped_with_a_clear_message(tmp_path, one_thread):
    from cli import cli
    data = two_hospitals(tmp_path / "data", {"covid": 8, "normal": 8, "pneumonia": 8})
    r = CliRunner().invoke(cli, tiny_args(tmp_path, data, "--arms", "real", "--arms", "gan-lungs"))
    assert r.exit_code == 0, r.output
    assert "arm gan-lungs skipped: no lung segmenter: give --lungs RUN" in r.output
    summary = json.loads((tmp_path / "abl" / "summary.json").read_text())
    assert summary["arms"] == ["real"] and "gan-lungs" in summary["skipped"]
    assert summary["decisions"][0]["outcome"] == "inconclusive" and "classic arm, which did not run" in (
        summary["decisions"][0]["sentence"])


def test_option_mistakes_are_one_line_errors(tmp_path):
    from cli import cli
    data = tmp_path / "none"
    for args, message in [(["--arms", "gan"], "--arms and --lungs belong to the cross-validated ablation"),
                          (["--interim"], "belong to the cross-validated ablation (so does --interim)"),
                          (["--folds", "2", "--seeds", "2"], "drop --seeds and --gan-per-seed"),
                          (["--folds", "2", "--arms", "gan,magic"], "--arms magic: no such arm")]:
        r = CliRunner().invoke(cli, ["ablation", "--data", str(data), "--out", str(tmp_path), *args])
        assert r.exit_code == 2 and message in r.output, r.output
    assert parse_arms(["placebo,real", "gan"]) == ("real", "gan", "placebo") and parse_arms([]) == ARMS


# ---------------------------------------------------------------- the pieces, on constructed cases
def test_folds_and_validation_parts_are_grouped_stratified_and_keep_a_share_of_the_minority():
    groups = [f"p{i // 2}" for i in range(400)]
    labels = [("covid", "normal", "pneumonia")[(i // 2) % 3] for i in range(400)]
    sources = [("a", "b")[(i // 6) % 2] for i in range(400)]
    folds = assign_folds(groups, labels, sources, 4, seed=1)
    for stratum in {(y, s) for y, s in zip(labels, sources)}:  # every label × source spreads evenly
        n = Counter(f for f, y, s in zip(folds, labels, sources) if (y, s) == stratum)
        assert max(n.values()) - min(n.values()) <= 2
    parts = fold_parts(groups, labels, sources, folds, 0, 1, "covid", minority_fraction=0.5)
    val = [p == "val" for p in parts]
    assert 0.07 < sum(val) / sum(f != 0 for f in folds) < 0.13
    kept = {g for g, y, p in zip(groups, labels, parts) if y == "covid" and p == "train"}
    dropped = {g for g, y, p in zip(groups, labels, parts) if y == "covid" and p == ""}
    assert abs(len(kept) - len(dropped)) <= 1 and not kept & dropped
    assert all(p == "test" for p, f in zip(parts, folds) if f == 0)
    two = validation_patients(["a", "b", "c"], ["x", "x", "y"], ["s", "s", "s"], 0.1, 0)
    assert len(two) == 1 and two <= {"a", "b"}  # one of the two x patients; y's only patient trains
    # by default every source of a label has a voice in validation; proportional: each its share of the patients
    groups, sources = [f"p{i}" for i in range(100)], ["a"] * 90 + ["b"] * 6 + ["c"] * 4
    for proportional, expected in ((False, {"a": 3, "b": 3, "c": 4}), (True, {"a": 9, "b": 1})):
        val = validation_patients(groups, ["covid"] * 100, sources, 0.1, 0, proportional)
        assert Counter(sources[groups.index(g)] for g in val) == expected
    one = validation_patients(["a", "b", "c"], ["x", "x", "y"], ["s", "t", "u"], 0.1, 0, proportional=True)
    assert len(one) == 1 and one <= {"a", "b"}  # sources too small for a share: still one x patient
    with pytest.raises(UserError, match="as many patients as folds"):
        assign_folds(["a", "a", "b"], ["x"] * 3, ["s"] * 3, 3, 0)


def test_histogram_matching_gives_the_targets_gray_levels_and_keeps_the_order():
    rng = np.random.default_rng(0)
    source = rng.permutation(256).astype(np.uint8).reshape(16, 16)
    target = (rng.permutation(256)).astype(np.uint8).reshape(16, 16) // 2 + 100  # another distribution
    out = match_histogram(source, target)
    assert np.array_equal(np.sort(out.ravel()), np.sort(target.ravel()))
    assert np.all(np.diff(out.ravel()[np.argsort(source.ravel(), kind="stable")].astype(int)) >= 0)  # order kept
    big = (np.add.outer(np.arange(64), np.arange(64)) * 119 // 126).astype(np.uint8)  # a smooth film
    film = placebo_film(big, target, rng)
    assert wasserstein(np.sort(film.ravel())[::16], np.sort(target.ravel())) < 4 < wasserstein(
        np.sort(big.ravel())[::16], np.sort(target.ravel()))


def predictions(prob_covid: np.ndarray, labels: np.ndarray, sources, patients, folds, called=None) -> Predictions:
    """Predictions of an arm from its covid probability (the rest split evenly between normal and pneumonia)."""
    prob = np.stack([prob_covid, (1 - prob_covid) / 2 + 0.01 * (labels == 1), (1 - prob_covid) / 2 - 0.01 * (labels == 1)], 1)
    return Predictions([f"img{i}" for i in range(len(labels))], np.asarray(folds), labels, list(sources),
                       list(patients), prob, prob_covid >= 0.5 if called is None else called, CLASSES)


def constructed(n_patients: int = 60, seed: int = 0):
    """Images of patients (2 each) at two hospitals: hospA holds every covid film; labels, sources, patients, folds."""
    rng = np.random.default_rng(seed)
    patient_label = rng.integers(0, 3, n_patients)
    patient_label[:10] = 0
    labels = np.repeat(patient_label, 2)
    patients = np.repeat([f"p{i}" for i in range(n_patients)], 2)
    sources = np.where((labels == 0) | (np.repeat(np.arange(n_patients), 2) % 2 == 0), "hospA", "hospB")
    folds = np.repeat(np.arange(n_patients) % 3, 2)
    return labels, sources, patients, folds, rng


def test_the_paired_intervals_resample_patients():
    labels, sources, patients, folds, rng = constructed()
    w = resampling_weights(patients, folds, rounds=200, seed=3)
    assert w.shape == (1 + 200 + 3, len(labels)) and np.all(w[0] == 1)
    boot = w[1:201]
    assert np.all(boot[:, 0::2] == boot[:, 1::2])  # both films of a patient weigh the same in every resample
    assert np.all(w[201:].sum(0) == 1)  # each image in exactly one fold row

    score = np.clip(0.5 * (labels == 0) + rng.normal(0.3, 0.2, len(labels)), 0, 1)
    other = np.clip(score + rng.normal(0, 0.15, len(labels)), 0, 1)
    arms = {"classic": predictions(other, labels, sources, patients, folds),
            "gan": predictions(score, labels, sources, patients, folds)}
    source, free = covid_sources(class_names(labels), list(sources), "covid")
    result = compare_arms(arms, "covid", source, free, 300, 0)
    # the same films once more under the same patients: resampling patients, the intervals do not move
    twice = {a: predictions(np.repeat(p.prob[:, 0], 2), np.repeat(labels, 2), np.repeat(sources, 2),
                            np.repeat(patients, 2), np.repeat(folds, 2)) for a, p in arms.items()}
    again = compare_arms(twice, "covid", source, free, 300, 0)
    for e in ("auc_in_source", "accuracy", "sensitivity"):
        assert again["differences"]["gan − classic"][e]["ci"] == pytest.approx(result["differences"]["gan − classic"][e]["ci"])
    assert again["n_patients"] == result["n_patients"] == 60


def class_names(labels: np.ndarray) -> list[str]:
    return [CLASSES[y] for y in labels]


def difference(value, ci, signs=("+", "+", "+")) -> dict:
    return {"value": value, "ci": list(ci), "folds": [], "signs": list(signs)}


def differences(gain, ci, signs=("+", "+", "+"), placebo_ci=(0.01, 0.08), rise=0.0) -> dict:
    primary = difference(gain, ci, signs)
    out = {"gan − classic": {"auc_in_source": primary, "calls_free_sources": difference(rise, (rise - 0.01, rise + 0.01))}}
    if placebo_ci is not None:
        out["gan − placebo"] = {"auc_in_source": difference(sum(placebo_ci) / 2, placebo_ci),
                                "calls_free_sources": difference(0.0, (0, 0))}
    return out


@pytest.mark.parametrize("case,outcome,words", [
    (differences(0.06, (0.02, 0.10)), "positive", "beat the placebo"),
    (differences(0.06, (0.02, 0.10), signs=("+", "−", "+")), "inconclusive", "not positive in every fold"),
    (differences(0.06, (0.02, 0.10), placebo_ci=(-0.01, 0.05)), "inconclusive", "does not lie above 0"),
    (differences(0.06, (0.02, 0.10), placebo_ci=None), "inconclusive", "no placebo arm"),
    (differences(-0.05, (-0.08, -0.02), signs=("−", "−", "−")), "negative", "an interval below 0"),
    (differences(0.06, (0.02, 0.10), rise=0.04), "negative", "+4.0 points, more than +2"),
    (differences(0.01, (-0.02, 0.04), signs=("+", "−", "+")), "null", "within ±0.05"),
    (differences(0.02, (0.01, 0.04)), "null", "the gain is under +0.03"),
    (differences(0.01, (-0.08, 0.10)), "inconclusive", "not within ±0.05"),
])
def test_each_decision_rule_fires_on_a_case_made_to_trigger_it(case, outcome, words):
    d = decide(case, "gan", "hospA", ["hospB"])
    assert d["outcome"] == outcome and words in d["sentence"], d["sentence"]
    assert d["sentence"].startswith(f"{outcome.capitalize()} (rule {d['rule']} of 4, gan): ")
    assert "within hospA" in d["sentence"] and d["sentence"].endswith(".")


def test_the_rules_decide_from_predictions_built_to_be_positive_and_to_raise_covid_calls():
    labels, sources, patients, folds, rng = constructed(90)
    noise = rng.normal(0, 0.25, len(labels))
    weak = np.clip(0.5 + 0.05 * (labels == 0) + noise, 0, 1)       # classic and placebo barely see covid
    strong = np.clip(0.5 + 0.6 * (labels == 0) - 0.3 + 0.3 * noise, 0, 1)  # the GAN arm sees it well
    free = sources == "hospB"
    arms = {"classic": predictions(weak, labels, sources, patients, folds, called=np.zeros(len(labels), bool)),
            "placebo": predictions(np.clip(weak + rng.normal(0, 0.05, len(labels)), 0, 1), labels, sources, patients,
                                   folds, called=np.zeros(len(labels), bool)),
            "gan": predictions(strong, labels, sources, patients, folds, called=np.zeros(len(labels), bool))}
    source, free_sources = covid_sources(class_names(labels), list(sources), "covid")
    assert (source, free_sources) == ("hospA", ["hospB"])
    result = compare_arms(arms, "covid", source, free_sources, 300, 0)
    d = decide(result["differences"], "gan", source, free_sources)
    assert d["outcome"] == "positive", d["sentence"]
    arms["gan"].called = free & (rng.random(len(labels)) < 0.3)  # now it calls covid films of the covid-free source
    d = decide(compare_arms(arms, "covid", source, free_sources, 300, 0)["differences"], "gan", source, free_sources)
    assert d["outcome"] == "negative" and "covid calls on covid-free sources (hospB) moved by +" in d["sentence"]


def test_a_stopped_fold_gan_and_classifier_resume_in_their_own_runs(tmp_path, monkeypatch, one_thread):
    import foundation.loop
    from classifier.train import Trainer
    from cli import INTERRUPTED, cli
    from conftest import StopAfter, sigint_at_call
    from foundation.checkpoints import load_checkpoint
    data = two_hospitals(tmp_path / "data", {"covid": 8, "normal": 8, "pneumonia": 8})
    args = [a.replace("train.steps=2", "train.steps=4") for a in tiny_args(tmp_path, data, "--arms", "gan")]
    fold0 = tmp_path / "abl" / "folds" / "fold0" / "gan"
    monkeypatch.setattr(foundation.loop, "GracefulStop", lambda: StopAfter(2))
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == INTERRUPTED and "run the same command again to continue" in r.output, r.output
    [gan] = (fold0 / "gan").iterdir()
    assert load_checkpoint(gan / "checkpoint.pt")["step"] == 2 and not (fold0 / "gan.json").exists()
    monkeypatch.undo()
    step = sigint_at_call(monkeypatch, Trainer, "train_step", 1)
    assert CliRunner().invoke(cli, args).exit_code == INTERRUPTED  # the GAN finishes, the fold's classifier stops
    [run] = (fold0 / "classifier").iterdir()
    assert (run / "last.pt").exists() and not (run / "best.pt").exists() and not (fold0 / "cell.json").exists()
    monkeypatch.setattr(Trainer, "train_step", step)
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert list((fold0 / "gan").iterdir()) == [gan] and load_checkpoint(gan / "checkpoint.pt")["step"] == 4
    assert list((fold0 / "classifier").iterdir()) == [run] and (run / "best.pt").exists()
    assert json.loads((fold0 / "cell.json").read_text())["run"] == str(run)


@pytest.mark.slow
def test_the_cpu_scale_is_three_folds_of_the_cpu_presets_with_a_shorter_gan(tmp_path, one_thread):
    from ablation.crossval import SCALES
    from cli import cli
    scale = SCALES["cpu"]
    assert scale.folds == 3 and scale.classifier_config == "classify-train-cpu.yaml"
    assert scale.gan_config == "gan-train-cpu.yaml" and "train.steps=1500" in scale.gan_sets
    data = two_hospitals(tmp_path / "data", {"covid": 6, "normal": 6, "pneumonia": 6})
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    r = CliRunner().invoke(cli, ["ablation", "--scale", "cpu", "--data", str(data), "--out", str(tmp_path / "runs"),
                                 "--device", "cpu", "--arms", "real", "--set", "data.size=32", "--set", cache,
                                 "--set", "model.input_size=32", "--set", "train.epochs=1", "--set", "eval.bootstrap=10",
                                 "--set", "train.tensorboard=false", "--gan-set", "data.size=32"])
    assert r.exit_code == 0, r.output
    [dest] = (tmp_path / "runs" / "ablation").iterdir()
    assert dest.name == "resnet18-folds3"
    experiment = json.loads((dest / "experiment.json").read_text())
    assert experiment["folds"] == 3 and experiment["classifier_config"]["train"]["cpu_bf16"] is True
    assert experiment["gan_config"]["train"]["steps"] == 1500 and experiment["gan_config"]["model"]["n_blocks"] == 6
    assert experiment["gan_config"]["data"]["size"] == 32  # --gan-set after the scale's
    assert len(list((dest / "folds").iterdir())) == 3


def test_interim_reports_the_finished_folds_only_and_decides_nothing(experiment, tmp_path):
    """``--interim`` trains nothing: it pools the folds where every arm has finished and applies no rule."""
    import shutil

    from cli import cli
    copy = tmp_path / "abl"
    shutil.copytree(experiment["dest"], copy)
    (copy / "folds" / "fold1" / "placebo" / "cell.json").unlink()  # fold 1 is not finished
    r = CliRunner().invoke(cli, [*experiment["args"], "--dest", str(copy), "--interim"])
    assert r.exit_code == 0, r.output
    s = json.loads((copy / "interim.json").read_text())
    fold0 = [row for row in rows(copy / "images.csv") if row["fold"] == "0"]
    assert s["folds_done"] == [0] and s["n"] == len(fold0) and [c["fold"] for c in s["cells"]["gan"]] == [0]
    assert [d["rule"] for d in s["decisions"]] == [None] and "no rule is applied" in s["decisions"][0]["sentence"]
    assert "(interim: folds 0 only)" in (copy / "interim.md").read_text()
    assert not (copy / "folds" / "fold1" / "placebo" / "cell.json").exists()  # nothing trained
    assert json.loads((copy / "summary.json").read_text()) == json.loads((experiment["dest"] / "summary.json").read_text())
    (copy / "folds" / "fold0" / "gan" / "cell.json").unlink()
    r = CliRunner().invoke(cli, [*experiment["args"], "--dest", str(copy), "--interim"])
    assert r.exit_code == 2 and "no fold has finished every arm" in r.output


def test_a_time_budget_is_dropped_so_every_arm_trains_the_same_epochs(tmp_path):
    from cli import cli
    data = two_hospitals(tmp_path / "data")
    r = CliRunner().invoke(cli, [*tiny_args(tmp_path, data), "--set", "train.time_budget=10m", "--interim"])
    assert "train.time_budget 10m dropped: every arm trains train.epochs=1" in r.output
    assert r.exit_code == 2 and "no fold has finished every arm" in r.output  # nothing was trained
    recorded = json.loads((tmp_path / "abl" / "experiment.json").read_text())
    assert recorded["classifier_config"]["train"]["time_budget"] == ""


def test_an_experiment_records_test_time_augmentation_only_when_used():
    """Experiments recorded before ``eval.tta`` existed resume: its default is left out of the record."""
    from ablation.stages import experiment_config
    from classifier.config import ClassifierConfig
    from foundation.config import load_config
    assert "tta" not in experiment_config(load_config(ClassifierConfig, None, []))["eval"]
    assert experiment_config(load_config(ClassifierConfig, None, ["eval.tta=2"]))["eval"]["tta"] == 2
