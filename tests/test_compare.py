"""compare: DeLong, McNemar and Holm against hand computations, matching test sets by content, and the
whole command on two tiny runs trained by classify-train --backbones."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from augment.phantoms import write_phantoms
from classifier.compare import delong, delong_test, holm, mcnemar, midranks, shared_positions
from cli import cli
from conftest import assert_self_contained_report
from foundation.errors import UserError

DEMO = Path(__file__).resolve().parents[1] / "configs" / "classify-train-demo.yaml"


def test_midranks_share_tied_ranks():
    assert midranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_delong_on_a_case_computed_by_hand():
    # A: positives 0.9, 0.8, 0.4; negatives 0.7, 0.3.  B: positives 0.6, 0.9, 0.5; negatives 0.8, 0.2.
    positive = np.array([True, True, True, False, False])
    a = np.array([0.9, 0.8, 0.4, 0.7, 0.3])
    b = np.array([0.6, 0.9, 0.5, 0.8, 0.2])
    # placements of the positives among the negatives, V10: A (1, 1, 1/2), B (1/2, 1, 1/2);
    # of the negatives among the positives, V01: A (2/3, 1), B (1/3, 1).
    # AUC = mean V10: A 5/6, B 2/3.  S10 = [[1/12, 1/24], [1/24, 1/12]], S01 = [[1/18, 1/9], [1/9, 2/9]];
    # S = S10 / 3 + S01 / 2 = [[1/18, 5/72], [5/72, 5/36]]; var(A - B) = 1/18; z = (1/6) / sqrt(1/18) = 1/sqrt(2).
    auc, cov = delong(positive, np.stack([a, b]))
    assert np.allclose(auc, [5 / 6, 2 / 3])
    assert np.allclose(cov, [[1 / 18, 5 / 72], [5 / 72, 5 / 36]])
    t = delong_test(positive, a, b)
    assert t["statistic"] == pytest.approx(1 / math.sqrt(2))
    assert t["p"] == pytest.approx(math.erfc(0.5))  # two-sided normal p of z = 1/sqrt(2): 0.4795
    assert t["p"] == pytest.approx(0.4795, abs=1e-4)


def structural_components(positive, score):
    """DeLong's V10, V01 by direct pairwise comparison (the Mann-Whitney kernel, ties 1/2)."""
    x, y = score[positive], score[~positive]
    psi = (x[:, None] > y[None]) + 0.5 * (x[:, None] == y[None])
    return psi.mean(1), psi.mean(0)


def test_fast_delong_equals_the_pairwise_mann_whitney_computation():
    rng = np.random.default_rng(0)
    positive = rng.random(40) < 0.4
    scores = np.round(rng.random((3, 40)) + 0.5 * positive, 1)  # rounding makes ties
    auc, cov = delong(positive, scores)
    parts = [structural_components(positive, s) for s in scores]
    v10, v01 = np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts])
    assert np.allclose(auc, v10.mean(1))
    assert np.allclose(cov, np.cov(v10) / positive.sum() + np.cov(v01) / (~positive).sum())
    from sklearn.metrics import roc_auc_score
    assert np.allclose(auc, [roc_auc_score(positive, s) for s in scores])


def test_delong_needs_two_images_on_each_side():
    with pytest.raises(UserError, match="at least 2 positive and 2 negative"):
        delong(np.array([True, False, False]), np.array([0.3, 0.2, 0.1]))


def correctness(only_a, only_b, both=5, neither=3):
    a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
    return np.array(a), np.array(b)


def test_mcnemar_exact_below_25_discordant_images():
    t = mcnemar(*correctness(1, 6))
    assert (t["only_a"], t["only_b"], t["method"]) == (1, 6, "McNemar exact")
    assert t["p"] == pytest.approx(2 * (1 + 7) / 2 ** 7)  # P(X <= 1), X ~ Bin(7, 1/2), doubled: 0.125
    assert mcnemar(*correctness(0, 0))["p"] == 1.0
    assert mcnemar(*correctness(12, 12))["p"] == 1.0
    assert mcnemar(*correctness(12, 12))["method"] == "McNemar exact"


