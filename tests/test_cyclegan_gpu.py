"""gan-train and synthesize on a CUDA GPU: the CUDA-graph step equals the eager one, a graphed run
resumes exactly, the step runs in bf16 with fused optimisers and no host sync, compiled code is reused
from the per-machine cache, and synthesize's pinned, overlapped writing delivers the generator's
translations. Skipped without a GPU.

The GAN under Adam carries a one-ulp difference in the gradients to several lr in the weights within
ten steps (on the CPU, changing every generator gradient by 2^-23 of itself moves weights by up to 3e-3).
ReflectionPad2d's CUDA backward adds with atomics in an order that varies from run to run (PyTorch
lists it as nondeterministic), so the exactness tests pad with slices and flips instead, whose backward
adds in a fixed order, and first check that two eager runs agree. States are compared with tolerances
far below what the steps move a weight (up to about lr = 2e-4 each), which a wrong image, draw or
learning rate would exceed.
"""
import csv

import numpy as np
import pytest
import torch
from PIL import Image
from test_cyclegan_train import all_weights
from test_cyclegan_train import tiny_config as cpu_tiny_config

import foundation.loop
from augment.batches import DeviceImages
from augment.data import load_dataset
from augment.phantoms import write_phantoms
from conftest import StopAfter
from cyclegan import GanConfig, synthesize, train_gan
from cyclegan.checkpoint import load_generator_ab
from cyclegan.inference import translate
from cyclegan.model import CycleGAN
from cyclegan.step import TrainStep
from foundation.checkpoints import load_checkpoint

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def tiny_config(tmp_path, *overrides) -> GanConfig:
    """test_cyclegan_train's tiny GAN with a pool of 3 and no TensorBoard (bf16 on and channels_last off, as by
    default)."""
    return cpu_tiny_config(tmp_path, "train.pool_size=3", "train.tensorboard=false", *overrides)


@pytest.fixture
def data(tmp_path):
    return write_phantoms(tmp_path / "phantoms", 12, 32, seed=0)


def reflect_pad(x: torch.Tensor, padding: tuple[int, int, int, int]) -> torch.Tensor:
    """``F.pad(x, padding, "reflect")`` of ``(B, C, H, W)`` from slices, flips and concatenations, whose
    backward adds the reflected gradients in a fixed order."""
    left, right, top, bottom = padding
    x = torch.cat([x[..., 1:left + 1].flip(-1), x, x[..., -right - 1:-1].flip(-1)], -1)
    return torch.cat([x[..., 1:top + 1, :].flip(-2), x, x[..., -bottom - 1:-1, :].flip(-2)], -2)


@pytest.fixture
def deterministic(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.nn.ReflectionPad2d, "forward", lambda self, x: reflect_pad(x, self.padding))


@pytest.fixture
def replays(monkeypatch) -> list:
    """One entry per CUDA-graph replay."""
    calls = []
    replay = torch.cuda.CUDAGraph.replay

    def counted(graph):
        calls.append(1)
        return replay(graph)
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", counted)
    return calls


def assert_same_state(got: CycleGAN, want: CycleGAN) -> None:
    torch.testing.assert_close(all_weights(got), all_weights(want), rtol=1e-3, atol=1e-5)
    for opt in ("opt_g", "opt_d"):
        for p_got, p_want in zip(getattr(got, opt).state.values(), getattr(want, opt).state.values()):
            assert torch.equal(p_got["step"], p_want["step"])
            torch.testing.assert_close(p_got["exp_avg"], p_want["exp_avg"], rtol=5e-2, atol=1e-5)
    assert int(got.step) == int(want.step) and torch.equal(got.lr, want.lr)
    for pool in ("pool_a", "pool_b"):
        torch.testing.assert_close(getattr(got, pool).images, getattr(want, pool).images, rtol=1e-2, atol=1e-3)
        assert int(getattr(got, pool).count) == int(getattr(want, pool).count)


def test_graph_replays_equal_eager_steps(tmp_path, data, deterministic, replays):
    exact = ("train.steps=10", "train.bf16=false")  # bf16 gradients add up in any order: a weight may tip over
    eager = train_gan(tiny_config(tmp_path, *exact), data, tmp_path / "eager", device="cuda", seed=3)
    again = train_gan(tiny_config(tmp_path, *exact), data, tmp_path / "again", device="cuda", seed=3)
    assert_same_state(again.model, eager.model)  # else the eager step itself is not reproducible here
    assert not replays
    graphed = train_gan(tiny_config(tmp_path, *exact, "train.cuda_graph=true"), data, tmp_path / "graph",
                        device="cuda", seed=3)
    assert len(replays) == 10 - TrainStep.WARMUP  # eager warm-up, then capture and replay
    assert_same_state(graphed.model, eager.model)


