"""experiments/cxr3_suite.py at --scale tiny on phantoms: every stage's figures, then a rerun that keeps
finished units, then a budget too small for the next unit."""
import argparse
import contextlib
import csv
import io
import json
import os
import subprocess
import shutil
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from augment.data import DataConfig, load_dataset
from augment.phantoms import write_phantoms

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("recipe", "gan", "ablation", "audit")


def run_suite(tmp_path: Path, data: Path, *extra: str, in_process: bool = False) -> subprocess.CompletedProcess:
    """The suite at scale tiny, as a command; ``in_process`` for calls that start no command (they stop, refuse or
    keep finished units), which then skip the interpreter's start-up."""
    args = ["--data", str(data), "--out", str(tmp_path / "out"), "--lungs-data", str(data), "--report",
            str(tmp_path / "report"), "--scale", "tiny", "--device", "cpu", "--stages", *STAGES, *extra]
    if not in_process:
        return subprocess.run([sys.executable, "experiments/cxr3_suite.py", *args], cwd=ROOT, capture_output=True,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    sys.path.insert(0, str(ROOT / "experiments"))
    from cxr3_suite import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.mark.slow
def test_tiny_suite_gives_every_stage_keeps_finished_units_and_stops_before_a_unit_beyond_its_budget(tmp_path):
    data = write_phantoms(tmp_path / "data", 12, 32, seed=0, masks=True)
    out = tmp_path / "out"
    r = run_suite(tmp_path, data)
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((out / "summary.json").read_text())
    st = s["stages"]
    assert s["stopped"] is None and not s["failed"] and s["scale"] == "tiny" and s["torch"]
    ours = st["recipe"]["backbones"]["shallow"]["ours"]
    assert 0 <= ours["accuracy"] <= 1 and set(ours["sensitivity"]) == {"covid", "normal", "pneumonia"}
    assert set(ours["per_source"]) == {"phantom"} and ours["train_s"] > 0
    assert st["recipe"]["targets"]["best_backbone"] == "shallow"
    assert s["skipped"]["recipe/usual-shallow-seed0"] == "no --usual given"
    gan = st["gan"]
    assert gan["train"]["steps"] == 4 and gan["train"]["it_s"] > 0
    assert gan["eval"]["features"] == "classifier_penultimate_features" and 0 <= gan["eval"]["share_called_b"] <= 1
    assert gan["eval"]["fd"] >= 0 and gan["eval"]["n_translated"] > 0
    assert gan["tstr"]["n_synthetic"] > 0 and 0 <= gan["tstr"]["accuracy"] <= 1
    report = tmp_path / "report"  # flat and few files, as a GPU machine hands them back
    assert sorted(p.name for p in report.iterdir()) == ["gan-translations.png", "logs.tar.gz", "summary.json",
                                                          "summary.md"]
    with tarfile.open(report / "logs.tar.gz") as tar:
        assert "logs/gan/train.log" in tar.getnames()
    grid = Image.open(report / "gan-translations.png")
    assert grid.mode == "L" and grid.height >= 32 and grid.width >= 2 * 32 + 1
    ablation = st["ablation"]["f0.25"]
    assert set(ablation["conditions"]) == {"real", "classic", "synthetic"} and ablation["minority_fraction"] == 0.25
    audit = st["audit"]
    assert audit["lungseg"]["dice"] > 0
    assert audit["audit/default"]["input"] == "whole images" and audit["audit/lung-crop"]["input"] == "data.lung_crop=true"
    for key in ("audit/default", "audit/lung-crop"):
        assert 0 <= audit[key]["accuracy"]["hidden"]["value"] <= 1 and 0 <= audit[key]["cam_in_lungs"]["value"] <= 1
        assert set(audit[key]["per_source"]) == {"phantom"} and "skipped" in audit[key]["source_probe"]
    for name, unit in s["units"].items():
        assert unit["seconds"] > 0 and unit["commands"] and all(c.startswith("python ") for c in unit["commands"])
    assert json.loads((tmp_path / "report" / "summary.json").read_text()) == s
    md = (tmp_path / "report" / "summary.md").read_text()
    assert all(f"## {title}" in md for title in ("recipe", "gan", "ablation f0.25", "lung segmenter and audit",
                                                 "Commands"))

    results = {p: p.stat().st_mtime_ns for p in (out / "results").rglob("*.json")}
    folders = sorted(p for p in (out / "runs").rglob("*") if p.is_dir())
    (out / "summary.json").unlink()
    r = run_suite(tmp_path, data, in_process=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("done earlier, kept") == len(results) == len(s["units"])
    assert json.loads((out / "summary.json").read_text())["units"] == s["units"]  # written when nothing ran too
    assert {p: p.stat().st_mtime_ns for p in (out / "results").rglob("*.json")} == results
    assert sorted(p for p in (out / "runs").rglob("*") if p.is_dir()) == folders

    took = json.loads((out / "results" / "gan" / "eval.json").read_text())["seconds"]
    (out / "results" / "gan" / "eval.json").unlink()
    r = run_suite(tmp_path, data, "--budget-s", str(took / 4), in_process=True)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "remaining: gan/eval" in r.stdout and not (out / "results" / "gan" / "eval.json").exists()
    s = json.loads((out / "summary.json").read_text())
    assert s["remaining"] == ["gan/eval"] and "budget" in s["stopped"] and "eval" not in s["stages"].get("gan", {})
    assert sorted(p for p in (out / "runs").rglob("*") if p.is_dir()) == folders

    r = run_suite(tmp_path, data, "--scale", "cpu", in_process=True)
    assert r.returncode == 2 and "other settings" in r.stderr and not (out / "runs" / "recipe" / "ours-resnet18-seed0").exists()

    # another machine: the report's results count, but the runs gan/eval reads stayed behind, so they train again
    shutil.copy(tmp_path / "report" / "summary.json", tmp_path / "earlier.json")
    shutil.rmtree(out)
    r = run_suite(tmp_path, data, "--stages", "gan", "--results-from", str(tmp_path / "earlier.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    for unit in ("recipe/ours-shallow-seed0: running", "gan/train: running", "gan/eval: running",
                 "gan/tstr: done earlier, kept"):
        assert unit in r.stdout, r.stdout
    assert json.loads((out / "results" / "gan" / "tstr.json").read_text()) == s["units"]["gan/tstr"]


@pytest.mark.slow
def test_results_from_a_file_that_is_no_summary_of_this_scale_is_a_one_line_error(tmp_path):
    data = write_phantoms(tmp_path / "data", 2, 32, seed=0)
    for summary, message in [({"scale": "tiny"}, "not a summary.json of this suite"),
                             ({"scale": "cpu", "units": {}}, "a suite at scale cpu, not tiny"),
                             (None, "no such file or folder")]:
        path = tmp_path / "earlier.json"
        path.unlink(missing_ok=True)
        if summary is not None:
            path.write_text(json.dumps(summary))
        r = run_suite(tmp_path, data, "--results-from", str(path), in_process=True)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "out" / "results").exists()


@pytest.mark.slow
def test_levers_are_planned_on_folds_of_the_training_split_only_and_unknown_ones_are_refused(tmp_path):
    sys.path.insert(0, str(ROOT / "experiments"))
    from cxr3_suite import Suite
    data = write_phantoms(tmp_path / "data", 12, 32, seed=0)
    args = dict(scale="tiny", data=str(data), out=str(tmp_path / "out"), lungs_data=str(data), usual=None,
                screen_seeds=1, budget_s=None, commit=None, full_ablation=False)
    every = [u.name for u in Suite(argparse.Namespace(**args, levers=None)).plan(["levers"])]
    assert every == ["lungseg", *[f"levers/{name}-fold{k}" for k in (0, 1) for name in ("base", "mixup", "lung-crop")]]
    suite = Suite(argparse.Namespace(**args, levers=["mixup"]))
    assert [u.name for u in suite.plan(["levers"])] == [f"levers/{n}-fold{k}" for k in (0, 1) for n in ("base", "mixup")]
    ds = load_dataset(data, DataConfig(cache_dir=str(tmp_path / "cache")), quiet=True)
    training = {str((ds.root / ds.paths[i]).resolve()) for i in ds.indices("train").tolist()}
    tested = []
    for k in (0, 1):
        with open(suite.screen_fold(k), newline="") as f:
            rows = list(csv.DictReader(f))
        parts = {part: {r["group_id"] for r in rows if r["split"] == part} for part in ("train", "val", "test")}
        assert all(parts.values()) and not (parts["train"] & parts["val"] or parts["train"] & parts["test"]
                                            or parts["val"] & parts["test"])
        assert {r["path"] for r in rows} == training  # the training split, whole: no validation or test film
        tested += [r["path"] for r in rows if r["split"] == "test"]
    assert sorted(tested) == sorted(training)  # every training film is scored once, by the fold that holds it out

    r = run_suite(tmp_path, data, "--levers", "mixup", "cutmix", in_process=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--levers cutmix: no such lever at scale tiny; choose from mixup, lung-crop" in r.stderr
    r = subprocess.run([sys.executable, "experiments/cxr3_suite.py", "--data", str(data), "--out", str(tmp_path / "o2"),
                        "--scale", "tiny", "--stages", "levers", "--levers", "lung-crop"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: --levers lung-crop needs --lungs-data (lung image/mask pairs to train the segmenter on)")
    assert not (tmp_path / "o2").exists()


@pytest.mark.slow
def test_a_lever_trains_within_the_time_budget_of_its_folds_base_run(tmp_path):
    import dataclasses
    sys.path.insert(0, str(ROOT / "experiments"))
    from cxr3_suite import SCALES, Suite
    data = write_phantoms(tmp_path / "data", 12, 32, seed=0)
    args = dict(scale="tiny", data=str(data), out=str(tmp_path / "out"), lungs_data=None, usual=None, levers=None,
                screen_seeds=1, budget_s=None, commit=None, full_ablation=False, device="cpu", report=None)
    suite = Suite(argparse.Namespace(**args))
    tiny = SCALES["tiny"]
    suite.scale = dataclasses.replace(tiny, classifier_sets=(*tiny.classifier_sets, "train.time_budget=1m"))
    planned = {u.name: u for u in suite.plan(["levers"])}
    assert planned["levers/mixup-fold0"].needs == ("levers/base-fold0",)
    with contextlib.redirect_stdout(io.StringIO()):
        suite.run([planned["levers/base-fold0"], planned["levers/mixup-fold0"]])
    assert not suite.failed, suite.failed
    base, mixup = (suite.result(f"levers/{n}-fold0") for n in ("base", "mixup"))
    assert base["budget_s"] == 60.0 and mixup["overrides"] == ["train.mixup=0.2"]
    assert "train.time_budget=60.0s" in mixup["commands"][0]  # after the config's own budget, so it decides
    assert json.loads((ROOT / mixup["run"] / "run.json").read_text())["budget"]["budget_s"] == 60.0


FAKE_USUAL = """import argparse, csv, json, pathlib
ap = argparse.ArgumentParser()
for flag in ("--data", "--models", "--device", "--size", "--epochs", "--workers"):
    ap.add_argument(flag)
a = ap.parse_args()
rows = list(csv.DictReader(open(pathlib.Path(a.data) / "manifest.csv")))
val = [r for r in rows if r["split"] == "val"]
assert all(pathlib.Path(r["path"]).is_file() for r in rows)
print(json.dumps({"accuracy": len(val) / 1000, "acc_ci95": [0, 1], "epochs": 1, "train_s": 1.0,
                  **{f"{c}_{m}": 0.5 for c in ("covid", "normal", "pneumonia") for m in ("sens", "spec")},
                  "acc_phantom": f"0.5 (n={len(val)})", "n_train": sum(r["split"] == "train" for r in rows)}))
"""


@pytest.mark.slow
def test_the_usual_recipe_runs_on_each_screen_fold_trained_on_its_training_part_and_scored_on_its_test_part(tmp_path):
    sys.path.insert(0, str(ROOT / "experiments"))
    from cxr3_suite import Suite
    data = write_phantoms(tmp_path / "data", 12, 32, seed=0)
    usual = tmp_path / "usual_accuracy.py"
    usual.write_text(FAKE_USUAL)
    args = dict(scale="tiny", data=str(data), out=str(tmp_path / "out"), lungs_data=None, usual=str(usual),
                screen_seeds=1, budget_s=None, commit=None, full_ablation=False, device="cpu", report=None)
    units = Suite(argparse.Namespace(**args, levers=None)).plan(["levers"])
    assert [u.name for u in units] == [f"levers/{n}-fold{k}" for k in (0, 1)
                                       for n in ("base", "mixup", "usual", "usual-time")]
    suite = Suite(argparse.Namespace(**args, levers=["usual"]))
    with contextlib.redirect_stdout(io.StringIO()):
        suite.run([u for u in suite.plan(["levers"]) if u.name.startswith("levers/usual-")])
    assert not suite.failed, suite.failed
    for k in (0, 1):
        figures = suite.result(f"levers/usual-fold{k}")
        with open(suite.screen_fold(k), newline="") as f:
            fold = list(csv.DictReader(f))
        tested = [r for r in fold if r["split"] == "test"]
        with open(tmp_path / "out" / "screen" / f"usual-fold{k}" / "manifest.csv", newline="") as f:
            given = [(r["path"], r["split"]) for r in csv.DictReader(f)]
        assert given == [(r["path"], {"train": "train", "test": "val"}[r["split"]]) for r in fold
                         if r["split"] != "val"]  # the fold's validation part takes no part
        assert figures["fold"] == k and figures["n"] == len(tested) and figures["accuracy"] == len(tested) / 1000
        assert sum(figures["support"].values()) == len(tested) and figures["split"] == f"fold {k}"
    # the config at the usual recipe's time: its budget is the usual recipe's measured wall time on that fold
    suite = Suite(argparse.Namespace(**args, levers=["usual-time"]))
    at_time = next(u for u in suite.plan(["levers"]) if u.name == "levers/usual-time-fold0")
    assert at_time.needs == ("levers/usual-fold0",)
    with contextlib.redirect_stdout(io.StringIO()):
        suite.run([at_time])
    assert not suite.failed, suite.failed
    seconds = round(suite.result("levers/usual-fold0")["wall_s"])
    assert f"train.time_budget={seconds}s" in suite.result("levers/usual-time-fold0")["commands"][0]
    for name in ("usual", "usual-time"):
        assert run_suite(tmp_path, data, "--levers", name, in_process=True).stderr.strip() == (
            f"error: --levers {name} needs --usual (the usual recipe's script, usual_accuracy.py)")


def test_the_screen_pools_the_folds_and_chooses_on_them():
    """Each lever's out-of-fold figures pool its folds by films (sensitivity by each class's films); its difference
    from the config as it is comes fold by fold, with the sign in each; the highest pooled accuracy wins."""
    sys.path.insert(0, str(ROOT / "experiments"))
    from cxr3_suite import SCALES, markdown, screen_summary

    def unit(name, fold, accuracy, n, covid, covid_n):
        at = None if name == "usual" else {"sensitivity": covid / 2, "n_positive": covid_n}  # the usual: no val split
        return {"unit": f"levers/{name}-fold{fold}", "fold": fold, "seed": 0, "n": n, "accuracy": accuracy,
                "train_s": 10.0, "overrides": [] if name == "base" else ["train.mixup=0.2"], "at_threshold": at,
                "sensitivity": {"covid": covid, "normal": 0.9}, "support": {"covid": covid_n, "normal": n - covid_n}}
    results = [unit("base", 0, 0.80, 100, 0.5, 20), unit("base", 1, 0.70, 50, 1.0, 10),
               unit("mixup", 0, 0.85, 100, 0.6, 20), unit("mixup", 1, 0.68, 50, 0.9, 10),
               unit("usual", 0, 0.90, 100, 0.5, 20), unit("usual", 1, 0.66, 50, 0.5, 10),
               unit("usual-time", 0, 0.95, 100, 0.5, 20), unit("usual-time", 1, 0.70, 50, 0.5, 10)]
    lv = screen_summary(results, SCALES["tiny"])
    base, mixup = lv["candidates"]["base"], lv["candidates"]["mixup"]
    assert base["accuracy"] == pytest.approx((80 + 35) / 150) and base["n"] == 150 and base["folds"] == [0, 1]
    assert base["sensitivity"]["covid"] == pytest.approx((10 + 10) / 30)
    # covid sensitivity at each fold's validation-chosen threshold, pooled over the folds' covid films
    assert base["at_threshold"] == pytest.approx((5 + 5) / 30) and lv["candidates"]["usual"]["at_threshold"] is None
    assert mixup["accuracy"] == pytest.approx((85 + 34) / 150) and mixup["sensitivity"]["covid"] == pytest.approx(21 / 30)
    assert mixup["minus_base"]["mean"] == pytest.approx((0.05 - 0.02) / 2) and mixup["minus_base"]["signs"] == "+-"
    assert mixup["minus_base"]["low"] is None and base["minus_base"] is None  # no interval from 2 folds
    assert lv["winner"] == "mixup" and lv["winner_sets"] == "--set train.mixup=0.2" and lv["folds"] == 2
    # the usual recipe and the config at its time are yardsticks, never the winner, however high their accuracy:
    # the config minus the recipe, and the config at the recipe's time minus the recipe, by fold
    assert min(lv["candidates"][n]["accuracy"] for n in ("usual", "usual-time")) > mixup["accuracy"]
    assert lv["base_minus_usual"]["mean"] == pytest.approx((-0.10 + 0.04) / 2) and lv["base_minus_usual"]["signs"] == "-+"
    assert lv["usual_time_minus_usual"]["mean"] == pytest.approx((0.05 + 0.04) / 2)
    summary = {"scale": "tiny", "date": "d", "gpu": None, "cpu": "c", "cores": 2, "torch": "2.14", "python": "3.11",
               "commit": "abc", "data": "x", "command": "python experiments/cxr3_suite.py", "stopped": None,
               "remaining": [], "skipped": {}, "failed": {}, "stages": {"levers": lv}, "units": {}}
    md = markdown(summary)
    assert "## levers: one change at a time on shallow, 2 folds of the training split" in md
    assert "| mixup | train.mixup=0.2 | 2 | 1 | 150 | 79.3 | 70.0 | 35.0 | +1.5 (n=2) +- | 10 |" in md
    assert "against the usual recipe on the same folds" in md and "**-3.0 (n=2)** (-+)" in md
    assert "(row `usual-time`) against the usual recipe: **+4.5 (n=2)** (++)" in md


def test_with_several_seeds_the_screen_pairs_each_fold_by_seed_and_counts_its_films_once(tmp_path):
    """``--screen-seeds 2``: every candidate runs each fold with each seed (the first seed's units keep their names,
    so an earlier screen's runs count); a difference is paired by seed within the fold, then averaged; pooled
    accuracy is the mean over seeds, and a fold's films are counted once."""
    import dataclasses
    sys.path.insert(0, str(ROOT / "experiments"))
    import cxr3_suite
    from cxr3_suite import SCALES, Suite, screen_summary
    args = dict(scale="tiny", data=str(write_phantoms(tmp_path / "data", 12, 32, seed=0)), out=str(tmp_path / "out"),
                lungs_data=None, usual=str(tmp_path), budget_s=None, commit=None, full_ablation=False,
                levers=["mixup", "usual"], screen_seeds=2)
    suite = Suite(argparse.Namespace(**args))
    suite.scale = dataclasses.replace(SCALES["tiny"], seeds=(0, 1))
    units = {u.name: u for u in suite.plan(["levers"])}
    assert list(units) == [f"levers/{n}-fold{k}{s}" for s in ("", "-seed1") for k in (0, 1)
                           for n in ("base", "mixup", "usual")]
    assert units["levers/mixup-fold1-seed1"].needs == ("levers/base-fold1-seed1",)
    assert cxr3_suite.main(["--data", args["data"], "--out", str(tmp_path / "o2"), "--scale", "tiny",
                            "--screen-seeds", "2"]) == 2  # the tiny scale has one seed

    def unit(name, fold, seed, accuracy):
        return {"unit": f"levers/{name}-fold{fold}" + (f"-seed{seed}" if seed else ""), "fold": fold, "seed": seed,
                "n": 100, "accuracy": accuracy, "train_s": 10.0, "overrides": [], "at_threshold": None,
                "sensitivity": {"covid": 0.5}, "support": {"covid": 20}}
    results = [unit("base", 0, 0, 0.80), unit("base", 0, 1, 0.70), unit("usual", 0, 0, 0.75), unit("usual", 0, 1, 0.77),
               unit("base", 1, 0, 0.60), unit("base", 1, 1, 0.62), unit("usual", 1, 0, 0.50)]  # fold 1: seed 0 only
    lv = screen_summary(results, SCALES["tiny"])
    base = lv["candidates"]["base"]
    assert base["n"] == 200 and base["seeds"] == [0, 1] and base["accuracy"] == pytest.approx(0.68)
    assert lv["base_minus_usual"]["mean"] == pytest.approx(((0.05 - 0.07) / 2 + 0.10) / 2)
    assert lv["base_minus_usual"]["signs"] == "-+"


def test_usual_recipe_line_becomes_the_same_figures_as_ours():
    sys.path.insert(0, str(ROOT / "experiments"))
    from cxr3_suite import usual_figures
    line = ('{"accuracy": 0.8571, "acc_ci95": [0.812, 0.8980], "covid_sens": 0.8261, "covid_spec": 0.9497, '
            '"normal_sens": 0.88, "normal_spec": 0.9172, "pneumonia_sens": 0.8485, "pneumonia_spec": 0.9189, '
            '"acc_figure1": "1.000 (n=1)", "acc_ieee8023": "0.784 (n=51)", "model": "resnet50", "val_acc": 0.8571, '
            '"epochs": 40, "train_s": 101.5}')
    f = usual_figures(line)
    assert f["accuracy"] == 0.8571 and f["accuracy_ci"] == [0.812, 0.898]
    assert f["sensitivity"] == {"covid": 0.8261, "normal": 0.88, "pneumonia": 0.8485}
    assert f["per_source"] == {"figure1": {"n": 1, "accuracy": 1.0}, "ieee8023": {"n": 51, "accuracy": 0.784}}
    assert f["train_s"] == 101.5 and f["epochs"] == 40


def test_recipe_summary_pairs_ours_with_the_usual_recipe_by_seed_and_judges_the_targets():
    sys.path.insert(0, str(ROOT / "experiments"))
    from cxr3_suite import SCALES, markdown, stage_summaries

    def unit(side, bb, seed, accuracy, covid):
        sens = {"covid": covid, "normal": 0.9, "pneumonia": 0.9}
        return {"unit": f"recipe/{side}-{bb}-seed{seed}", "seed": seed, "split": "val", "accuracy": accuracy,
                "accuracy_ci": [accuracy - 0.05, accuracy + 0.05], "sensitivity": sens,
                "per_source": {"kermany": {"n": 88, "accuracy": accuracy}}, "train_s": 60.0,
                **({"wall_s": 70.0} if side == "usual" else {})}
    rows = [unit("ours", "resnet50", 0, 0.92, 0.95), unit("ours", "resnet50", 1, 0.90, 0.93),
            unit("usual", "resnet50", 0, 0.84, 0.80), unit("usual", "resnet50", 1, 0.86, 0.82),
            unit("ours", "vgg16", 0, 0.66, 0.70), unit("usual", "vgg16", 0, 0.70, 0.75)]
    recipe = stage_summaries({r["unit"]: r for r in rows}, SCALES["gpu"])["recipe"]
    resnet = recipe["backbones"]["resnet50"]
    assert resnet["ours"]["accuracy"] == pytest.approx(0.91) and resnet["usual"]["train_s"] == 70.0
    assert resnet["ours_minus_usual"]["mean"] == pytest.approx(0.06) and resnet["ours_minus_usual"]["n"] == 2
    assert resnet["ours_minus_usual"]["low"] is None  # no interval below 3 seeds
    t = recipe["targets"]
    assert t["best_backbone"] == "resnet50" and t["accuracy_met"] and t["covid_sensitivity_met"]
    assert t["above_quoted_usual"] == {"resnet50": True, "vgg16": False}
    assert t["above_measured_usual"] == {"resnet50": True, "vgg16": False}
    summary = {"scale": "gpu", "date": "d", "gpu": "H100", "cpu": "c", "cores": 16, "torch": "2.11", "python": "3.12",
               "commit": "abc", "data": "cxr3", "command": "python experiments/cxr3_suite.py", "stopped": None,
               "remaining": [], "skipped": {}, "failed": {}, "stages": {"recipe": recipe}, "units": {}}
    md = markdown(summary)
    assert "| resnet50 | 92.0 [87.0, 97.0]; 90.0 [85.0, 95.0] | 91.0 | 94.0 |" in md
    assert "+6.0 (n=2)" in md and "vgg16 no" in md and "(≥ 90: met)" in md


@pytest.mark.slow
def test_tiny_suite_stage_crossval_runs_the_cross_validated_ablation_with_its_lung_arm_and_keeps_it(tmp_path):
    data = write_phantoms(tmp_path / "data", 8, 32, seed=0, masks=True)
    r = run_suite(tmp_path, data, "--stages", "crossval")
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    cv = s["stages"]["crossval"]
    assert not s["failed"] and set(s["units"]) == {"lungseg", "crossval"}
    assert cv["folds"] == 2 and cv["arms"] == ["real", "classic", "gan", "gan-lungs", "placebo"] and not cv["skipped"]
    assert cv["covid_source"] == "phantom" and [d["arm"] for d in cv["decisions"]] == ["gan", "gan-lungs"]
    assert "gan − placebo" in cv["differences"] and any("--lungs" in c for c in s["units"]["crossval"]["commands"])
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "## crossval: Do the synthetic films help? 2-fold ablation" in md and cv["decisions"][0]["sentence"] in md
    r = run_suite(tmp_path, data, "--stages", "crossval")
    assert r.returncode == 0 and "crossval: done earlier, kept" in r.stdout, r.stdout + r.stderr


def test_the_usual_recipe_is_scored_on_the_test_split_when_the_data_has_one(tmp_path):
    """usual_accuracy.py reports its ``val`` rows: given a manifest with a test split, it gets a copy whose ``val``
    rows are that test split (absolute paths; the validation split dropped), so both sides are scored on it."""
    sys.path.insert(0, str(ROOT / "experiments"))
    from cxr3_suite import Suite
    data = tmp_path / "data"
    data.mkdir()
    rows = [("a.png", "train"), ("b.png", "val"), ("c.png", "test"), ("d.png", "train")]
    (data / "manifest.csv").write_text("path,label,split,source\n" + "".join(f"{p},covid,{s},x\n" for p, s in rows))
    args = dict(scale="tiny", data=str(data), out=str(tmp_path / "out"), lungs_data=None, usual=None, budget_s=None,
                screen_seeds=1, commit=None, full_ablation=False, levers=None)
    folder, split = Suite(argparse.Namespace(**args)).usual_data()
    assert split == "test"
    with open(folder / "manifest.csv", newline="") as f:
        copied = [(r["path"], r["split"]) for r in csv.DictReader(f)]
    assert copied == [(str(data / "a.png"), "train"), (str(data / "c.png"), "val"), (str(data / "d.png"), "train")]
    (data / "manifest.csv").write_text("path,label,split,source\na.png,covid,train,x\nb.png,covid,val,x\n")
    args["out"] = str(tmp_path / "out2")
    assert Suite(argparse.Namespace(**args)).usual_data() == (data.resolve(), "val")
