"""Metrics against hand-computed cases and scikit-learn, the patient-level bootstrap, the threshold
chosen on validation data, and what best.pt keeps for it."""
import numpy as np
import pytest
import torch

from classifier.metrics import (calibration, classification_metrics, confusion_counts, pr_curve, rates,
                                rates_at_threshold, roc_curve, sensitivity_at_specificity, transferred_threshold,
                                weighted_auc)
from conftest import tiny_classifier_config
from foundation.bootstrap import bootstrap_weights, interval

Y = np.array([0, 0, 1, 1, 2, 2])
PRED = np.array([0, 1, 1, 1, 2, 0])


def test_confusion_and_per_class_rates_by_hand():
    cm = confusion_counts(Y, PRED, 3, np.ones((1, 6)))
    assert cm[0].tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    r = rates(cm)
    assert r["accuracy"][0] == pytest.approx(4 / 6)
    assert r["precision"][0] == pytest.approx([1 / 2, 2 / 3, 1])
    assert r["sensitivity"][0] == pytest.approx([1 / 2, 1, 1 / 2])
    assert r["specificity"][0] == pytest.approx([3 / 4, 3 / 4, 1])
    assert r["f1"][0] == pytest.approx([1 / 2, 4 / 5, 2 / 3])


def test_auc_counts_ties_as_half_and_roc_pr_by_hand():
    pos = np.array([True, True, False, False])
    score = np.array([0.9, 0.4, 0.4, 0.1])
    assert weighted_auc(pos, score, np.ones((1, 4)))[0] == pytest.approx(3.5 / 4)
    fpr, tpr, thr = roc_curve(pos, score)
    assert fpr.tolist() == [0, 0, 0.5, 1] and tpr.tolist() == [0, 0.5, 1, 1]
    assert thr[1:].tolist() == [0.9, 0.4, 0.1]
    assert sensitivity_at_specificity(pos, score, 0.9) == (0.5, 0.9)
    assert sensitivity_at_specificity(pos, score, 0.5) == (1.0, 0.4)
    precision, recall, ap = pr_curve(pos, score)
    assert ap == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_weighted_auc_equals_auc_of_the_resampled_set():
    rng = np.random.default_rng(1)
    pos, score = rng.random(30) < 0.4, rng.random(30).round(1)  # rounding makes ties
    w = bootstrap_weights(30, 5, seed=3)
    for row in w:
        idx = np.repeat(np.arange(30), row.astype(int))
        p, s = pos[idx], score[idx]
        pairs = (s[p][:, None] > s[~p][None]).mean() + 0.5 * (s[p][:, None] == s[~p][None]).mean()
        assert weighted_auc(pos, score, row[None])[0] == pytest.approx(pairs)


@pytest.mark.slow
def test_bootstrap_interval_covers_the_true_accuracy_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered, trials, n, truth = 0, 300, 200, 0.8
    y = np.zeros(n, int)
    for t in range(trials):
        pred = np.where(rng.random(n) < truth, 0, 1)
        acc = rates(confusion_counts(y, pred, 2, bootstrap_weights(n, 400, seed=t)))["accuracy"]
        lo, hi = interval(acc)
        covered += lo <= truth <= hi
    assert 0.90 <= covered / trials <= 0.99


def test_classification_metrics_report_and_seeded_intervals():
    prob = np.eye(3)[PRED] * 0.7 + 0.1
    m = classification_metrics(Y, prob, ("covid", "normal", "pneumonia"), rounds=200, seed=5)
    assert m["accuracy"] == pytest.approx(4 / 6) and m["confusion"][2] == [1, 0, 1]
    assert m["macro"]["sensitivity"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    lo, hi = m["accuracy_ci"]
    assert lo <= m["accuracy"] <= hi
    again = classification_metrics(Y, prob, ("covid", "normal", "pneumonia"), rounds=200, seed=5)
    assert again["per_class"]["covid"]["auc_ci"] == m["per_class"]["covid"]["auc_ci"]


def two_patients():
    """Patient a: 10 images, all right; patient b: 10 images, all wrong (5 of each class in both)."""
    y = np.array([1] * 5 + [0] * 5 + [1] * 5 + [0] * 5)
    pred = np.r_[y[:10], 1 - y[10:]]
    return y, np.eye(2)[pred] * 0.8 + 0.1, ["a"] * 10 + ["b"] * 10


def test_group_bootstrap_on_two_patients_gives_the_whole_range_where_images_give_less():
    y, prob, groups = two_patients()
    by_patient = classification_metrics(y, prob, ("normal", "covid"), rounds=1000, seed=0, groups=groups)
    by_image = classification_metrics(y, prob, ("normal", "covid"), rounds=1000, seed=0)
    # resamples are aa (accuracy, precision, F1 all 1), ab (1/2) or bb (0), with chances 1/4, 1/2, 1/4
    assert by_patient["accuracy"] == 0.5 and by_patient["n_groups"] == 2 and by_image["n_groups"] == 20
    assert by_patient["accuracy_ci"] == [0.0, 1.0]
    covid = by_patient["per_class"]["covid"]
    assert covid["precision"] == covid["f1"] == 0.5
    assert covid["precision_ci"] == covid["f1_ci"] == [0.0, 1.0]
    assert by_patient["macro"]["f1_ci"] == [0.0, 1.0]
    lo, hi = by_image["accuracy_ci"]  # 20 independent images: about 0.5 ± 0.22
    assert 0.2 <= lo < 0.5 < hi <= 0.8


def test_correlated_images_widen_the_patient_level_interval():
    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(30), 6)  # 30 patients of 6 images; a patient is all right or all wrong
    y = rng.integers(0, 2, 180)
    right = np.repeat(rng.random(30) < 0.7, 6)
    prob = np.eye(2)[np.where(right, y, 1 - y)]
    width = {}
    for name, g in (("patients", groups), ("images", None)):
        lo, hi = classification_metrics(y, prob, ("a", "b"), rounds=2000, seed=1, groups=g)["accuracy_ci"]
        width[name] = hi - lo
    assert width["patients"] > 2 * width["images"]  # sqrt(6) = 2.45 in expectation


