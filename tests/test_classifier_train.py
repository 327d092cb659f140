"""classify-train on tiny phantoms: exact resume after a stop signal, evaluation outputs, synthetic
images in training only, and DistributedDataParallel with two CPU processes."""
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from augment.batches import StreamedImages
from augment.phantoms import write_phantoms
from classifier.config import ClassifierConfig, EvalConfig
from classifier.evaluate import evaluate
from classifier.model import create_model
from classifier.overlays import explain_files
from classifier.train import Trainer, train, warmup_epochs
from conftest import assert_self_contained_report, sigint_at_call, tiny_classifier_config
from foundation.checkpoints import load_checkpoint
from foundation.config import load_config
from foundation.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_phantoms(tmp_path_factory.mktemp("phantoms"), 12, size=32, seed=0)


def tiny_cfg(tmp, *more):
    """The shared tiny classifier with EMA, mixup and cutmix on, so every test runs those paths too."""
    return tiny_classifier_config(tmp, "train.ema=0.9", "train.mixup=0.2", "train.cutmix=0.2", *more)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data):
    """A run of two epochs without interruption, with EMA, mixup and cutmix."""
    tmp = tmp_path_factory.mktemp("straight")
    return train(tiny_cfg(tmp), data, tmp, device="cpu", quiet=True)


def test_resume_after_a_stop_signal_is_exact(tmp_path, data, monkeypatch, straight):
    cfg = tiny_cfg(tmp_path)

    step = sigint_at_call(monkeypatch, Trainer, "train_step", 4)  # 3 steps per epoch: mid second epoch
    stopped = train(cfg, data, tmp_path / "b", device="cpu")
    monkeypatch.setattr(Trainer, "train_step", step)
    partial = load_checkpoint(stopped / "last.pt")
    assert (partial["epoch"], partial["batch"]) == (1, 1)
    moved = shutil.copytree(data, tmp_path / "moved", copy_function=shutil.copy)  # another path, new file times
    resumed = train(cfg, moved, tmp_path / "ignored", resume=stopped, device="cpu", quiet=True)
    assert resumed == stopped
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"] == 2
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert a["best_f1"] == b["best_f1"]


def test_a_checkpoint_of_the_earlier_augmentation_does_not_resume(tmp_path, data, straight):
    run = Path(shutil.copytree(straight, tmp_path / "old"))
    state = load_checkpoint(run / "last.pt")
    del state["layout"]  # written before the one-warp augmentation: its draws would differ
    torch.save(state, run / "last.pt")
    with pytest.raises(UserError, match=r"earlier classify-train \(checkpoint layout 0, now 1\).*start a new run"):
        train(tiny_cfg(tmp_path), data, tmp_path, resume=run, device="cpu", quiet=True)


def pretrained_weights(tmp_path):
    """A state dict file of a tiny network, standing in for pretrained weights, and the dict."""
    from classifier.model import create_model
    weights = create_model("shallow", 3, width=8).state_dict()
    torch.save(weights, tmp_path / "w.pt")
    return tmp_path / "w.pt", weights


def test_batches_streamed_from_host_memory_train_the_same_model(tmp_path, data, straight):
    """A cache share of 0 keeps the images on the host and streams each batch from the memory-mapped cache
    (no copy of the training split): same batches, same order, same augmentation, so the same weights as the
    run that held them on the device."""
    trainer = Trainer(tiny_cfg(tmp_path, "train.device_cache_share=0"), data, tmp_path, device="cpu", quiet=True)
    streamed_set = trainer.train_data
    assert isinstance(streamed_set, StreamedImages)
    assert streamed_set.rows is not None and len(streamed_set) < len(streamed_set.images)  # rows of the whole cache
    streamed = trainer.run()
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(streamed / "last.pt")
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


