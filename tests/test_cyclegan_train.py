"""gan-train: learning on phantoms, logging, exact resume, training split only, NaN stop, DDP."""
import hashlib
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import augment.batches
import cyclegan.model
import cyclegan.train
import foundation.loop
from augment.batches import DeviceImages
from augment.data import load_dataset
from augment.phantoms import write_phantoms
from conftest import StopAfter
from cyclegan import GanConfig, train_gan
from cyclegan.model import LOSS_NAMES, CycleGAN
from cyclegan.step import TrainStep
from foundation.checkpoints import load_checkpoint
from foundation.config import load_config
from foundation.distributed import Dist
from foundation.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(tmp_path, *overrides) -> GanConfig:
    """32² images, ngf/ndf 8, one residual block, a 2-layer PatchGAN, a pool of 2."""
    return load_config(GanConfig, None, [
        "data.size=32", f"data.cache_dir={tmp_path / 'cache'}", "model.ngf=8", "model.ndf=8", "model.n_blocks=1",
        "model.n_layers_d=2", "train.pool_size=2", "train.log_every=5", *overrides])


@pytest.fixture
def data(tmp_path):
    """12 phantoms per class (6 patients each), split by patient into train/val/test."""
    return write_phantoms(tmp_path / "phantoms", 12, 32, seed=0)


def all_weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.slow
def test_losses_fall_and_everything_is_logged(tmp_path, data):
    cfg = tiny_config(tmp_path, "train.steps=40", "train.log_every=10", "train.image_every=20", "model.ngf=16")
    result = train_gan(cfg, data, tmp_path / "runs", device="cpu")
    events = EventAccumulator(str(result.run_dir)).Reload()
    tags = events.Tags()
    assert {f"loss/{n}" for n in LOSS_NAMES} | {"lr"} <= set(tags["scalars"])
    assert "translation" in tags["images"]
    cycle = [e.value for e in events.Scalars("loss/cycle_a")]
    assert len(cycle) == 4 and cycle[-1] < 0.8 * cycle[0]
    assert events.Scalars("lr")[-1].value == 0.0  # decayed linearly to zero at the last step
    assert (result.run_dir / "config.yaml").exists() and (result.run_dir / "run.json").exists()
    state = load_checkpoint(result.run_dir / "checkpoint.pt")
    assert state["step"] == 40 and state["config"]["model"]["ngf"] == 16


def test_interrupt_then_resume_equals_a_straight_run(tmp_path, data, monkeypatch, capsys):
    cfg = tiny_config(tmp_path, "train.steps=8", "train.pool_size=6")  # the pools fill across the interruption
    straight = train_gan(cfg, data, tmp_path / "a", device="cpu", seed=3)
    monkeypatch.setattr(foundation.loop, "GracefulStop", StopAfter)
    first = train_gan(cfg, data, tmp_path / "b", device="cpu", seed=3)
    assert first.interrupted and first.step == 4
    printed = capsys.readouterr().err
    assert "stopped at step 4 of 8" in printed and f"--resume {first.run_dir / 'checkpoint.pt'}" in printed
    monkeypatch.undo()
    resumed = train_gan(None, data, tmp_path / "b", device="cpu", resume=first.run_dir)
    assert resumed.step == 8 and resumed.run_dir == first.run_dir and not resumed.interrupted
    assert_same_state(resumed.model, straight.model)


def assert_same_state(got, want) -> None:
    """Bit for bit the same weights, optimiser moments, device step count, learning rate and image pools."""
    assert torch.equal(all_weights(got), all_weights(want))
    for opt in ("opt_g", "opt_d"):
        for p_got, p_want in zip(getattr(got, opt).state.values(), getattr(want, opt).state.values()):
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(p_got[key], p_want[key]), (opt, key)
    assert int(got.step) == int(want.step) and torch.equal(got.lr, want.lr)
    for pool in ("pool_a", "pool_b"):
        assert torch.equal(getattr(got, pool).images, getattr(want, pool).images), pool
        assert int(getattr(got, pool).count) == int(getattr(want, pool).count), pool


def test_cuda_graph_is_refused_under_torchrun(tmp_path, data):
    cfg = tiny_config(tmp_path, "train.cuda_graph=true")
    with pytest.raises(UserError, match="train.cuda_graph.*torchrun.*train.cuda_graph=false"):
        cyclegan.train._train(cfg, data, tmp_path / "runs", torch.device("cpu"), Dist(rank=0, world_size=2), 0, None,
                              False, None)
    assert not (tmp_path / "runs").exists()


