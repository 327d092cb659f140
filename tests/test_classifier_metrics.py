"""Metrics against hand-computed cases, and the coverage of the bootstrap intervals."""
import numpy as np
import pytest

from classifier.metrics import (bootstrap_weights, classification_metrics, confusion_counts, interval, pr_curve,
                                rates, roc_curve, sensitivity_at_specificity, weighted_auc)

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