def test_pretrained_runs_train_the_head_first_then_everything(tmp_path, data, monkeypatch):
    source, loaded = pretrained_weights(tmp_path)
    cfg = tiny_cfg(tmp_path, f"model.pretrained={source}", "train.head_epochs=1", "train.ema=0")
    at_finetune = {}
    enter = Trainer._enter_phase

    def spy(self, phase):
        if not phase.frozen:  # the head phase is over: what did it change?
            at_finetune.update({k: v.clone() for k, v in self.model.state_dict().items()})
        return enter(self, phase)

    monkeypatch.setattr(Trainer, "_enter_phase", spy)
    run = train(cfg, data, tmp_path, device="cpu", quiet=True)
    backbone = [k for k in loaded if k.startswith("backbone.")]
    assert backbone and all(torch.equal(at_finetune[k], loaded[k]) for k in backbone)  # frozen, BN statistics too
    assert not torch.equal(at_finetune["head.fc.weight"], loaded["head.fc.weight"])  # while the head learned
    last = load_checkpoint(run / "last.pt")["model"]
    # after phase 2 the backbone moved away from the loaded weights; the phase boundary is epoch 1
    assert not torch.equal(last["backbone.conv0.weight"], loaded["backbone.conv0.weight"])
    trainer = Trainer(cfg, data, tmp_path / "x", device="cpu", quiet=True)
    assert [(p.start, p.end, p.frozen) for p in trainer.phases] == [(0, 1, True), (1, 2, False)]
    assert trainer.phases[1].lr == pytest.approx(cfg.train.lr * cfg.train.finetune_lr_factor)


class Killed(Exception):
    """Stands in for a SIGKILL between two epochs."""


def flat_after_first_epoch(monkeypatch):
    """Validation macro-F1 0.5 at every epoch: only the first is ever the best."""
    validate = Trainer.validate

    def flat(self):
        m = validate(self)
        return m | {"macro": m["macro"] | {"f1": 0.5}}

    monkeypatch.setattr(Trainer, "validate", flat)


def test_early_stopping_waits_for_the_end_of_the_warmup(tmp_path, data, monkeypatch):
    # a slow starter (VGG16 from scratch warms up for 12 epochs) must not be stopped while its lr still rises
    flat_after_first_epoch(monkeypatch)
    cfg = tiny_cfg(tmp_path, "train.epochs=6", "train.warmup_epochs=3", "train.patience=1")
    last = load_checkpoint(train(cfg, data, tmp_path / "a", device="cpu", quiet=True) / "last.pt")
    # epochs 2-3 end inside the warmup and are not counted; epoch 4 is the first without a better F1 after it
    assert (last["epoch"], last["bad_epochs"]) == (4, 1)


def test_early_stopping_in_the_head_phase_still_fine_tunes_also_after_a_resume(tmp_path, data, monkeypatch):
    source, loaded = pretrained_weights(tmp_path)
    cfg = tiny_cfg(tmp_path, f"model.pretrained={source}", "train.head_epochs=3", "train.epochs=5",
                   "train.patience=1", "train.ema=0", "train.warmup_epochs=0")
    flat_after_first_epoch(monkeypatch)  # with no warmup, patience 1 stops a phase after 2 epochs
    straight = load_checkpoint(train(cfg, data, tmp_path / "a", device="cpu", quiet=True) / "last.pt")
    # head: epochs 1-2 (stopped early, epoch 3 skipped); fine-tune: epoch 4 (patience counted afresh, stopped)
    assert (straight["epoch"], straight["bad_epochs"]) == (4, 1)
    assert not torch.equal(straight["model"]["backbone.conv0.weight"], loaded["backbone.conv0.weight"])

    enter = Trainer._enter_phase

    def killed_before_finetuning(self, phase):
        if not phase.frozen:
            raise Killed
        return enter(self, phase)

    monkeypatch.setattr(Trainer, "_enter_phase", killed_before_finetuning)
    with pytest.raises(Killed):
        train(cfg, data, tmp_path / "b", device="cpu", quiet=True)
    [run] = (tmp_path / "b" / "classifier").iterdir()
    stopped = load_checkpoint(run / "last.pt")
    assert (stopped["epoch"], stopped["bad_epochs"]) == (2, 1)  # the head phase had stopped early
    monkeypatch.setattr(Trainer, "_enter_phase", enter)
    resumed = load_checkpoint(train(cfg, data, resume=run, device="cpu", quiet=True) / "last.pt")
    assert resumed["epoch"] == 4
    for k in straight["model"]:
        assert torch.equal(resumed["model"][k], straight["model"][k]), k


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, data, monkeypatch):
    cfg = tiny_cfg(tmp_path, "train.epochs=3", "train.log_every=100")  # 3 steps per epoch
    calls = {"n": 0}
    real_loss = torch.nn.functional.cross_entropy

    def poisoned(*args, **kwargs):  # NaN from step 5 on, in the second epoch
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] >= 5 else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", poisoned)
    with pytest.raises(UserError, match=r"NaN or infinite at step 5.*last.pt \(step 3\), is kept"):
        train(cfg, data, tmp_path / "runs", device="cpu", quiet=True)
    [run] = (tmp_path / "runs" / "classifier").iterdir()
    last, best = load_checkpoint(run / "last.pt"), load_checkpoint(run / "best.pt")
    assert (last["step"], last["epoch"], best["epoch"]) == (3, 1, 1)  # neither written from the diverged model
    assert all(torch.isfinite(v).all() for part in (last["model"], best["model"]) for v in part.values())