def test_cuda_graph_is_ignored_on_the_cpu(tmp_path, data):
    cfg = tiny_config(tmp_path, "train.cuda_graph=true")
    model = CycleGAN(cfg, torch.device("cpu"), total_steps=2)
    ds = load_dataset(data, cfg.data, quiet=True)
    images = [DeviceImages(ds.images[ds.indices("train", c)], ds.labels[ds.indices("train", c)], "cpu")
              for c in ("normal", "covid")]
    step = TrainStep(model)
    losses = step(images[0].get(torch.tensor([0]))[0], images[1].get(torch.tensor([1]))[0])
    assert not step.cuda_graph and step.graph is None and losses.shape == (len(LOSS_NAMES),)
    assert int(model.step) == 1


def test_optimisers_restored_from_another_device_keep_this_devices_flags(tmp_path):
    """A checkpoint saved on a GPU (capturable optimisers) resumes on the CPU as the CPU builds them, and the
    other way round: a CPU checkpoint resumed on a GPU can still be captured in a CUDA graph."""
    cfg = tiny_config(tmp_path)
    saved = CycleGAN(cfg, torch.device("cpu"), total_steps=2).state_dict()
    for opt in ("opt_g", "opt_d"):
        saved[opt]["param_groups"][0]["capturable"] = True  # as written on a GPU
    model = CycleGAN(cfg, torch.device("cpu"), total_steps=2)
    model.load_state_dict(saved)
    assert not any(g["capturable"] for g in model.opt_g.param_groups + model.opt_d.param_groups)
    assert all(g["lr"] is model.lr for g in model.opt_g.param_groups + model.opt_d.param_groups)


def test_compiled_code_is_written_once_per_set_up_and_loaded_by_later_runs(tmp_path, data, monkeypatch):
    """torch.compile's artifacts go to <out>/cache/compile-<torch version>-<hash>.bin after the first steps;
    a later run of the same set-up loads them before it compiles and leaves the file alone; another
    set-up gets its own file; a file that does not load is rewritten. Compiling itself is replaced here
    (minutes on a CPU); tests/test_cyclegan_gpu.py compiles for real."""
    saved, loaded = [], []

    def load(blob):
        if blob == b"damaged":
            raise RuntimeError("bad magic")
        loaded.append(blob)

    monkeypatch.setattr(torch, "compile", lambda module: module)
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: saved.append(1) or (b"code%d" % len(saved), {}))
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", load)
    runs = tmp_path / "runs"
    cfg = tiny_config(tmp_path, "train.steps=2", "train.log_every=1", "train.tensorboard=false")
    train_gan(cfg, data, runs, device="cpu", compile=True)
    [file] = (runs / "cache").glob("compile-*.bin")
    assert file.name.startswith(f"compile-{torch.__version__}-") and file.read_bytes() == b"code1" and not loaded
    train_gan(cfg, data, runs, device="cpu", compile=True)
    assert loaded == [b"code1"] and len(saved) == 1 and file.read_bytes() == b"code1"
    train_gan(tiny_config(tmp_path, "train.steps=2", "train.log_every=1", "train.tensorboard=false",
                          "train.batch_size=2"), data, runs, device="cpu", compile=True)
    assert len(list((runs / "cache").glob("compile-*.bin"))) == 2
    file.write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="compiled code not loaded \\(bad magic\\); compiling afresh"):
        train_gan(cfg, data, runs, device="cpu", compile=True)
    assert file.read_bytes() == b"code3"


@pytest.mark.slow
def test_batches_streamed_from_host_memory_train_the_same_model(tmp_path, data, monkeypatch):
    """A cache share of 0 leaves both domains on the host and streams each batch: the same weights and pools."""
    cfg = tiny_config(tmp_path, "train.steps=6", "train.batch_size=2", "train.eval_every=3", "train.eval_images=4")
    resident = train_gan(cfg, data, tmp_path / "a", device="cpu", seed=5)
    cfg.train.device_cache_share = 0.0
    monkeypatch.setattr(augment.batches, "DeviceImages", None)  # image_sets may build no resident set
    streamed = train_gan(cfg, data, tmp_path / "b", device="cpu", seed=5)
    assert torch.equal(all_weights(resident.model), all_weights(streamed.model))
    assert torch.equal(resident.model.pool_b.images, streamed.model.pool_b.images)


