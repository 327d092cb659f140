"""The GAN diagnostics on constructed cases whose answers are known: where a planted change falls, probes that
see a translation move along the disease or the source direction, copies and fresh samples, synthetic films
that do or do not differ from real ones, a planted checkerboard, the figure and the markdown summary."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cyclegan.diagnostics import (_mann_whitney_z, checkerboard_peak, copy_test, diagnostics_markdown,
                                  lung_change_ratio, lung_change_summary, probe_shifts, synthetic_vs_real_auc,
                                  translation_grid)
from foundation.probes import probe_logits


# ---------------------------------------------------------------- where the change falls
def test_lung_change_ratio_has_the_known_answers():
    masks = torch.zeros(4, 1, 8, 8, dtype=torch.bool)
    masks[..., :2] = True                          # lungs: a quarter of the film
    sources = torch.full((4, 1, 8, 8), 0.5)
    translated = sources.clone()
    translated[0, 0, 3, 1] += 0.2                  # inside only: 1 / (1/4)
    translated[1, 0, 3, 6] -= 0.2                  # outside only
    translated[2] += 0.1                           # everywhere alike: no preference
    ratio = lung_change_ratio(sources, translated, masks)  # film 3 unchanged
    np.testing.assert_allclose(ratio[:3], [4.0, 0.0, 1.0])
    assert np.isnan(ratio[3])
    assert np.isnan(lung_change_ratio(sources, translated, torch.zeros_like(masks))).all()  # no lungs
    summary = lung_change_summary(ratio, ["p", "p", "q", "r"], rounds=50)
    assert summary["value"] == pytest.approx(5 / 3) and summary["n"] == 3 and summary["n_undefined"] == 1
    assert summary["n_groups"] == 2 and summary["ci"][0] <= 5 / 3 <= summary["ci"][1]
    with pytest.raises(ValueError, match="must all be"):
        lung_change_ratio(sources, translated, masks[:, :, :4])


# ---------------------------------------------------------------- disease or hospital
def test_fold_probes_score_other_images_as_the_out_of_fold_probe_does():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 3))
    y = (x[:, 0] > 0).astype(int)
    folds = np.arange(30) % 3
    oof, (again,) = probe_logits(x, y, folds, others=(x,))
    assert again.shape == (3, 30, 2)
    np.testing.assert_allclose(again[folds, np.arange(30)], oof, atol=1e-10)


def _two_hospitals(covid_in_both: bool = True, seed: int = 0):
    """Real training films of hospitals a (100 patients) and b (150), two films each, half of each hospital's
    patients covid (else: all of b covid, all of a normal). Feature 0 tells hospital b (+3), feature 1 covid
    (+3), four more are noise. Domain-A films: 20 new normal films of hospital a, two per patient."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(250), 2)
    hospital = np.where(np.arange(250) < 100, "a", "b")[groups]
    covid = (np.arange(250) % 2 == 0)[groups] if covid_in_both else hospital == "b"
    x = rng.normal(size=(500, 6))
    x[:, 0] += 3 * (hospital == "b")
    x[:, 1] += 3 * covid
    train = dict(train_features=x, train_labels=np.where(covid, "covid", "normal").tolist(),
                 train_sources=hospital.tolist(), train_groups=groups.tolist())
    sources = rng.normal(size=(20, 6))
    return train, sources, dict(source_sources=["a"] * 20, source_groups=np.repeat(np.arange(100, 110), 2).tolist())