def test_synthetic_images_join_the_training_split_only(tmp_path, data):
    synthetic = write_phantoms(tmp_path / "syn", 3, size=32, seed=7, classes=("covid",))
    cfg = tiny_cfg(tmp_path, "train.epochs=1")
    from augment.data import load_dataset
    ds = load_dataset(data, cfg.data, quiet=True)
    rows = list(csv.DictReader(open(synthetic / "manifest.csv")))  # made from a training patient
    for r in rows:
        r["group_id"] = next(g for g, s in zip(ds.groups, ds.splits) if s == "train")
    with open(synthetic / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    trainer = Trainer(cfg, data, tmp_path, synthetic=synthetic, device="cpu", quiet=True)
    real_train = int((torch.tensor([s == "train" for s in trainer_splits(data, cfg)])).sum())
    assert trainer.n_synthetic == 3 and len(trainer.train_data) == real_train + 3
    assert len(trainer.val_labels) == len([s for s in trainer_splits(data, cfg) if s == "val"])


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_class_weights_balance_the_classes_and_a_power_tempers_them(tmp_path, power):
    data = write_phantoms(tmp_path / "imbalanced", {"covid": 4, "normal": 16, "pneumonia": 8}, size=32, seed=3)
    cfg = tiny_cfg(tmp_path, "train.balance=loss", f"train.class_weight_power={power}")
    trainer = Trainer(cfg, data, tmp_path / "run", device="cpu", quiet=True)
    counts = torch.bincount(trainer.train_data.labels, minlength=3).double()
    # power 1: every class carries the same total weight; power 0.5: the squared weights do
    totals = trainer.class_weights.double() ** (1 / power) * counts
    assert torch.allclose(totals, totals.mean().expand(3)) and totals.sum().item() == pytest.approx(counts.sum().item())
    assert (trainer.class_weights[counts.argmin()] > trainer.class_weights[counts.argmax()]).item()


def trainer_splits(data, cfg):
    from augment.data import load_dataset
    return load_dataset(data, cfg.data, quiet=True).splits


@pytest.mark.slow
def test_evaluate_and_cam_write_their_files(tmp_path, data, straight):
    run = straight
    m = evaluate(data, None, run.parents[1], EvalConfig(bootstrap=50), device="cpu", cam=1, quiet=True)
    out = run / "eval"
    for name in ("metrics.json", "report.md", "confusion.png", "roc.png", "pr.png", "reliability.png"):
        assert (out / name).is_file()
    assert_self_contained_report(out / "report.html", out / "report.md",
                                 ["roc.png", "pr.png", "confusion.png", "reliability.png"])
    splits = trainer_splits(data, tiny_cfg(tmp_path))
    assert m["split"] == ("test" if "test" in splits else "val")  # the test split when there is one
    assert m["n"] == splits.count(m["split"]) == sum(map(sum, m["confusion"]))
    assert set(m["per_source"]) == {"phantom"} and m["binary"]["positive_class"] == "covid"
    assert len(list((out / "cam").glob("*.png"))) == 3 and m["cam"]["images"] == 3
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == m["accuracy"]
    written = explain_files([data / "covid" / "covid_00000.png"], run, method="cam", target_class="normal", device="cpu")
    assert len(written) == 1 and "_normal_" in written[0].name
    with pytest.raises(UserError, match="no best.pt or last.pt"):
        evaluate(data, tmp_path, tmp_path, device="cpu", quiet=True)


@pytest.mark.slow
def test_ddp_with_two_gloo_processes(tmp_path, data):
    script = tmp_path / "ddp_train.py"
    overrides = ["data.size=32", f"data.cache_dir={tmp_path / 'cache'}", "model.backbone=shallow", "model.width=8",
                 "model.input_size=32", "train.epochs=1", "train.batch_size=4", "train.tensorboard=false"]
    script.write_text(
        "from foundation.config import load_config\n"
        "from classifier.config import ClassifierConfig\n"
        "from classifier.train import Trainer\n"
        "import os, torch\n"
        f"cfg = load_config(ClassifierConfig, None, {overrides!r})\n"
        f"trainer = Trainer(cfg, {str(data)!r}, {str(tmp_path / 'runs')!r}, device='cpu', quiet=True)\n"
        "trainer.run()\n"
        "state = {'params': dict(trainer.model.named_parameters()), 'buffers': dict(trainer.model.named_buffers()),"
        " 'best_f1': trainer.best_f1}\n"
        f"torch.save(state, os.path.join({str(tmp_path)!r}, 'rank' + os.environ['RANK'] + '.pt'))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script)], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = list((tmp_path / "runs" / "classifier").iterdir())
    assert len(runs) == 1  # one run folder, written by rank 0
    info = json.loads((runs[0] / "run.json").read_text())
    assert info["world_size"] == 2
    ckpt = load_checkpoint(runs[0] / "last.pt")
    assert len(ckpt["rng"]) == 2 and ckpt["epoch"] == 1
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["params"].keys() == ranks[1]["params"].keys() and ranks[0]["params"]
    for k in ranks[0]["params"]:  # gradients were averaged: both ranks hold the saved weights
        assert torch.equal(ranks[0]["params"][k], ckpt["model"][k]) and torch.equal(ranks[1]["params"][k], ckpt["model"][k]), k
    # batch-norm statistics are rank 0's on both before validation, so the ranks agree on the best epoch
    assert any(k.endswith("running_mean") for k in ranks[0]["buffers"])
    for k in ranks[0]["buffers"]:
        assert torch.equal(ranks[0]["buffers"][k], ranks[1]["buffers"][k]), k
    assert ranks[0]["best_f1"] == ranks[1]["best_f1"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_training_uses_bf16_channels_last_and_resumes_exactly(tmp_path, data, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)  # bitwise-equal convolutions
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    cfg = tiny_cfg(tmp_path, "model.backbone=resnet18", "train.epochs=2")
    trainer = Trainer(cfg, data, tmp_path / "a", device="cuda", quiet=True)
    assert trainer.model.backbone[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert trainer.optimizer.defaults["fused"]
    straight = trainer.run()
    step = sigint_at_call(monkeypatch, Trainer, "train_step", 2)
    stopped = train(cfg, data, tmp_path / "b", device="cuda", quiet=True)
    monkeypatch.setattr(Trainer, "train_step", step)
    resumed = train(cfg, data, resume=stopped, device="cuda", quiet=True)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.mark.slow
def test_per_source_breakdown_and_strict_json(tmp_path, data, straight):
    import csv
    rows = list(csv.DictReader(open(data / "manifest.csv")))
    for r in rows:
        r["source"] = "site-a" if r["label"] == "covid" else "site-b"  # site-a holds only covid images
    manifest = data / "manifest_sites.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    m = evaluate(manifest, straight, tmp_path, EvalConfig(bootstrap=30), device="cpu", quiet=True)
    assert set(m["per_source"]) == {"site-a", "site-b"}
    assert sum(v["n"] for v in m["per_source"].values()) == m["n"]
    text = (straight / "eval" / "metrics.json").read_text()
    site_a = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))["per_source"]["site-a"]
    assert site_a["sensitivity"]["normal"] is None  # no normal image from site-a: undefined, not 0


def test_ema_decay_warms_up_then_holds():
    from classifier.recipe import EMA
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model, step=0)  # decay min(0.999, 1/10): mostly the trained weights
    assert ema.module.weight.item() == pytest.approx(0.9)
    ema.update(model, step=10_000)  # decay 0.999 once warmed up
    assert ema.module.weight.item() == pytest.approx(0.9 + 0.1 * 0.001)


@pytest.mark.parametrize("name, pretrained, warmup", [("vgg16", "none", 12), ("squeezenet1_1", "none", 12),
                                                      ("vgg16", "imagenet", 2), ("resnet18", "none", 2),
                                                      ("efficientnet_b0", "none", 2)])
@pytest.mark.slow
def test_backbones_without_normalisation_warm_up_longer_from_scratch(name, pretrained, warmup):
    # a 2-epoch warmup to lr 1e-3 left vgg16's ReLUs dead on real films (configs/classify-train.yaml)
    cfg = load_config(ClassifierConfig, None, [f"model.backbone={name}", f"model.pretrained={pretrained}",
                                               "train.warmup_epochs=2", "train.warmup_epochs_unnormalised=12"])
    assert warmup_epochs(cfg, create_model(name, 3)) == warmup


class TickingClock:
    """Stands in for the ``time`` module of classifier.train: each ``monotonic()`` is half a second later."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 0.5
        return self.now


def test_a_time_budget_plans_the_epochs_and_trains_as_that_many_epochs_would(tmp_path, data, monkeypatch):
    """The first steps and a validation are timed (here on a clock of known ticks), the epochs that fit the budget
    are chosen, the weights and RNG are put back: an interrupted and resumed budgeted run ends bit for bit as a
    run given that many epochs, and its schedule ends at its last step."""
    monkeypatch.setattr(sys.modules["classifier.train"], "time", TickingClock())
    step = sigint_at_call(monkeypatch, Trainer, "train_step", 3 + 4)  # the 3 timed steps, then mid second epoch
    budgeted = train(tiny_cfg(tmp_path, "train.time_budget=14s", "train.patience=100"), data, tmp_path / "b",
                     device="cpu", quiet=True)
    monkeypatch.setattr(Trainer, "train_step", step)
    plan = json.loads((budgeted / "run.json").read_text())["budget"]
    epoch_s = plan["steps_per_epoch"] * plan["step_s"] + plan["validation_s"]
    assert plan["epochs"] == int(plan["seconds_left_when_planned"] * 0.9 / epoch_s) > 2
    assert load_checkpoint(budgeted / "last.pt")["epoch"] == 1  # stopped in the second epoch
    train(None, data, tmp_path / "ignored", resume=budgeted, device="cpu", quiet=True)  # no second plan
    monkeypatch.undo()
    plain = train(tiny_cfg(tmp_path, f"train.epochs={plan['epochs']}", "train.patience=100"), data, tmp_path / "p",
                  device="cpu", quiet=True)
    a, b = load_checkpoint(budgeted / "last.pt"), load_checkpoint(plain / "last.pt")
    assert a["epoch"] == b["epoch"] == plan["epochs"] and a["config"]["train"]["epochs"] == plan["epochs"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    with open(budgeted / "history.csv", newline="") as f:
        lr = [float(row["lr"]) for row in csv.DictReader(f)]
    assert len(lr) == plan["epochs"] and lr[-1] < 0.03 * max(lr)  # the cosine ran its whole length (floor 0.01)


def test_a_step_stalled_by_another_process_does_not_shorten_the_planned_run(tmp_path, data, monkeypatch):
    """The plan takes the median of the timed steps: one step held up (here for a second) leaves it unchanged."""
    calls, step = [0], Trainer.train_step

    def stalled_once(self, *a, **k):
        calls[0] += 1
        if calls[0] == 2:  # the first timed step, after the warm-up
            time.sleep(1.0)
        return step(self, *a, **k)
    monkeypatch.setattr(Trainer, "train_step", stalled_once)
    cfg = tiny_cfg(tmp_path, "train.time_budget=1h", "train.batch_size=2")  # enough batches for 6 planning steps
    plan = Trainer(cfg, data, tmp_path, device="cpu", quiet=True).budget_plan
    assert len(plan["step_times_s"]) == 5  # after one warm-up step
    assert max(plan["step_times_s"]) >= 1.0 and plan["step_s"] < 0.5


def test_an_epoch_of_one_batch_is_still_timed_for_the_plan(tmp_path, data, monkeypatch):
    """With a single batch per epoch that batch is timed again after its warm-up: the plan counts its steps'
    time (0.5 s on the ticking clock), not validation alone."""
    monkeypatch.setattr(sys.modules["classifier.train"], "time", TickingClock())
    cfg = tiny_cfg(tmp_path, "train.time_budget=1h", "train.batch_size=64")
    plan = Trainer(cfg, data, tmp_path, device="cpu", quiet=True).budget_plan
    assert plan["steps_per_epoch"] == 1
    assert plan["step_times_s"] == [0.5] and plan["step_s"] == 0.5


def test_a_time_budget_that_is_no_duration_is_a_config_error(tmp_path):
    with pytest.raises(UserError, match="train.time_budget is a duration such as 600s, 10m or 1.5h"):
        tiny_cfg(tmp_path, "train.time_budget=soon")


def test_the_usual_budget_is_the_usual_recipes_time_here_and_plans_the_run_with_it(tmp_path, data, monkeypatch):
    """``train.time_budget=usual`` times the usual recipe's training and validation steps on this machine (here a
    small stand-in of it, on the ticking clock: every timed call takes 0.5 s), scales them to its epochs and
    batches on this training set, leaves the random state alone and plans the run within that budget."""
    import classifier.usual_budget as usual_budget
    monkeypatch.setattr(usual_budget, "USUAL_RECIPE", {**usual_budget.USUAL_RECIPE, "input_size": 32, "batch_size": 8,
                                                        "epochs": 3})
    monkeypatch.setattr(usual_budget, "time", TickingClock())
    torch.manual_seed(5)
    figures = usual_budget.usual_recipe_seconds(40, 9, torch.device("cpu"))
    after = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(1))  # the measurement drew nothing from the global generator
    tick = 0.5  # the clock is read before and after each timed call
    assert figures["steps_per_epoch"] == 40 // 8
    assert figures["step_s"] == figures["val_batch_s"] == pytest.approx(tick, abs=1e-4)
    assert figures["seconds"] == pytest.approx(3 * (5 * tick + 2 * tick), abs=0.05)  # 3 epochs, 2 validation batches

    run = train(tiny_cfg(tmp_path, "train.time_budget=usual", "train.patience=100"), data, tmp_path / "u",
                device="cpu", quiet=True)
    plan = json.loads((run / "run.json").read_text())["budget"]
    assert plan["budget_s"] == plan["usual_recipe"]["seconds"] > 0
    assert plan["usual_recipe"]["recipe"]["model"] == "resnet18"
    assert load_checkpoint(run / "last.pt")["config"]["train"]["epochs"] == plan["epochs"]