def test_only_training_split_images_are_used(tmp_path, data, monkeypatch):
    cfg = tiny_config(tmp_path, "train.steps=2", "train.eval_every=2", "train.eval_images=4")
    used = []

    class Spy(augment.batches.DeviceImages):
        def __init__(self, images, labels, device, rows):
            used.extend(hashlib.sha1(im.numpy().tobytes()).hexdigest() for im in images[rows])
            super().__init__(images, labels, device, rows)

    monkeypatch.setattr(augment.batches, "DeviceImages", Spy)  # what image_sets builds the training sets with
    train_gan(cfg, data, tmp_path / "runs", device="cpu")
    ds = load_dataset(data, cfg.data, quiet=True)
    digest = [hashlib.sha1(im.numpy().tobytes()).hexdigest() for im in ds.images]
    train = {digest[i] for c in ("normal", "covid") for i in ds.indices("train", c).tolist()}
    held_out = {digest[i] for s in ("val", "test") for i in ds.indices(s).tolist()}
    assert held_out and train
    assert set(used) == train and not set(used) & held_out


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, data, monkeypatch):
    cfg = tiny_config(tmp_path, "train.steps=12", "train.log_every=2", "train.checkpoint_every=5")
    calls = {"n": 0}
    real_loss = cyclegan.model.lsgan_loss

    def poisoned(scores, real):  # 6 calls per step: NaN from step 7 on
        calls["n"] += 1
        loss = real_loss(scores, real)
        return loss * float("nan") if calls["n"] > 36 else loss

    monkeypatch.setattr(cyclegan.model, "lsgan_loss", poisoned)
    with pytest.raises(UserError, match=r"NaN or infinite at step 7.*\(step 5\), is kept"):
        train_gan(cfg, data, tmp_path / "runs", device="cpu")
    [ckpt] = (tmp_path / "runs" / "gan").glob("*/checkpoint.pt")
    state = load_checkpoint(ckpt)
    assert state["step"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"]["generators"].values())


def _ddp_worker(rank, port, data, out, cache, result_file, stop_after, resume):
    """One rank of a 2-process gloo run of 6 steps (seed 1); ``stop_after``: a Ctrl-C at that many stop
    checks; ``resume``: a run folder to continue. Saves this rank's weights, pools and step."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    if stop_after:
        foundation.loop.GracefulStop = lambda: StopAfter(stop_after)
    cfg = load_config(GanConfig, None, [
        "data.size=32", f"data.cache_dir={cache}", "model.ngf=8", "model.ndf=8", "model.n_blocks=1",
        "model.n_layers_d=2", "train.pool_size=2", "train.steps=6", "train.log_every=1", "train.tensorboard=false"])
    result = train_gan(None if resume else cfg, data, out, device="cpu", seed=1, resume=resume)
    m = result.model
    torch.save({"weights": all_weights(m), "pool_a": m.pool_a.images, "pool_b": m.pool_b.images, "step": result.step},
               result_file.format(rank=rank))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_two_ranks(tmp_path, data, cache, name, stop_after=0, resume=None) -> list[dict]:
    result_file = str(tmp_path / f"{name}-rank{{rank}}.pt")
    mp.spawn(_ddp_worker, args=(free_port(), str(data), str(tmp_path / name), cache, result_file, stop_after,
                                resume and str(resume)), nprocs=2, join=True)
    return [torch.load(result_file.format(rank=r)) for r in range(2)]


@pytest.mark.slow
def test_ddp_two_gloo_processes_stay_in_sync_and_resume_exactly(tmp_path, data):
    cfg = tiny_config(tmp_path)
    load_dataset(data, cfg.data, quiet=True)  # fill the cache before the workers start
    straight = spawn_two_ranks(tmp_path, data, cfg.data.cache_dir, "straight")
    # gradients were averaged: both ranks took identical steps, though each saw its own images and pool
    assert torch.equal(straight[0]["weights"], straight[1]["weights"])
    assert not torch.equal(straight[0]["pool_b"], straight[1]["pool_b"])
    [run] = (tmp_path / "straight" / "gan").iterdir()  # rank 0 alone writes the run folder
    assert json.loads((run / "run.json").read_text())["world_size"] == 2
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["step"] == 6 and len(state["ranks"]) == 2
    saved = torch.cat([v.flatten() for part in ("generators", "discriminators") for v in state["model"][part].values()])
    torch.testing.assert_close(saved, straight[0]["weights"], rtol=0, atol=0)  # shapes checked too

    stopped = spawn_two_ranks(tmp_path, data, cfg.data.cache_dir, "resumed", stop_after=3)
    assert [r["step"] for r in stopped] == [3, 3]  # both ranks stopped and saved at the same step
    [run] = (tmp_path / "resumed" / "gan").iterdir()
    resumed = spawn_two_ranks(tmp_path, data, cfg.data.cache_dir, "resumed", resume=run)
    for rank in range(2):  # each rank continued with its own RNG state and image pools
        for key in ("weights", "pool_a", "pool_b"):
            assert torch.equal(resumed[rank][key], straight[rank][key]), f"{key} {rank}"