def _moved(direction: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    train, sources, pairs = _two_hospitals()
    step = np.zeros(6)
    step[direction] = 3
    translated = sources + step + 0.3 * np.random.default_rng(seed).normal(size=sources.shape)
    return probe_shifts(train["train_features"], train["train_labels"], train["train_sources"], sources,
                        translated, "covid", train_groups=train["train_groups"], rounds=200, **pairs)


@pytest.fixture(scope="module")
def towards_disease():
    return _moved(direction=1)


def test_a_translation_along_the_disease_direction_moves_the_disease_probe_only(towards_disease):
    result = towards_disease
    disease, source = result["disease_probe"], result["source_probe"]
    assert result["target_source"] == "b" and disease["source"] == "b"  # b holds most covid films
    assert disease["n_target"] == disease["n_other"] == 150 and source["sources"] == {"a": 200, "b": 300}
    assert disease["auc"] > 0.95 and source["accuracy"] > 0.85  # both probes work out of fold
    assert disease["shift"]["value"] == pytest.approx(1, abs=0.15)
    assert disease["shift"]["ci"][0] < disease["shift"]["value"] < disease["shift"]["ci"][1]
    assert abs(source["shift"]["value"]) < 0.15
    assert result["disease_minus_source"]["value"] == pytest.approx(1, abs=0.3)
    assert disease["shift_raw"]["value"] == pytest.approx(disease["shift"]["value"] * disease["gap"])
    assert json.loads(json.dumps(result)) == result  # plain values, ready for the JSON report


def test_a_translation_along_the_source_direction_moves_the_source_probe_only():
    result = _moved(direction=0)
    assert result["source_probe"]["shift"]["value"] == pytest.approx(1, abs=0.15)
    assert abs(result["disease_probe"]["shift"]["value"]) < 0.15
    assert result["disease_minus_source"]["ci"][1] < 0


def test_the_disease_probe_says_why_it_did_not_run():
    train, sources, pairs = _two_hospitals(covid_in_both=False)
    result = probe_shifts(train["train_features"], train["train_labels"], train["train_sources"], sources,
                          sources + 1, "covid", train_groups=train["train_groups"], rounds=0, **pairs)
    assert "no source has both covid and other" in result["disease_probe"]["unavailable"]
    assert "shift" in result["source_probe"] and result["disease_minus_source"] is None
    with pytest.raises(ValueError, match="no training film of class 'pneumonia'"):
        probe_shifts(train["train_features"], train["train_labels"], train["train_sources"], sources, sources,
                     "pneumonia", train_groups=train["train_groups"], rounds=0, **pairs)


# ---------------------------------------------------------------- copies
def test_mann_whitney_z_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 6, 40).astype(float), rng.integers(1, 7, 50).astype(float)
    test = stats.mannwhitneyu(x, y, use_continuity=False, method="asymptotic")
    z = _mann_whitney_z(x, y)
    assert z < 0 and stats.norm.sf(abs(z)) * 2 == pytest.approx(test.pvalue, rel=1e-9)


def test_copies_of_training_films_are_caught_and_fresh_samples_are_not():
    rng = np.random.default_rng(0)
    train, heldout = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    copies = copy_test(train, heldout, train[:200] + 0.01 * rng.normal(size=(200, 8)))
    assert copies["z_u"] < -10 and copies["flagged_share"] > 0.95
    assert copies["median_distance_translated"] < copies["median_distance_heldout"]
    fresh = copy_test(train, heldout, rng.normal(size=(300, 8)))
    assert json.loads(json.dumps(fresh)) == fresh
    assert abs(fresh["z_u"]) < 2.5 and 0.02 <= fresh["flagged_share"] <= 0.09
    assert fresh["flagged"] == sorted(fresh["flagged"]) and len(fresh["flagged"]) == round(300 * fresh["flagged_share"])


# ---------------------------------------------------------------- tell-tales
def test_the_synthetic_vs_real_probe_sees_a_shift_and_nothing_else():
    rng = np.random.default_rng(0)
    real, groups = rng.normal(size=(80, 5)), np.repeat(np.arange(40), 2).tolist()
    alike = synthetic_vs_real_auc(real, rng.normal(size=(80, 5)), groups, [g + 40 for g in groups], rounds=200)
    assert alike["ci"][0] < 0.5 < alike["ci"][1] and abs(alike["auc"] - 0.5) < 0.15
    assert alike["n_real"] == alike["n_synthetic"] == 80 and alike["n_groups"] == 80
    shifted = synthetic_vs_real_auc(real, rng.normal(size=(80, 5)) + [2, 2, 0, 0, 0], groups, [g + 40 for g in groups],
                                    rounds=200)
    assert shifted["auc"] > 0.95 and shifted["ci"][0] > 0.9
    assert "unavailable" in synthetic_vs_real_auc(real[:4], real[4:8], [0, 0, 1, 1], [2, 2, 3, 3])