def test_mcnemar_chi_square_with_continuity_correction_from_25():
    t = mcnemar(*correctness(10, 25))
    assert t["method"] == "McNemar chi2 cc"
    assert t["statistic"] == pytest.approx((15 - 1) ** 2 / 35)  # 5.6
    assert t["p"] == pytest.approx(0.0179605, abs=1e-6)  # chi-square, 1 df, upper tail at 5.6
    assert mcnemar(*correctness(12, 13))["method"] == "McNemar chi2 cc"


def test_holm_on_known_p_values():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> running max 0.06
    assert np.allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]


def test_shared_positions_match_by_content_with_multiplicity():
    picked = shared_positions([["a", "b", "c", "b"], ["b", "c", "d"], ["c", "b", "b"]])
    assert [p.tolist() for p in picked] == [[1, 2], [0, 1], [1, 0]]
    assert [p.tolist() for p in shared_positions([["a"], ["b"]])] == [[], []]


@pytest.mark.slow
def test_backbones_train_then_compare_writes_the_table(tmp_path):
    data = write_phantoms(tmp_path / "data", 16, size=32, seed=0)
    out = tmp_path / "runs"
    common = ["--data", str(data), "--config", str(DEMO), "--out", str(out), "--device", "cpu",
              "--set", "data.size=32", "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "eval.bootstrap=20"]
    runner = CliRunner()
    r = runner.invoke(cli, ["classify-train", *common, "--backbones", "shallow", "resnet18", "--set", "model.input_size=32",
                            "--set", "model.width=8", "--set", "train.epochs=1", "--set", "train.tensorboard=false"])
    assert r.exit_code == 0, r.output
    runs = sorted((out / "classifier").iterdir())
    assert [json.loads((run / "run.json").read_text())["seed"] for run in runs] == [0, 0]
    dest = next((out / "compare").iterdir())
    assert f"comparison: {dest}/compare.md" in r.output
    result = json.loads((dest / "compare.json").read_text())
    assert [run["backbone"] for run in result["runs"]] == ["shallow", "resnet18"]
    assert {(t["run_a"], t["run_b"]) for t in result["tests"]} == {(runs[0].name, runs[1].name)}  # one pair
    tested = [t["metric"] for t in result["tests"]]
    assert tested[0] == "accuracy" and len(tested) == 1 + 3  # McNemar and a DeLong per class
    assert sorted(t["p_holm"] for t in result["tests"]) == pytest.approx(
        sorted(holm([t["p"] for t in result["tests"]])))
    n = result["n"]
    assert n == sum(map(sum, result["runs"][0]["metrics"]["confusion"])) and "note" not in result
    assert "| shallow |" in (dest / "compare.md").read_text() and (dest / "roc.png").is_file() and (dest / "roc.pdf").is_file()
    assert_self_contained_report(dest / "report.html", dest / "compare.md", ["roc.png"])
    # the same runs by the compare command, into a folder that then refuses to be overwritten
    args = ["compare", *common, str(runs[0]), str(runs[1]), "--dest", str(tmp_path / "cmp")]
    assert runner.invoke(cli, args).exit_code == 0
    again = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert again["tests"] == result["tests"]
    r = runner.invoke(cli, args)
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = runner.invoke(cli, ["compare", *common, str(runs[0])])
    assert r.exit_code == 2 and "at least two" in r.output


def test_backbones_flag_refuses_a_single_name_or_backbone_too(tmp_path):
    r = CliRunner().invoke(cli, ["classify-train", "--out", str(tmp_path), "--backbones", "vgg16"])
    assert r.exit_code == 2 and "two or more" in r.output
    r = CliRunner().invoke(cli, ["classify-train", "--out", str(tmp_path), "--backbone", "vgg16",
                                 "--backbones", "vgg16,resnet50"])
    assert r.exit_code == 2 and "replaces --backbone" in r.output
    r = CliRunner().invoke(cli, ["classify-train", "--out", str(tmp_path), "vgg16", "resnet50"])
    assert r.exit_code == 2 and "--backbones vgg16 resnet50" in r.output
