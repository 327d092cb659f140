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

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from test_foundation import _RunsCode

from augment.data import DataConfig, load_dataset, write_csv
from augment.phantoms import write_phantoms
from classifier.config import ClassifierConfig
from classifier.model import create_model
from classifier.overlays import write_overlays
from classifier.train import train
from cli import cli
from conftest import ROOT, save_gray, tiny_classifier_config
from cyclegan import GanConfig, synthesize, train_gan
from foundation.checkpoints import load_checkpoint, save_checkpoint
from foundation.config import config_to_dict, load_config
from foundation.errors import UserError
from foundation.outputs import confined_outputs, output_path

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


@pytest.mark.slow
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


@pytest.mark.slow
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
    save_checkpoint({"config": values, "model": {"generators": {}}, "step": 1}, tmp_path / "gan" / "checkpoint.pt")
    with pytest.raises(UserError, match="not a plain folder name"):
        synthesize(2, data, tmp_path, checkpoint=tmp_path / "gan", dest=tmp_path / "syn", device="cpu")
    assert not (tmp_path / "syn").exists() and not (tmp_path / "evil").exists()


@pytest.mark.slow
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


# ================================================================ round two
# ---------------------------------------------------------------- outputs confined to the destination
def test_output_names_from_inputs_stay_inside_the_destination(tmp_path):
    dest = tmp_path / "out"
    names = ["../../escape", "/etc/abs", "..", "a/../../b\\..\\c", ".hidden/x", "", "./a/./b", "caf\udce9"]
    paths = [output_path(dest, n, ".png") for n in names] + [output_path(dest, n, ".png", flat=True) for n in names]
    assert all(p.is_relative_to(dest.resolve()) and p != dest.resolve() for p in paths)
    assert output_path(dest, "covid/x", ".png") == dest.resolve() / "covid" / "x.png"
    (tmp_path / "elsewhere").mkdir()
    dest.mkdir()
    (dest / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="outside"):
        output_path(dest, "link/x.png")
    with pytest.raises(UserError, match="is an input image"):
        confined_outputs([tmp_path / "a.png"], [tmp_path / "a.png"])
    with pytest.raises(UserError, match="would both write"):
        confined_outputs(["a.png", "b.png"], [tmp_path / "o.png", tmp_path / "o.png"])