def _smooth_images(n: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Gaussian-blurred (σ 1 px) noise on a gentle gradient: no periodic pattern."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(-4, 5, dtype=torch.float64)
    kernel = torch.exp(-t ** 2 / 2)
    kernel = (kernel[:, None] * kernel[None]) / kernel.sum() ** 2
    noise = F.conv2d(F.pad(torch.rand(n, 1, size, size, generator=g, dtype=torch.float64), (4,) * 4, mode="reflect"),
                     kernel[None, None])
    return 0.3 + 0.2 * noise + torch.linspace(0, 0.2, size, dtype=torch.float64)


def test_a_planted_checkerboard_stands_out_of_its_ring_and_smooth_images_do_not():
    smooth = _smooth_images()
    assert checkerboard_peak(smooth)["max"] < 10
    j = torch.arange(32)
    board = smooth + 0.02 * (-1.0) ** (j[:, None] + j[None])      # period 2 along both axes
    stripes = smooth + 0.02 * (-1.0) ** (j // 2)                   # period 4 along x
    ratio = checkerboard_peak(board)["ratio"]
    assert ratio["2px_xy"] > 100 and max(ratio["2px_x"], ratio["2px_y"]) < 10
    ratio = checkerboard_peak(stripes)["ratio"]
    assert ratio["4px_x"] > 100 and ratio["4px_y"] < 10 and checkerboard_peak(stripes)["n"] == 8
    with pytest.raises(ValueError, match="multiple of 4"):
        checkerboard_peak(smooth[..., :30, :30])


# ---------------------------------------------------------------- for the reader
def test_the_grid_writes_a_png_and_a_pdf_with_one_row_per_film(tmp_path):
    smooth = _smooth_images(3).float()
    masks = torch.zeros(3, 1, 32, 32, dtype=torch.bool)
    masks[..., 8:24, 4:14] = True
    translated = (smooth + 0.2 * masks).clamp(0, 1)
    translation_grid(smooth, translated, masks, tmp_path / "three.png", tmp_path / "three.pdf", ["a", "b", "$c"])
    translation_grid(smooth[:1], translated[:1], None, tmp_path / "one.png", tmp_path / "one.pdf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.pdf", "one.png", "three.pdf", "three.png"]
    with Image.open(tmp_path / "three.png") as three, Image.open(tmp_path / "one.png") as one:
        assert three.width == one.width and 2.3 < three.height / one.height < 3.1
    assert (tmp_path / "three.pdf").read_bytes().startswith(b"%PDF")


def test_the_markdown_names_the_feature_space_and_reads_each_measure(towards_disease):
    rng = np.random.default_rng(0)
    result = {"features": "intensity_texture_features",
              "lung_change": {"value": 2.3, "ci": [1.9, 2.8], "n": 10, "n_groups": 5, "n_undefined": 0},
              "probes": towards_disease,
              "copies": copy_test(rng.normal(size=(50, 3)), rng.normal(size=(50, 3)), rng.normal(size=(50, 3))),
              "synthetic_vs_real": {"auc": 0.71, "ci": [0.65, 0.77], "n_real": 9, "n_synthetic": 9, "n_groups": 9,
                                    "folds": 5},
              "checkerboard": {"translated": {"max": 35.0}, "real": {"max": 1.8}}}
    text = diagnostics_markdown(result)
    assert "intensity_texture_features" in text
    assert "concentrate in the lungs 2.3× their area share [1.9, 2.8]" in text
    assert "moved the disease probe 0.96 [0.92, 1.00] of the real gap (covid vs other films of b" in text
    assert "AUC 0.71 [0.65, 0.77]" in text and "35.0 in translations, 1.8 in real films" in text
    assert len([line for line in text.splitlines() if line.startswith("| ")]) == 1 + 10  # the header and ten rows
    probes = dict(towards_disease, disease_probe={"unavailable": "no source has both covid and other training films"},
                  disease_minus_source=None)
    short = diagnostics_markdown({"features": "f", "probes": probes})
    assert "The disease probe did not run: no source has both" in short and "lungs" not in short
