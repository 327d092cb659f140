"""Run machinery: checkpoints, RNG state, run folders, interruption."""
from __future__ import annotations

import io
import json
import os
import pickle
import random
import signal
from dataclasses import dataclass

import pytest
import torch
import yaml

import foundation.runs as runs
from foundation.checkpoints import load_checkpoint, save_checkpoint
from foundation.devices import autocast, cpu_bf16_native, pick_device, rng_state, set_rng_state
from foundation.errors import UserError
from foundation.runs import latest_run, new_run_dir, resolve_run_file, write_run_info
from foundation.signals import GracefulStop


def test_checkpoint_roundtrip(tmp_path):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "step": 7, "rng": rng_state(), "name": "x"}
    save_checkpoint(state, tmp_path / "sub" / "last.pt")
    back = load_checkpoint(tmp_path / "sub" / "last.pt")
    assert torch.equal(back["model"]["w"], state["model"]["w"]) and back["step"] == 7
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["last.pt"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch, error):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)

    def half_write(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise error
    monkeypatch.setattr(torch, "save", half_write)
    with pytest.raises(UserError if isinstance(error, (OSError, RuntimeError)) else type(error)) as e:
        save_checkpoint({"step": 2}, path)  # torch's writer reports a full disk as a RuntimeError
    if isinstance(error, (OSError, RuntimeError)):
        assert str(error.args[-1]) in str(e.value) and "last.pt" in str(e.value)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["plain pickle", "torch.save"])
def test_checkpoint_that_would_run_code_is_refused(tmp_path, kind):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    if kind == "plain pickle":
        path.write_bytes(pickle.dumps({"model": _RunsCode(marker)}))
    else:
        buf = io.BytesIO()
        torch.save({"model": _RunsCode(marker)}, buf)
        path.write_bytes(buf.getvalue())
    with pytest.raises(UserError, match="refused to load") as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"\x80\x02}q\x00", b"PK\x03\x04garbage"])
def test_damaged_checkpoint_is_a_user_error(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="not a readable checkpoint") as e:
        load_checkpoint(path)
    assert "bad.pt" in str(e.value) and "\n" not in str(e.value)