def test_groups_none_is_the_per_image_bootstrap_and_resamples_keep_whole_groups():
    assert np.array_equal(bootstrap_weights(7, 50, seed=2), bootstrap_weights(7, 50, 2, groups=list("abcdefg")))
    groups = ["p", "q", "q", "r", "r", "r", "s"]
    w = bootstrap_weights(7, 200, seed=3, groups=groups)
    assert np.array_equal(w[:, 1], w[:, 2]) and np.array_equal(w[:, 3], w[:, 5])  # one count per patient
    assert (w[:, [0, 1, 3, 6]].sum(1) == 4).all()  # four patients drawn per round
    assert (w[:, [1, 3]] == 0).any() and (w[:, 3] >= 2).any()  # patients left out and drawn twice
    with pytest.raises(ValueError, match="6 group ids for 7 images"):
        bootstrap_weights(7, 2, 0, groups[:6])


def test_precision_and_f1_intervals_are_those_of_the_resampled_sets():
    rng = np.random.default_rng(8)
    y, groups = rng.integers(0, 3, 40), rng.integers(0, 12, 40)
    prob = rng.dirichlet(np.ones(3), 40)
    m = classification_metrics(y, prob, ("a", "b", "c"), rounds=300, seed=6, groups=groups)
    per_round = []
    for row in bootstrap_weights(40, 300, 6, groups):
        idx = np.repeat(np.arange(40), row.astype(int))
        per_round.append(rates(confusion_counts(y[idx], prob[idx].argmax(1), 3, np.ones((1, len(idx))))))
    for metric in ("precision", "f1"):
        for c, name in enumerate("abc"):
            expected = interval(np.array([r[metric][0, c] for r in per_round]))
            assert m["per_class"][name][f"{metric}_ci"] == pytest.approx(list(expected))


def test_threshold_chosen_on_validation_is_applied_unchanged_to_test():
    # validation: at 0.6 two of three positives are called, one of four negatives (0.8): specificity 3/4
    val_pos = np.array([True, True, True, False, False, False, False])
    val_score = np.array([0.9, 0.6, 0.3, 0.8, 0.5, 0.2, 0.1])
    pos = np.array([True] * 4 + [False] * 5)
    score = np.array([0.7, 0.6, 0.55, 0.2, 0.65, 0.4, 0.3, 0.1, 0.05])
    t = transferred_threshold(val_pos, val_score, pos, score, 0.75, np.ones((1, 9)))
    assert t["threshold"] == 0.6
    assert (t["chosen_sensitivity"], t["chosen_specificity"]) == (2 / 3, 3 / 4)
    assert (t["sensitivity"][0], t["specificity"][0]) == (2 / 4, 4 / 5)  # 0.7, 0.6 called; 0.65 a false alarm
    assert sensitivity_at_specificity(pos, score, 0.75)[0] == 3 / 4  # choosing on test would flatter it
    w = np.array([[2, 1, 1, 1, 1, 1, 1, 1, 0]], dtype=float)  # first positive twice, last negative left out
    sens, spec = rates_at_threshold(pos, score, 0.6, w)
    assert (sens[0], spec[0]) == (3 / 5, 3 / 4)


