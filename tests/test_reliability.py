"""Reliability: bad input through the CLI, runs killed and resumed, untrusted files, path safety,
failed writes and bad configuration. The per-format reader cases are in test_imageio.py and the
dataset-level bad-input battery in test_data.py; this file covers what those do not."""
from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from augment.config import config_to_dict, load_config
from augment.data import DataConfig, load_dataset, write_csv
from augment.errors import UserError
from augment.phantoms import write_phantoms
from augment.runtime import load_checkpoint, save_checkpoint
from classifier.config import ClassifierConfig
from classifier.model import create_model
from classifier.overlays import write_overlays
from classifier.train import train
from cli import cli
from cyclegan import GanConfig, synthesize, train_gan

from conftest import ROOT, save_gray
from test_runtime import _RunsCode

GAN_SET = ["data.size=32", "model.ngf=8", "model.ndf=8", "model.n_blocks=1", "model.n_layers_d=2",
           "train.pool_size=2", "train.tensorboard=false", "train.steps=40", "train.checkpoint_every=3",
           "train.log_every=3"]
CLS_SET = ["data.size=32", "model.backbone=shallow", "model.width=8", "model.input_size=32", "train.epochs=20",
           "train.batch_size=8", "train.patience=100", "train.tensorboard=false", "train.ema=0.9"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_phantoms(tmp_path_factory.mktemp("phantoms"), 12, size=32, seed=0)


# ---------------------------------------------------------------- bad input through the CLI
def test_too_little_readable_data_is_one_line_and_debug_shows_the_traceback(tmp_path):
    d = tmp_path / "d"
    for cls in ("covid", "normal"):
        save_gray(d / cls / "ok.png", 100)
    bad = d / "pneumonia" / "truncated.png"
    save_gray(bad, 7, size=(64, 64))
    bad.write_bytes(bad.read_bytes()[:60])
    (d / "pneumonia" / "empty.png").write_bytes(b"")
    (d / "pneumonia" / "text.png").write_text("not a picture\n")
    args = ["classify-train", "--data", str(d), "--out", str(tmp_path / "runs"), "--device", "cpu",
            "--set", "data.size=32", "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.output
    assert [l for l in lines if l.startswith("error:")] == [lines[-1]]
    assert "no readable image of class 'pneumonia'" in lines[-1]
    for name in ("truncated.png", "empty.png", "text.png"):
        assert any(l.startswith("warning: skipped ") and name in l for l in lines), name
    assert "skipped 3 file(s)" in r.stderr
    r = CliRunner().invoke(cli, ["--debug", *args])
    assert r.exit_code == 2 and "Traceback" in r.stderr and "UserError" in r.stderr


def test_an_output_that_cannot_be_written_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way\n")
    r = CliRunner().invoke(cli, ["phantoms", "--out", str(blocker / "demo"), "--n-per-class", "1", "--size", "16"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and str(blocker) in r.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_skipped_named_and_counted(folder_data, cfg):
    locked = folder_data / "covid" / "covid0.png"
    locked.chmod(0)
    try:
        ds = load_dataset(folder_data, cfg, quiet=True)
    finally:
        locked.chmod(0o644)
    assert len(ds) == 11 and ds.skipped == {os.path.join("covid", "covid0.png"): "permission denied"}


# ---------------------------------------------------------------- killed and resumed runs
def start(tmp_path: Path, name: str, *args: str) -> subprocess.Popen:
    """``python cli.py ARGS`` in a subprocess on one thread, its output in ``tmp_path/<name>.log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with open(tmp_path / f"{name}.log", "w") as log:
        return subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=tmp_path)


def wait_for_checkpoint(proc: subprocess.Popen, paths, key: str, at_least: int, log: Path,
                        timeout: float = 120) -> tuple[Path, dict]:
    """Wait until a checkpoint among ``paths()`` holds ``key >= at_least``; fail if ``proc`` ends first."""
    seen, end = {}, time.monotonic() + timeout
    while time.monotonic() < end:
        for path in paths():
            mtime = path.stat().st_mtime_ns
            if seen.get(path) != mtime:  # read each new checkpoint once
                seen[path] = mtime
                state = load_checkpoint(path)
                if state[key] >= at_least:
                    return path, state
        if proc.poll() is not None:
            pytest.fail(f"the command ended (status {proc.returncode}) first:\n{log.read_text()[-3000:]}")
        time.sleep(0.03)
    proc.kill()
    pytest.fail(f"timed out:\n{log.read_text()[-3000:]}")


def kill_point_rng() -> random.Random:
    """The generator of a test's kill point: seeded from ``$KILL_SEED`` or a fresh draw, printed either way
    (pytest shows it with a failure), so ``KILL_SEED=<seed> pytest ...`` replays the same kill point."""
    seed = int(os.environ.get("KILL_SEED", random.randrange(1 << 16)))
    print(f"kill point seed {seed}; replay with KILL_SEED={seed}")
    return random.Random(seed)


def tensors(obj, prefix="") -> dict[str, torch.Tensor]:
    """Every tensor in nested dicts and lists, by its path."""
    if torch.is_tensor(obj):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in tensors(value, f"{prefix}/{key}").items()}


def assert_same_tensors(a: dict, b: dict) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys() and ta
    for k in ta:
        torch.testing.assert_close(ta[k].float(), tb[k].float(), rtol=0, atol=1e-6, msg=k)


def test_gan_train_killed_then_terminated_resumes_to_the_uninterrupted_weights(tmp_path, data):
    sets = [*GAN_SET, f"data.cache_dir={tmp_path / 'cache'}"]
    straight = train_gan(load_config(GanConfig, None, sets), data, tmp_path / "a", device="cpu", seed=3)
    out = tmp_path / "b"
    common = ["--data", str(data), "--out", str(out), "--device", "cpu"]
    checkpoints = lambda: (out / "gan").glob("*/checkpoint.pt")  # noqa: E731
    rng = kill_point_rng()

    proc = start(tmp_path, "kill", "gan-train", *common, "--seed", "3", *[f"--set={s}" for s in sets])
    wait_for_checkpoint(proc, checkpoints, "step", rng.choice([3, 6, 9, 12]), tmp_path / "kill.log")
    time.sleep(rng.uniform(0, 0.1))  # a random point, usually between two checkpoints
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL
    [ckpt] = checkpoints()
    killed_at = load_checkpoint(ckpt)["step"]
    assert 3 <= killed_at < 40

    proc = start(tmp_path, "term", "gan-train", "--resume", str(ckpt.parent), *common)
    wait_for_checkpoint(proc, checkpoints, "step", killed_at + 1, tmp_path / "term.log")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 130, (tmp_path / "term.log").read_text()[-3000:]  # saved, and a chain stops
    log = (tmp_path / "term.log").read_text()
    stopped_at = load_checkpoint(ckpt)["step"]
    assert killed_at < stopped_at < 40 and f"stopped at step {stopped_at} of 40" in log
    assert f"resume with: python {ROOT / 'cli.py'} gan-train --resume {ckpt}" in log  # the command as typed

    r = CliRunner().invoke(cli, ["gan-train", "--resume", str(ckpt), *common])  # in-process: no second start-up
    assert r.exit_code == 0, r.output
    state = load_checkpoint(ckpt)
    assert state["step"] == 40
    assert_same_tensors(state["model"], load_checkpoint(straight.run_dir / "checkpoint.pt")["model"])


def test_classify_train_killed_resumes_to_the_uninterrupted_weights(tmp_path, data):
    sets = [*CLS_SET, f"data.cache_dir={tmp_path / 'cache'}"]
    straight = train(load_config(ClassifierConfig, None, sets), data, tmp_path / "a", device="cpu", seed=2,
                     quiet=True)
    out = tmp_path / "b"
    config = tmp_path / "none.yaml"  # not the real-data recipe configs/classify-train.yaml
    config.write_text("{}\n")
    lasts = lambda: (out / "classifier").glob("*/last.pt")  # noqa: E731
    rng = kill_point_rng()

    proc = start(tmp_path, "kill", "classify-train", "--data", str(data), "--out", str(out), "--device", "cpu",
                 "--seed", "2", "--config", str(config), *[f"--set={s}" for s in sets])
    wait_for_checkpoint(proc, lasts, "epoch", rng.randint(1, 6), tmp_path / "kill.log")
    time.sleep(rng.uniform(0, 0.1))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL
    [last] = lasts()
    assert 1 <= load_checkpoint(last)["epoch"] < 20

    r = CliRunner().invoke(cli, ["classify-train", "--resume", str(last.parent), "--data", str(data), "--out", str(out),
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(last)
    assert a["epoch"] == b["epoch"] == 20 and a["best_f1"] == b["best_f1"]
    for part in ("model", "ema", "optimizer"):
        assert_same_tensors(a[part], b[part])


# ---------------------------------------------------------------- untrusted files
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pretrained_weights_that_would_run_code_are_refused(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "weights.pt"
    torch.save({"backbone.conv0.weight": _RunsCode(marker)}, evil)
    with pytest.raises(UserError, match="refused to load") as e:
        create_model("shallow", 3, pretrained=str(evil), width=8)
    assert "weights.pt" in str(e.value) and not marker.exists()


# ---------------------------------------------------------------- path safety
@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "", "a\\b"])
def test_class_names_must_be_plain_folder_names(name):
    with pytest.raises(UserError, match="not a plain folder name"):
        load_config(DataConfig, None, [f"classes=[{name!r},normal]"])


def test_gan_checkpoint_naming_a_class_outside_the_folder_is_refused(tmp_path, data):
    cfg = load_config(GanConfig, None, [*GAN_SET, f"data.cache_dir={tmp_path / 'cache'}"])
    values = config_to_dict(cfg)  # a hand-edited checkpoint: domain B is '../evil'
    values["data"]["classes"] = ["../evil", "normal"]
    values["train"]["domain_b"] = "../evil"
    save_checkpoint({"config": values, "model": {}, "step": 1}, tmp_path / "gan" / "checkpoint.pt")
    with pytest.raises(UserError, match="not a plain folder name"):
        synthesize(2, data, tmp_path, checkpoint=tmp_path / "gan", dest=tmp_path / "syn", device="cpu")
    assert not (tmp_path / "syn").exists() and not (tmp_path / "evil").exists()


def test_overlay_names_stay_inside_the_output_folder(tmp_path):
    """Names from a manifest (``..``, absolute, separators) and class names from a checkpoint."""
    model = create_model("shallow", 3, width=8).eval()
    names = ["../../escape.png", "/etc/abs.png", "..", "a/../../b\\..\\c.png", "x/.hidden.png"]
    classes = ("../../up", "/abs", "ok")
    images = torch.randint(0, 255, (len(names), 1, 32, 32), dtype=torch.uint8)
    out = tmp_path / "run" / "cam"
    written = []
    for target in classes:
        w, _ = write_overlays(model, images, names, classes, 32, torch.device("cpu"), "cam", out, target)
        written += w
    assert len(set(written)) == len(names) * len(classes)
    assert all(p.parent == out and p.is_file() and not p.name.startswith(".") for p in written)
    assert sorted(p.name for p in tmp_path.rglob("*.png")) == sorted(p.name for p in written)


# ---------------------------------------------------------------- failed writes
@pytest.fixture(scope="module")
def gan_run(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("gan")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = load_config(GanConfig, None, [*GAN_SET, "train.steps=1", f"data.cache_dir={tmp / 'cache'}",
                                        "synth.batch_size=2"])
    run = train_gan(cfg, data, tmp / "runs", device="cpu").run_dir
    torch.set_num_threads(threads)
    return run


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), PermissionError("denied")])
def test_synthesize_write_failure_is_one_line_and_leaves_nothing(tmp_path, data, gan_run, monkeypatch, error):
    real_save, calls = Image.Image.save, []

    def fails_on_third(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 3:
            Path(fp).write_bytes(b"\x89PNG partial")
            raise error
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", fails_on_third)
    dest = tmp_path / "syn"
    with pytest.raises(UserError, match=r"could not write \((No space left on device|denied)\)") as e:
        synthesize(6, data, gan_run.parents[1], checkpoint=gan_run, dest=dest, device="cpu", batch_size=2)
    assert "syn_0000" in str(e.value) and "\n" not in str(e.value)
    assert [p for p in dest.rglob("*") if p.is_file()] == []
    monkeypatch.undo()
    synthesize(2, data, gan_run.parents[1], checkpoint=gan_run, dest=dest, device="cpu")  # no --overwrite needed


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), PermissionError("denied")])
def test_manifest_write_failure_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, error):
    write_bytes = Path.write_bytes

    def fails(self, data):
        write_bytes(self, data[:5])  # a partial temporary file, then the disk fills up
        raise error
    monkeypatch.setattr(Path, "write_bytes", fails)
    with pytest.raises(UserError, match=r"m\.csv: could not write \((No space left on device|denied)\)") as e:
        write_csv(tmp_path / "m.csv", [{"path": "a.png", "label": "covid"}], ["path", "label"])
    assert "\n" not in str(e.value) and list(tmp_path.iterdir()) == []


def test_non_utf8_file_name_cannot_go_into_a_manifest(tmp_path):
    with pytest.raises(UserError, match=r"b'/x/caf\\xe9.png': file name is not UTF-8.*rename"):
        write_csv(tmp_path / "m.csv", [{"path": os.fsdecode(b"/x/caf\xe9.png"), "label": "covid"}], ["path", "label"])
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- configuration
@pytest.mark.parametrize("command,option,match", [
    ("gan-train", "--set=train.lr=-0.1", "train.lr must be > 0"),
    ("gan-train", "--set=train.batch_size=0", "train.batch_size, epochs and steps must be >= 1"),
    ("classify-train", "--set=train.lr=-0.1", "train.lr, finetune_lr_factor"),
    ("classify-train", "--set=train.batch_size=0", "train.batch_size must be at least 1"),
    ("classify-train", "--backbone=resnet5O", "unknown backbone 'resnet5O'; choose one of efficientnet_b0, resnet50"),
    ("classify-train", "--set=model.backbone=nope", "unknown backbone 'nope'"),
])
def test_bad_config_is_one_line_before_any_work(tmp_path, data, command, option, match):
    cache = tmp_path / "cache"
    r = CliRunner().invoke(cli, [command, "--data", str(data), "--out", str(tmp_path / "runs"), "--device", "cpu",
                                 f"--set=data.cache_dir={cache}", option])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: invalid config") and match in r.stderr
    assert not cache.exists() and not (tmp_path / "runs").exists()