def files_under(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_lungseg_of_a_manifest_with_dotdot_paths_writes_only_inside_dest(lung_run, tmp_path):
    save_gray(tmp_path / "x.png", 90, size=(40, 40))  # beside the data folder, named by ../x.png
    data = tmp_path / "d"
    save_gray(data / "covid" / "a.png", 60, size=(40, 40))
    far = save_gray(tmp_path / "far" / "y.png", 70, size=(40, 40))
    (data / "manifest.csv").write_text(f"path,label\n../x.png,covid\ncovid/a.png,covid\n{far},normal\n")
    before = files_under(tmp_path)
    r = CliRunner().invoke(cli, ["lungseg", "--checkpoint", str(lung_run.run_dir), "--data", str(data),
                                 "--dest", str(tmp_path), "--device", "cpu"])  # dest: the films' own folder
    assert r.exit_code == 0, r.output
    after = files_under(tmp_path)
    assert all(after[p] == b for p, b in before.items())  # no input overwritten by its overlay
    new = sorted(p.relative_to(tmp_path).as_posix() for p in set(after) - set(before))
    assert len(new) == 7 and all(n.startswith(("mask/", "overlay/")) or n == "masks.csv" for n in new), new
    assert "mask/_/x.png" in new and "mask/covid/a.png" in new


def test_lungseg_refuses_two_inputs_that_would_write_one_output_before_writing(lung_run, tmp_path):
    data = tmp_path / "d"
    save_gray(data / "covid" / "a.png", 60, size=(40, 40))
    save_gray(data / "covid" / "a.jpg", 60, size=(40, 40))
    (data / "manifest.csv").write_text("path,label\ncovid/a.png,covid\ncovid/a.jpg,covid\n")
    r = CliRunner().invoke(cli, ["lungseg", "--checkpoint", str(lung_run.run_dir), "--data", str(data),
                                 "--dest", str(tmp_path / "out"), "--device", "cpu"])
    assert r.exit_code == 2 and "would both write" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- wrong results without a word
def write_manifest(path: Path, rows: list[str], header: str = "path,label,group_id,split") -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_a_class_without_training_images_is_a_one_line_error(tmp_path):
    write_phantoms(tmp_path / "d", 6, size=32, seed=0)
    splits = {"covid": "train train val val test test", "normal": "train train val val test test",
              "pneumonia": "val val val test test test"}  # pneumonia only in val and test
    rows = [f"{c}/{c}_{i:05d}.png,{c},{c}{i},{s}" for c in splits for i, s in enumerate(splits[c].split())]
    manifest = write_manifest(tmp_path / "d" / "manifest.csv", rows)
    r = CliRunner().invoke(cli, ["classify-train", "--data", str(manifest), "--out", str(tmp_path / "runs"),
                                 "--device", "cpu", *[f"--set={s}" for s in CLS_SET[:-1]], "--set=train.epochs=1",
                                 f"--set=data.cache_dir={tmp_path / 'cache'}"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "'pneumonia'" in r.stderr
    assert "no training image" in r.stderr and not list((tmp_path / "runs").glob("classifier/*"))


def test_one_file_under_two_spellings_is_one_image(folder_data, cfg):
    manifest = write_manifest(folder_data / "m.csv", [
        "covid/covid0.png,covid,,train", "./covid/covid0.png,covid,,test", "covid/../covid/covid0.png,covid,,val",
        "normal/normal0.png,normal,,train", "pneumonia/pneumonia0.png,pneumonia,,train"])
    ds = load_dataset(manifest, cfg, quiet=True)
    assert sorted(ds.paths) == ["covid/covid0.png", "normal/normal0.png", "pneumonia/pneumonia0.png"]
    assert ds.splits[ds.paths.index("covid/covid0.png")] == "train"
    repeats = [why for why in ds.skipped.values() if why.startswith("repeated")]
    assert len(repeats) == 2 and all("covid/covid0.png" in why for why in repeats)


def float_fields(cfg, prefix=""):
    """Dotted names of every float (or tuple-of-float) field of a config dataclass, nested ones included."""
    import dataclasses
    import typing
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from float_fields(value, f"{prefix}{f.name}.")
        elif float in (hints[f.name], *typing.get_args(hints[f.name])):
            yield f"{prefix}{f.name}", value


@pytest.mark.parametrize("bad", [".inf", "-.inf", ".nan", "nan", "1e999"])
def test_non_finite_numbers_are_refused_in_every_float_field(bad):
    from lungs import LungsegConfig
    checked = 0
    for cls in (ClassifierConfig, GanConfig, LungsegConfig):
        for key, value in float_fields(cls()):
            setting = f"{key}=[{', '.join([bad] * len(value))}]" if isinstance(value, tuple) else f"{key}={bad}"
            with pytest.raises(UserError, match=rf"config key '{key}' must be a finite number") as e:
                load_config(cls, None, [setting])
            assert "\n" not in str(e.value)
            checked += 1
    assert checked > 20


def test_nan_and_empty_group_ids_are_missing_not_one_patient(folder_data, cfg, capsys):
    rows = [f"{c}/{c}{i}.png,{c},{gid}" for c, ids in (("covid", ["nan", "NaN", "", "p1"]),
                                                         ("normal", ["None", "null", " nan ", "p1"]),
                                                         ("pneumonia", ["p2", "p2", "NULL", "none"]))
            for i, gid in enumerate(ids)]
    manifest = write_manifest(folder_data / "m.csv", rows, "path,label,group_id")
    ds = load_dataset(manifest, DataConfig(size=32, cache_dir=cfg.cache_dir, near_duplicates=False))
    by_path = dict(zip(ds.paths, ds.groups))
    missing = [p for p, gid in zip((r.split(",")[0] for r in rows), (r.split(",")[2] for r in rows))
               if gid.strip().lower() in ("nan", "", "none", "null")]
    assert len(missing) == 8 and len({by_path[p] for p in missing}) == 8  # each its own group
    assert by_path["covid/covid3.png"] == by_path["normal/normal3.png"] == "p1"
    assert "8 of 12 manifest rows have no patient id" in capsys.readouterr().err
    assert ds.grouping["missing_ids"] == 8


def test_images_a_folder_manifest_does_not_list_are_counted(phantom_dir, cfg, lung_data):
    save_gray(phantom_dir / "covid" / "extra.png", 80)
    save_gray(phantom_dir / "stray.jpg", 80)
    ds = load_dataset(phantom_dir, cfg, quiet=True)
    unlisted = {p for p, why in ds.skipped.items() if why.startswith("not listed in manifest.csv")}
    assert unlisted == {os.path.join("covid", "extra.png"), "stray.jpg"} and len(ds) == 18
    from augment.data_summary import format_report, inspect_data
    text = format_report(inspect_data(phantom_dir, cfg))
    assert "unreadable or ignored files: 2" in text and "extra.png: not listed in manifest.csv" in text
    masks_listed = load_dataset(lung_data, DataConfig(size=32, cache_dir=cfg.cache_dir), quiet=True)
    assert masks_listed.skipped == {}  # masks/ named by the manifest's mask column are listed


def edit_yaml(path: Path, section: str, key: str, value) -> None:
    import yaml
    values = yaml.safe_load(path.read_text())
    values[section][key] = value
    path.write_text(yaml.safe_dump(values, sort_keys=False))


def test_classifier_resume_uses_the_checkpoints_config_and_says_what_was_edited(tmp_path, data, one_thread):
    run = train(tiny_classifier_config(tmp_path, "train.ema=0"), data, tmp_path / "runs", device="cpu", quiet=True)
    edit_yaml(run / "config.yaml", "train", "epochs", 3)
    r = CliRunner().invoke(cli, ["classify-train", "--resume", str(run), "--data", str(data), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    warned = [l for l in r.stderr.splitlines() if "config.yaml: edited since the run started" in l]
    assert len(warned) == 1 and "train.epochs: 3, not 2" in warned[0]
    assert load_checkpoint(run / "last.pt")["epoch"] == 2  # the checkpoint's 2 epochs, not the file's 3


def test_lungseg_resume_uses_the_checkpoints_config(tmp_path, lung_data, one_thread, capsys):
    from conftest import tiny_lungseg_config
    from lungs.train import train_lungseg
    run = train_lungseg(tiny_lungseg_config(tmp_path / "cache", epochs=1), lung_data, tmp_path, device="cpu",
                        quiet=True).run_dir
    steps = load_checkpoint(run / "checkpoint.pt")["step"]
    edit_yaml(run / "config.yaml", "train", "epochs", 2)
    train_lungseg(None, lung_data, tmp_path, device="cpu", resume=run, quiet=True)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == steps
    assert "train.epochs: 2, not 1" in capsys.readouterr().err


def test_gan_resume_says_when_config_yaml_was_edited(tmp_path, data, gan_run, capsys):
    import shutil
    run = tmp_path / "gan" / gan_run.name
    shutil.copytree(gan_run, run)
    edit_yaml(run / "config.yaml", "train", "lr", 0.5)
    result = train_gan(None, data, tmp_path, device="cpu", resume=run)
    assert load_checkpoint(result.run_dir / "checkpoint.pt")["step"] == 1
    err = capsys.readouterr().err
    assert "config.yaml: edited since the run started (train.lr: 0.5, not 0.0002)" in err


# ---------------------------------------------------------------- hangs and leftovers
@pytest.fixture
def fifo_guard():
    """Opens FIFOs left blocked for writing (so a reader waiting on them gets end of file) after ``seconds``
    and records that it had to: a reader that opened a FIFO would otherwise hang the test run."""
    fired, fifos = [], []

    def unblock(signum, frame):
        fired.append(True)
        for f in fifos:
            try:
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        signal.alarm(1)

    old = signal.signal(signal.SIGALRM, unblock)
    signal.alarm(20)
    yield fifos, fired
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_a_fifo_with_an_image_suffix_is_skipped_not_read(folder_data, cfg, fifo_guard, tmp_path):
    fifos, fired = fifo_guard
    pipe = folder_data / "covid" / "pipe.png"
    os.mkfifo(pipe)
    fifos.append(pipe)
    ds = load_dataset(folder_data, cfg, quiet=True)
    assert not fired and len(ds) == 12
    assert ds.skipped == {os.path.join("covid", "pipe.png"): "not a regular file (a FIFO); only image files are read"}
    manifest = write_manifest(folder_data / "m.csv", ["covid/pipe.png,covid", "covid/covid0.png,covid",
                                                      "normal/normal0.png,normal", "pneumonia/pneumonia0.png,pneumonia"],
                              "path,label")
    ds = load_dataset(manifest, DataConfig(size=32, cache_dir=str(tmp_path / "cache2")), quiet=True)
    assert not fired and len(ds) == 3 and "not a regular file (a FIFO)" in ds.skipped["covid/pipe.png"]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_cache_build_removes_the_temporaries_of_killed_builds_only(folder_data, cfg, lung_data, tmp_path):
    cache = Path(cfg.cache_dir)
    cache.mkdir()
    gone, me = dead_pid(), os.getpid()
    stale = [cache / f"0123.npy.tmp{gone}.npy", cache / f"0123.npy.part{gone}.npy", cache / f"0123.json.tmp{gone}",
             cache / f".lungs-0123.tmp{gone}.npz"]
    live = [cache / f"4567.npy.tmp{me}.npy", cache / "notes.tmp.txt"]
    for p in stale + live:
        p.write_bytes(b"x" * 100)
    load_dataset(folder_data, cfg, quiet=True)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in live)
    from lungs.config import LungDataConfig
    from lungs.data import load_pairs
    lungs = tmp_path / "lung-cache"
    lungs.mkdir()
    (lungs / f".lungs-89ab.tmp{gone}.npz").write_bytes(b"x")
    load_pairs(lung_data, LungDataConfig(size=32, cache_dir=str(lungs)), quiet=True)
    assert not list(lungs.glob("*.tmp*"))


def test_a_run_that_failed_before_its_checkpoint_is_not_the_latest_run(tmp_path, data, one_thread):
    out = tmp_path / "runs"
    run = train(tiny_classifier_config(tmp_path), data, out, device="cpu", quiet=True)
    failed = out / "classifier" / "29991231-235959"  # newer, with run.json and config.yaml but no checkpoint
    failed.mkdir()
    for name in ("run.json", "config.yaml"):
        (failed / name).write_bytes((run / name).read_bytes())
    r = CliRunner().invoke(cli, ["predict", str(data / "covid"), "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert (run / "predictions" / "covid" / "predictions.csv").is_file()


# ---------------------------------------------------------------- one line, not a traceback
@pytest.fixture(scope="module")
def clf_run(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("clf")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run = train(tiny_classifier_config(tmp), data, tmp / "runs", device="cpu", quiet=True)
    torch.set_num_threads(threads)
    return run


def one_line_error(r, *needles: str) -> None:
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr


def test_a_checkpoint_of_another_kind_is_one_line_naming_it(tmp_path, data, clf_run, gan_run, lung_run):
    seg = lung_run.run_dir / "checkpoint.pt"
    gan = gan_run / "checkpoint.pt"
    common = ["--device", "cpu", "--out", str(tmp_path)]
    for args in (["predict", "--checkpoint", str(seg), str(data / "covid")],
                 ["cam", "--checkpoint", str(seg), str(data / "covid" / "covid_00000.png")],
                 ["evaluate", "--checkpoint", str(seg), "--data", str(data)],
                 ["compare", str(seg), str(clf_run), "--data", str(data)],
                 ["classify-train", "--resume", str(seg), "--data", str(data)]):
        one_line_error(CliRunner().invoke(cli, [*args, *common]), str(seg), "lung segmenter", "classify-train run")
    one_line_error(CliRunner().invoke(cli, ["predict", "--checkpoint", str(gan), str(data), *common]), "CycleGAN")
    for ckpt, what in ((clf_run / "best.pt", "a classifier checkpoint"), (seg, "a lung segmenter checkpoint")):
        for command in ("synthesize", "gan-eval"):
            r = CliRunner().invoke(cli, [command, "--checkpoint", str(ckpt), "--data", str(data), *common])
            one_line_error(r, str(ckpt), what, "gan-train")
    one_line_error(CliRunner().invoke(cli, ["lungseg-train", "--resume", str(clf_run / "last.pt"), "--data",
                                            str(data), *common]), "not a lungseg-train checkpoint")


@pytest.mark.parametrize("value", ["train.lr=[1", "train.lr={a: b", "train.lr='x", "train.lr=@x", "train.lr=a: b: c"])
def test_a_set_value_that_is_not_yaml_is_one_line(tmp_path, data, value):
    r = CliRunner().invoke(cli, ["gan-train", "--data", str(data), "--out", str(tmp_path), "--device", "cpu",
                                 f"--set={value}"])
    one_line_error(r, "--set", "not valid YAML")


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_leaves_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "run" / "last.pt"
    save_checkpoint({"step": 1}, path)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"PK partial")  # torch's writer reports a full disk as a RuntimeError, not an OSError
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match=r"last\.pt: could not write checkpoint \(\[enforce fail.*free disk space") as e:
        save_checkpoint({"step": 2}, path)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"] and load_checkpoint(path)["step"] == 1


def test_cam_and_predict_on_a_file_name_that_is_not_utf8(tmp_path, data, clf_run):
    odd = tmp_path / os.fsdecode(b"caf\xe9.png")
    odd.write_bytes((data / "covid" / "covid_00000.png").read_bytes())
    r = CliRunner().invoke(cli, ["cam", "--checkpoint", str(clf_run), str(odd), "--device", "cpu"])
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    [overlay] = (clf_run / "cam" / "gradcampp").glob("caf_*.png")
    assert overlay.name.isascii()
    dest = tmp_path / "pred"
    r = CliRunner().invoke(cli, ["predict", "--checkpoint", str(clf_run), "--cam", str(odd), "--dest", str(dest),
                                 "--device", "cpu"])
    one_line_error(r, r"b'", r"caf\xe9.png", "not valid UTF-8", "rename the file")
    assert not dest.exists()
    damaged = tmp_path / os.fsdecode(b"bad\xe9.png")
    damaged.write_bytes(b"not a picture")
    r = CliRunner().invoke(cli, ["cam", "--checkpoint", str(clf_run), str(damaged), "--device", "cpu"])
    one_line_error(r, "cannot read this image")


# ---------------------------------------------------------------- oversized inputs
def alias_bomb(levels: int = 7) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\ntrain:\n  lr: *a{levels - 1}\n"


@pytest.mark.parametrize("where", ["file", "set", "key"])
def test_a_yaml_alias_bomb_is_one_short_line(tmp_path, data, where):
    config = tmp_path / "bomb.yaml"
    config.write_text(alias_bomb() if where != "key" else alias_bomb().replace("train:\n  lr:", "data:\n  classes:"))
    args = (["--config", str(config)] if where != "set" else
            ["--set", "train.lr=[&a [x, x, x, x, x, x, x, x], &b [*a, *a, *a, *a, *a, *a, *a, *a], "
                      "&c [*b, *b, *b, *b, *b, *b, *b, *b], &d [*c, *c, *c, *c, *c, *c, *c, *c], "
                      "&e [*d, *d, *d, *d, *d, *d, *d, *d], [*e, *e, *e, *e, *e, *e, *e, *e]]"])
    start = time.monotonic()
    r = CliRunner().invoke(cli, ["gan-train", "--data", str(data), "--out", str(tmp_path / "runs"), "--device", "cpu",
                                 *args])
    one_line_error(r, "aliases")
    assert len(r.stderr) < 600 and time.monotonic() - start < 20


def test_values_echoed_in_config_errors_are_cut_short():
    with pytest.raises(UserError) as e:
        load_config(GanConfig, None, ["train.lr=[" + ", ".join(["abcdefghij" * 10] * 500) + "]"])
    assert len(str(e.value)) < 300 and "\n" not in str(e.value)


def huge_png(path: Path, width: int, height: int, rows: int = 2) -> Path:
    """A gray PNG whose header says ``width`` × ``height`` with only ``rows`` rows of data: the header is all
    a reader bounded by pixel count may look at."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    pixels = zlib.compress(b"".join(b"\x00" + bytes(width) for _ in range(rows)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def test_an_image_of_too_many_pixels_is_skipped_from_its_header(folder_data, cache_dir, monkeypatch):
    huge_png(folder_data / "covid" / "huge.png", 20000, 19000)  # 380 M pixels, 380 MB to decode
    big = save_gray(folder_data / "normal" / "big.png", 50, size=(1200, 1000))
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size) or real_load(self))
    ds = load_dataset(folder_data, DataConfig(size=32, cache_dir=str(cache_dir)), quiet=True)
    assert (20000, 19000) not in decoded  # refused before any pixel was read
    assert ds.skipped == {os.path.join("covid", "huge.png"): "too many pixels (20000×19000 = 380 M, more than "
                          "data.max_pixels = 100 M); raise data.max_pixels to read it"}
    ds = load_dataset(folder_data, load_config(DataConfig, None, ["max_pixels=1000000", f"cache_dir={cache_dir}",
                                                                  "size=32"]), quiet=True)
    assert len(ds) == 12 and "more than data.max_pixels = 1 M" in ds.skipped[os.path.join("normal", "big.png")]
    assert big.exists()


# ---------------------------------------------------------------- a valid input refused
@pytest.mark.parametrize("present,absent", [(("covid", "normal"), "pneumonia"), (("normal",), "covid, pneumonia")])
@pytest.mark.slow
def test_evaluate_on_an_external_set_of_some_classes(tmp_path, clf_run, present, absent):
    import json
    name = "-".join(present)
    external = write_phantoms(tmp_path / name, 10 // len(present), size=32, seed=11, classes=present)
    r = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(clf_run), "--data", str(external), "--device", "cpu",
                                 "--config", str(ROOT / "configs" / "classify-train-demo.yaml")])
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    warned = [l for l in r.stderr.splitlines() if "no image of class" in l]
    assert len(warned) == 1 and f"no image of class {absent} among the 10 evaluated" in warned[0]
    out = clf_run / "eval" / f"{name}-all"
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 10 and m["absent_classes"] == absent.split(", ")
    assert m["per_class"]["pneumonia"]["sensitivity"] is None and m["per_class"]["pneumonia"]["support"] == 0
    assert m["per_class"]["normal"]["sensitivity"] is not None
    assert (m["binary"]["auc"] is not None) == ("covid" in present)  # covid vs rest needs both
    assert (m["macro"]["auc"] is not None) == (len(present) > 1)
    assert len(m["confusion"]) == 3 and sum(map(sum, m["confusion"])) == 10
    assert all((out / f"{name}.png").is_file() for name in ("roc", "pr", "confusion"))
    assert f"No image of class {absent}" in (out / "report.md").read_text()


# ---------------------------------------------------------------- spreadsheet safety
FORMULAS = ["=HYPERLINK(\"http://x\",\"y\").png", "+1+cmd.png", "-2+3.png", "@SUM(A1).png", "\t=x.png", "\r=x.png",
            "'=x.png", "''+x.png", "'plain.png", "-0.5", "+3", "plain=.png", "1e-4"]


def test_csv_cells_a_spreadsheet_would_run_are_neutralised_and_read_back_unchanged(tmp_path):
    import csv

    from augment.data import csv_rows
    path = tmp_path / "m.csv"
    write_csv(path, [{"path": v, "label": "covid"} for v in FORMULAS], ["path", "label"])
    with open(path, newline="", encoding="utf-8") as f:
        raw = [row["path"] for row in csv.DictReader(f)]
    numbers = {"-0.5", "+3", "1e-4"}  # a number is no formula: kept as it is
    for cell in raw:  # what a spreadsheet opens: no other cell starts a formula
        assert cell in numbers or not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    assert numbers <= set(raw) and raw[FORMULAS.index("'plain.png")] == "'plain.png"
    with open(path, newline="", encoding="utf-8") as f:
        assert [row["path"] for row in csv_rows(f)] == FORMULAS


def test_formula_names_round_trip_through_manifests_and_predictions(tmp_path, clf_run):
    films = tmp_path / "films"
    for name in ("=1+1.png", "-x.png", "@y.png"):
        save_gray(films / name, 90, size=(32, 32))
    manifest = films / "m.csv"
    write_csv(manifest, [{"path": p.name, "label": "covid", "group_id": "=SUM(A1)"} for p in sorted(films.glob("*.png"))],
              ["path", "label", "group_id"])
    assert "\n'=1+1.png,covid,'=SUM(A1)" in manifest.read_text().replace("\r\n", "\n")
    ds = load_dataset(manifest, DataConfig(size=32, cache_dir=str(tmp_path / "cache")), required=(), quiet=True)
    assert sorted(ds.paths) == ["-x.png", "=1+1.png", "@y.png"] and set(ds.groups) == {"=SUM(A1)"} and not ds.skipped
    r = CliRunner().invoke(cli, ["predict", "--checkpoint", str(clf_run), str(films), "--dest", str(tmp_path / "p"),
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    import csv
    with open(tmp_path / "p" / "predictions.csv", newline="", encoding="utf-8") as f:
        cells = [row["path"] for row in csv.DictReader(f)]
    assert len(cells) == 4 and all(c.startswith(str(films)) for c in cells)  # paths under a folder: no formula
    os.chdir(films)  # names given as they are listed, relative: the cells start with =, - and @
    try:
        r = CliRunner().invoke(cli, ["predict", "--checkpoint", str(clf_run), "--dest", str(tmp_path / "q"),
                                     "--device", "cpu", "--", "=1+1.png", "-x.png", "@y.png"])
    finally:
        os.chdir(ROOT)
    assert r.exit_code == 0, r.output
    text = (tmp_path / "q" / "predictions.csv").read_text()
    assert "\n'=1+1.png," in text and "\n'-x.png," in text and "\n'@y.png," in text