def test_metrics_agree_with_scikit_learn_on_random_cases_with_ties():
    sk = pytest.importorskip("sklearn.metrics")
    for seed in range(5):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 3, 80)
        raw = rng.integers(1, 5, (80, 3)).astype(float)  # few levels: many tied scores
        prob = raw / raw.sum(1, keepdims=True)
        pred = prob.argmax(1)
        m = classification_metrics(y, prob, ("a", "b", "c"), rounds=0)
        assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
        assert m["confusion"] == sk.confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
        precision, recall, f1, _ = sk.precision_recall_fscore_support(y, pred, labels=[0, 1, 2], zero_division=np.nan)
        assert m["macro"]["auc"] == pytest.approx(sk.roc_auc_score(y, prob, multi_class="ovr"))
        for c, name in enumerate("abc"):
            p = m["per_class"][name]
            assert [p["precision"], p["sensitivity"], p["f1"]] == pytest.approx([precision[c], recall[c], f1[c]],
                                                                                nan_ok=True)
            assert p["specificity"] == pytest.approx(sk.recall_score(y != c, pred != c))
            assert p["auc"] == pytest.approx(sk.roc_auc_score(y == c, prob[:, c]))
            assert pr_curve(y == c, prob[:, c])[2] == pytest.approx(sk.average_precision_score(y == c, prob[:, c]))
            fpr, tpr, thr = roc_curve(y == c, prob[:, c])
            sk_fpr, sk_tpr, sk_thr = sk.roc_curve(y == c, prob[:, c], drop_intermediate=False)
            assert fpr == pytest.approx(sk_fpr) and tpr == pytest.approx(sk_tpr) and thr[1:] == pytest.approx(sk_thr[1:])


@pytest.mark.slow
def test_best_checkpoint_keeps_validation_predictions_and_evaluate_chooses_the_threshold_there(tmp_path):
    from augment.data import load_dataset
    from augment.phantoms import write_phantoms
    from classifier.config import EvalConfig
    from classifier.evaluate import evaluate
    from classifier.train import train
    data = write_phantoms(tmp_path / "data", 20, size=32, seed=0)
    cfg = tiny_classifier_config(tmp_path, "train.epochs=1")
    run = train(cfg, data, tmp_path, device="cpu", quiet=True)
    best = torch.load(run / "best.pt", weights_only=True)
    ds = load_dataset(data, cfg.data, quiet=True)
    val, test = ds.indices("val"), ds.indices("test")
    v = best["validation"]
    assert torch.equal(v["labels"], ds.labels[val]) and v["groups"] == [ds.groups[i] for i in val.tolist()]
    assert v["prob"].shape == (len(val), 3) and torch.allclose(v["prob"].sum(1), torch.ones(len(val)))

    m = evaluate(data, run, tmp_path, EvalConfig(bootstrap=20, specificity=0.8), device="cpu", quiet=True)
    covid = v["labels"].numpy() == 0
    _, threshold = sensitivity_at_specificity(covid, v["prob"][:, 0].numpy(), 0.8)
    op = m["binary"]["operating_point"]
    assert op["threshold"] == threshold and op["validation"]["n_positive"] == covid.sum()
    assert m["n"] == len(test) and m["n_groups"] == len({ds.groups[i] for i in test.tolist()}) < m["n"]
    report = (run / "eval" / "report.md").read_text()
    assert f"bootstrap over {m['n_groups']} patients (groups)" in report and "chosen on validation" in report

    del best["validation"]  # a checkpoint from before best.pt kept them
    torch.save(best, run / "best.pt")
    m = evaluate(data, run, tmp_path, EvalConfig(bootstrap=20), device="cpu", quiet=True)
    assert m["binary"]["operating_point"] is None
    assert "holds no validation predictions" in (run / "eval" / "report.md").read_text()


def test_calibration_of_a_calibrated_and_of_an_over_confident_model():
    """Labels drawn from the probabilities themselves: ECE near 0. The same labels scored with sharpened
    probabilities (the top class pushed to 0.99): ECE near the gap between 0.99 and the true accuracy."""
    rng = np.random.default_rng(0)
    prob = rng.dirichlet([2, 2, 2], size=20000)
    y = np.array([rng.choice(3, p=p) for p in prob])
    w = np.ones((1, len(y)))
    calibrated = calibration(y, prob, w)
    assert calibrated["ece"][0] < 0.02
    sharp = np.full_like(prob, 0.005)
    sharp[np.arange(len(y)), prob.argmax(1)] = 0.99
    over = calibration(y, sharp, w)
    true_accuracy = (prob.argmax(1) == y).mean()
    assert abs(over["ece"][0] - (0.99 - true_accuracy)) < 0.01 and over["ece"][0] > 0.2
    assert over["count"].sum() == len(y) and np.nansum(over["count"][:-1]) == 0  # all in the top bin
    m = classification_metrics(y[:300], sharp[:300], ("a", "b", "c"), rounds=50)
    lo, hi = m["calibration"]["ece_ci"]
    assert lo <= m["calibration"]["ece"] <= hi


def test_brier_score_by_hand():
    prob = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    y = np.array([0, 2])
    brier = calibration(y, prob, np.ones((1, 2)))["brier"][0]
    assert brier == pytest.approx(((0.3 ** 2 + 0.2 ** 2 + 0.1 ** 2) + 6 / 9) / 2)