def test_interrupted_graphed_run_resumes_like_an_uninterrupted_one(tmp_path, data, deterministic, replays,
                                                                   monkeypatch):
    cfg = tiny_config(tmp_path, "train.steps=12", "train.cuda_graph=true", "train.bf16=false")  # as above
    straight = train_gan(cfg, data, tmp_path / "a", device="cuda", seed=3)
    graceful_stop = foundation.loop.GracefulStop
    monkeypatch.setattr(foundation.loop, "GracefulStop", lambda: StopAfter(5))
    first = train_gan(cfg, data, tmp_path / "b", device="cuda", seed=3)
    assert first.interrupted and first.step == 5
    saved = load_checkpoint(first.run_dir / "checkpoint.pt")
    # the pools and the jitter draw from the CUDA generator: without its state restored, the resumed run
    # would draw from the freshly seeded one and part from the straight run
    assert "cuda" in saved["ranks"][0]["rng"]
    monkeypatch.setattr(foundation.loop, "GracefulStop", graceful_stop)
    resumed = train_gan(None, data, tmp_path / "b", device="cuda", resume=first.run_dir)
    assert resumed.step == 12 and not resumed.interrupted
    assert_same_state(resumed.model, straight.model)


def test_step_is_bf16_channels_last_fused_and_free_of_host_syncs(tmp_path, data):
    cfg = tiny_config(tmp_path, "train.channels_last=true")
    device = torch.device("cuda")
    model = CycleGAN(cfg, device, total_steps=10)
    for opt in (model.opt_g, model.opt_d):
        assert opt.defaults["fused"] and opt.defaults["capturable"]
        assert opt.param_groups[0]["lr"] is model.lr and model.lr.device.type == "cuda"
    conv = model.generators.ab.net[4]  # the first downsampling: 8 → 16 channels
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    dtypes = []
    conv.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    ds = load_dataset(data, cfg.data, quiet=True)
    images = [DeviceImages(ds.images[ds.indices("train", c)], ds.labels[ds.indices("train", c)], device)
              for c in ("normal", "covid")]
    step = TrainStep(model)
    positions = torch.zeros(1, dtype=torch.long, device=device)
    batch = lambda: (images[0].get(positions)[0], images[1].get(positions)[0])  # noqa: E731  the loop's gather
    step(*batch())  # lazy initialisation (optimiser state, pools, cuDNN handles) may sync once
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            losses = step(*batch())
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert set(dtypes) == {torch.bfloat16} and torch.isfinite(losses).all()
    assert int(model.step) == 4 and int(model.pool_a.count) == 3


@pytest.mark.slow
def test_compiled_code_is_cached_and_a_later_run_compiles_nothing(tmp_path, data):
    from torch._dynamo.utils import counters
    from torch._inductor import utils as inductor_utils
    fresh = getattr(inductor_utils, "fresh_cache", None) or inductor_utils.fresh_inductor_cache
    cfg = tiny_config(tmp_path, "train.steps=2", "train.log_every=1")
    with fresh():  # an empty local compile cache: only the file below can help the second run
        train_gan(cfg, data, tmp_path / "runs", device="cuda", compile=True)
    [file] = (tmp_path / "runs" / "cache").glob("compile-*.bin")
    assert file.stat().st_size > 0
    torch._dynamo.reset()
    counters.clear()
    with fresh():
        train_gan(cfg, data, tmp_path / "runs", device="cuda", compile=True)
    assert counters["inductor"]["fxgraph_cache_hit"] > 0 and counters["inductor"]["fxgraph_cache_miss"] == 0


def test_synthesize_on_the_gpu_writes_the_generators_translations(tmp_path, data):
    """The PNGs come through pinned memory without blocking while the next batch runs: each must be
    complete and equal the generator's translation of its source."""
    cfg = tiny_config(tmp_path, "train.steps=2", "synth.batch_size=4")
    run = train_gan(cfg, data, tmp_path / "runs", device="cuda").run_dir
    dest = synthesize(6, data, tmp_path / "runs", checkpoint=run, dest=tmp_path / "syn", device="cuda")
    with open(dest / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len({r["source_image"] for r in rows}) == 6  # fewer than the sources: none repeated, none augmented
    ds = load_dataset(data, cfg.data, quiet=True)
    position = {str(ds.root / p): i for i, p in enumerate(ds.paths)}
    generator, _, _ = load_generator_ab(run / "checkpoint.pt", torch.device("cuda"))
    got = torch.stack([torch.from_numpy(np.array(Image.open(dest / r["path"]))) for r in rows]).unsqueeze(1)
    sources = ds.images[[position[r["source_image"]] for r in rows]].float().cuda() / 255
    for start in (0, 4):  # the batches synthesize ran
        translated = translate(generator, sources[start:start + 4], cfg.train.bf16, cfg.train.channels_last)
        expected = (translated * 255 + 0.5).to(torch.uint8).cpu()
        assert torch.equal(got[start:start + 4], expected)