def test_truncated_checkpoint_is_a_user_error(tmp_path):
    save_checkpoint({"w": torch.randn(100)}, tmp_path / "c.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "c.pt")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "none.pt")


def test_rng_state_replays_draws():
    torch.manual_seed(5)
    random.seed(5)
    state = rng_state()
    first = (torch.rand(4), random.random(), torch.randint(100, (3,)))
    set_rng_state(state)
    again = (torch.rand(4), random.random(), torch.randint(100, (3,)))
    assert torch.equal(first[0], again[0]) and first[1] == again[1] and torch.equal(first[2], again[2])


def test_rng_state_survives_a_checkpoint(tmp_path):
    save_checkpoint({"rng": rng_state()}, tmp_path / "c.pt")
    expected = torch.rand(3)
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert torch.equal(torch.rand(3), expected)


def test_pick_device():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="choose auto, cpu, cuda"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            pick_device("cuda")


def test_new_run_dirs_are_distinct_and_latest_finds_the_newest(tmp_path):
    runs = [new_run_dir(tmp_path, "gan") for _ in range(3)]
    assert len(set(runs)) == 3 and all(r.is_dir() and r.parent == tmp_path / "gan" for r in runs)
    assert latest_run(tmp_path, "gan") is None  # none finished writing run.json
    for r in runs[:2]:
        (r / "run.json").write_text("{}")
    assert latest_run(tmp_path, "gan") == runs[1]
    assert latest_run(tmp_path, "classifier") is None


def test_latest_run_orders_numeric_suffixes(tmp_path):
    for name in ["20260101-120000", "20260101-120000-2", "20260101-120000-10", "20251231-235959-11"]:
        (tmp_path / "gan" / name).mkdir(parents=True)
        (tmp_path / "gan" / name / "run.json").write_text("{}")
    assert latest_run(tmp_path, "gan").name == "20260101-120000-10"


def test_resolve_run_file_takes_a_file_a_run_folder_or_the_latest_run(tmp_path):
    old, new = tmp_path / "classifier" / "20260101-120000", tmp_path / "classifier" / "20260102-120000"
    for run in (old, new):
        run.mkdir(parents=True)
        (run / "run.json").write_text("{}")
        (run / "last.pt").write_bytes(b"x")
    (old / "best.pt").write_bytes(b"x")
    names = ("best.pt", "last.pt")
    assert resolve_run_file(old / "last.pt", tmp_path, "classifier", names) == old / "last.pt"  # a file as given
    assert resolve_run_file(old, tmp_path, "classifier", names) == old / "best.pt"  # the first name present
    assert resolve_run_file(None, tmp_path, "classifier", names) == new / "last.pt"  # the latest run
    with pytest.raises(UserError, match=r"gan: no gan run with checkpoint.pt yet; run `cxrgan gan-train` first or pass --checkpoint"):
        resolve_run_file(None, tmp_path, "gan", ("checkpoint.pt",), "checkpoint.pt")
    with pytest.raises(UserError, match=r"20260102-120000: no best.pt here; give a classifier run folder"):
        resolve_run_file(new, tmp_path, "classifier", ("best.pt",))
    with pytest.raises(UserError, match=r"nothing.pt: no such checkpoint"):
        resolve_run_file(tmp_path / "nothing.pt", tmp_path, "classifier", names)


def test_write_run_info(tmp_path):
    @dataclass
    class Cfg:
        lr: float = 0.1
        sizes: tuple[int, ...] = (1, 2)
    write_run_info(tmp_path, Cfg(), seed=3, data_fingerprint="abc", note="hi")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == {"lr": 0.1, "sizes": [1, 2]}
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["seed"] == 3 and info["data_fingerprint"] == "abc" and info["note"] == "hi"
    assert info["versions"]["torch"] == torch.__version__ and info["versions"]["python"]
    for key in ("command", "started", "git_commit", "hostname", "gpu"):
        assert key in info
    assert info["config_file"] is None and info["config_overrides"] == []  # built in code, not read from a file
    assert info["versions"]["cxrgan"] == runs.toolkit_version() != "unknown"


def test_graceful_stop_turns_sigint_into_a_request():
    before = signal.getsignal(signal.SIGINT)
    with GracefulStop() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second signal stops at once
    assert signal.getsignal(signal.SIGINT) is before


def test_null_writer_when_disabled(tmp_path):
    writer = runs.tensorboard_writer(tmp_path, enabled=False)
    writer.add_scalar("x", 1.0, 0)
    writer.close()
    assert list(tmp_path.iterdir()) == []


def test_bf16_autocast_on_the_cpu_only_when_asked_and_native():
    x, w = torch.rand(2, 8), torch.rand(8, 4)
    cpu = torch.device("cpu")
    with autocast(cpu):
        assert (x @ w).dtype == torch.float32  # CUDA-only by default
    with autocast(cpu, cpu=True):
        assert (x @ w).dtype == (torch.bfloat16 if cpu_bf16_native() else torch.float32)
    with autocast(cpu, enabled=False, cpu=True):
        assert (x @ w).dtype == torch.float32


def test_device_names_cuda_n_and_mps_and_their_errors():
    from foundation.devices import pick_device
    assert pick_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "cpu:1", "mps:0"):
        with pytest.raises(UserError, match="choose auto, cpu, cuda, cuda:N"):
            pick_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--device cuda:1: no CUDA GPU is visible"):
            pick_device("cuda:1")
    elif torch.cuda.device_count() == 1:
        with pytest.raises(UserError, match="has 1 GPU"):
            pick_device("cuda:1")
    if not torch.backends.mps.is_available():
        with pytest.raises(UserError, match="--device mps: no Apple GPU"):
            pick_device("mps")
