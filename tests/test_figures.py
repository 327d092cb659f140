"""Publication figures (ROC with bands and operating point, PR steps, confusion with rates, CAM overlays),
and the training history: history.csv per epoch, across a resume, best_metrics.json and TensorBoard."""
import csv
import json

import numpy as np
import pytest
import torch
from matplotlib.collections import PolyCollection
from PIL import Image

from augment.phantoms import write_phantoms
from classifier.config import EvalConfig
from classifier.evaluate import evaluation_figures
from classifier.metrics import classification_metrics, roc_band, roc_curve
from classifier.model import create_model
from classifier.overlays import write_overlays
from classifier.plots import FPR_GRID, overlay_figure, save_figure
from classifier.train import Trainer, train
from conftest import sigint_at_call, tiny_classifier_config
from foundation.bootstrap import bootstrap_weights

CLASSES = ("covid", "normal", "pneumonia")
CM = [[8, 2, 0], [1, 9, 0], [0, 0, 0]]  # no pneumonia image


def case(operating_point=True):
    """20 images of 10 patients: known confusion matrix ``CM``; the covid-vs-rest operating point given."""
    y = np.repeat([0, 1], 10)
    pred = np.array([0] * 8 + [1] * 2 + [0] + [1] * 9)
    prob = np.full((20, 3), 0.1)
    prob[np.arange(20), pred] = 0.8
    prob[:, 0] += np.linspace(0, 0.05, 20)  # distinct covid scores
    prob /= prob.sum(1, keepdims=True)
    groups = [i // 2 for i in range(20)]
    cfg = EvalConfig(bootstrap=200)
    m = classification_metrics(y, prob, CLASSES, cfg.bootstrap, cfg.ci_level, 0, groups)
    op = {"threshold": 0.5, "sensitivity": 0.8, "specificity": 0.9} if operating_point else None
    m["binary"] = {"positive_class": "covid", "specificity_target": 0.9, "operating_point": op}
    figures = evaluation_figures(y, prob, CLASSES, m, cfg, 0, groups, "shallow run r1\nphantoms, test split")
    return figures, m, y, prob, groups


@pytest.fixture(scope="module")
def figures():
    return case()


def texts(fig):
    return [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]


@pytest.mark.slow
def test_every_figure_is_a_300_dpi_png_and_a_pdf(tmp_path, figures):
    for name, fig in figures[0].items():
        png, pdf = save_figure(fig, tmp_path / name)
        assert (png.name, pdf.name) == (f"{name}.png", f"{name}.pdf")
        assert Image.open(png).info["dpi"] == pytest.approx((300, 300), abs=0.01)
        assert pdf.read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.{e}" for n in figures[0] for e in ("pdf", "png"))


def test_roc_legend_band_and_operating_point(figures):
    figs, m, y, prob, groups = figures
    ax = figs["roc"].axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    for name in CLASSES[:2]:
        auc, (lo, hi) = m["per_class"][name]["auc"], m["per_class"][name]["auc_ci"]
        assert f"{name}: AUC {auc:.3f} [{lo:.3f}, {hi:.3f}]" in legend
    assert any("95 % pointwise bootstrap band" in t for t in legend)
    assert "test split" in ax.get_title() and "shallow run r1" in ax.get_title()
    [point] = [line for line in ax.get_lines() if line.get_gid() == "operating-point"]
    assert (point.get_xdata()[0], point.get_ydata()[0]) == pytest.approx((0.1, 0.8))
    assert "threshold 0.500" in point.get_label() and point.get_markerfacecolor() == ax.get_lines()[1].get_color()
    band = [c for c in ax.collections if isinstance(c, PolyCollection) and c.get_gid() == "band-0"]
    assert len(band) == 1  # covid's band
    no_point = case(operating_point=False)[0]["roc"].axes[0]
    assert not [line for line in no_point.get_lines() if line.get_gid() == "operating-point"]


def test_roc_band_reads_each_resampled_curve_as_drawn():
    positive = np.array([True, False, True, False])
    score = np.array([0.9, 0.8, 0.8, 0.1])  # a tie: the curve rises and moves right at once
    fpr, tpr, _ = roc_curve(positive, score)
    grid = np.array([0.0, 0.25, 0.5, 1.0])
    lo, hi = roc_band(positive, score, np.ones((5, 4)), grid)  # every round the full set: no spread
    assert np.allclose(lo, hi) and np.allclose(hi, np.interp(grid, fpr, tpr)) and np.allclose(hi, [0.5, 0.75, 1, 1])
    vertical = roc_band(np.array([True, True, False]), np.array([0.9, 0.8, 0.1]), np.ones((1, 3)), grid)[1]
    assert vertical[0] == 1.0  # the top of a vertical step at fpr 0
    # patients resampled: rounds without a negative are left out, the band brackets the full-set curve
    pos = np.arange(40) % 2 == 0
    s = np.random.default_rng(0).random(40) + 0.3 * pos
    w = bootstrap_weights(40, 300, 0, [i // 4 for i in range(40)])
    lo, hi = roc_band(pos, s, w, FPR_GRID)
    full = np.interp(FPR_GRID, *roc_curve(pos, s)[:2])
    assert (lo <= full + 1e-9).all() and (hi >= full - 1e-9).all() and (hi - lo).max() > 0.2


def test_pr_is_a_step_plot_whose_area_is_the_average_precision_with_prevalence_baselines(figures):
    figs, m, y = figures[0], figures[1], figures[2]
    lines = {line.get_label(): line for line in figs["pr"].axes[0].get_lines()}
    for c, name in enumerate(CLASSES[:2]):
        ap = m["per_class"][name]["average_precision"]
        curve = lines[f"{name}: AP {ap:.3f}"]
        assert curve.get_drawstyle() == "steps-post"
        x, p = curve.get_xdata(), curve.get_ydata()
        assert np.sum((x[:-1] - x[1:]) * p[:-1]) == pytest.approx(ap)  # steps-post holds p over [x_{i+1}, x_i]
        baseline = lines[f"{name} prevalence {np.mean(y == c):.3f}"]
        assert baseline.get_ydata()[0] == pytest.approx(np.mean(y == c))


def test_confusion_cells_show_counts_and_row_percentages(figures):
    assert figures[1]["confusion"] == CM
    shown = texts(figures[0]["confusion"])
    for cell in ("8\n80.0 %", "2\n20.0 %", "0\n0.0 %", "1\n10.0 %", "9\n90.0 %", "0\n–"):
        assert cell in shown, cell


def test_cam_overlay_has_a_colour_bar_and_the_class_and_probability_on_the_image(tmp_path):
    fig = overlay_figure(np.zeros((16, 16), np.uint8), np.eye(16), "covid", 0.873, "a.png: Grad-CAM")
    assert len(fig.axes) == 3 and fig.axes[2].get_ylabel() == "activation (normalised)"
    assert "covid  p = 0.87" in [t.get_text() for t in fig.axes[1].texts]
    model = create_model("shallow", 3, width=8).eval()
    images = torch.randint(0, 255, (2, 1, 32, 32), dtype=torch.uint8)
    written, faith = write_overlays(model, images, ["x/a.png", "b.png"], CLASSES, 32, torch.device("cpu"), "cam",
                                    tmp_path, target_class="normal")
    assert [p.name[:9] for p in written] == ["a_normal_", "b_normal_"] and set(faith) == {
        "average_drop_pct", "increase_in_confidence_pct"}
    assert Image.open(written[0]).info["dpi"] == pytest.approx((300, 300), abs=0.01)


# ---------------------------------------------------------------- history
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_phantoms(tmp_path_factory.mktemp("phantoms"), 12, size=32, seed=0)


def history(run):
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data):
    """Two epochs without interruption, logged to TensorBoard."""
    tmp = tmp_path_factory.mktemp("straight")
    return train(tiny_classifier_config(tmp, "train.tensorboard=true"), data, tmp, device="cpu", quiet=True)


def test_history_best_metrics_and_tensorboard_of_a_two_epoch_run(straight):
    run = straight
    rows = history(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "accuracy", "macro_f1", "sensitivity_covid",
                             "sensitivity_normal", "sensitivity_pneumonia", "macro_auc", "lr", "seconds"]
    assert all(float(r["train_loss"]) > 0 and float(r["val_loss"]) > 0 and float(r["seconds"]) > 0 for r in rows)
    best = json.loads((run / "best_metrics.json").read_text())
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert best["epoch"] == ckpt["epoch"] and best["macro"]["f1"] == pytest.approx(ckpt["val_macro_f1"])
    assert float(rows[best["epoch"] - 1]["val_loss"]) == pytest.approx(best["loss"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run)).Reload()
    assert {"val/confusion", "val/roc"} <= set(events.Tags()["images"])
    assert {"val/loss", "val/macro_auc"} <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("val/loss")] == pytest.approx([float(r["val_loss"]) for r in rows])


def test_history_continues_after_a_resume_without_duplicate_epochs(tmp_path, data, monkeypatch, straight):
    cfg = tiny_classifier_config(tmp_path)
    step = sigint_at_call(monkeypatch, Trainer, "train_step", 4)  # 3 steps per epoch: mid second epoch
    run = train(cfg, data, tmp_path / "b", device="cpu", quiet=True)
    monkeypatch.setattr(Trainer, "train_step", step)
    rows = history(run)
    assert [r["epoch"] for r in rows] == ["1"]
    with open(run / "history.csv", "a", newline="") as f:  # as if killed after writing epoch 2's row but before last.pt
        csv.DictWriter(f, fieldnames=list(rows[0])).writerow(rows[0] | {"epoch": "2", "train_loss": "99"})
    resumed = history(train(cfg, data, resume=run, device="cpu", quiet=True))
    assert [r["epoch"] for r in resumed] == ["1", "2"]
    for a, b in zip(history(straight), resumed):  # the resumed epoch's mean loss counts the steps before the stop
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
