"""CycleGAN speed against the plain eager loop of the usual recipe, on one device, in one process.

    python benchmarks/bench_cyclegan.py --data DATA --usual USUAL --out .bench/cyclegan   # GPU: ~5 minutes
    python benchmarks/bench_cyclegan.py --tiny --device cpu --out /tmp/bench-cyclegan     # smoke run: 32², seconds
    python benchmarks/bench_cyclegan.py --cpu-scale --device cpu --usual USUAL             # CPU: ~3 minutes on 2 cores

Ours (the project's own code paths, one channel, paper architecture unless ``--set model.*``):
- training step at each ``--batches`` size (default 1, 8 and 32), for each memory layout (``--layouts``: NCHW,
  channels_last), upsampling (``--upsample``: transposed convolution and its sub-pixel form by default, or the
  resize-convolution) and mode (``--modes``: eager, CUDA graph): :class:`cyclegan.step.TrainStep`, the step
  ``gan-train`` runs (the epoch's batch of positions → gather on the device → jitter → both updates, pools, step
  count and lr), plus ``LossMeter.add`` as in its loop; it/s and
  img/s after warm-up steps (whose time, capture and compiling included, is printed too);
- generator inference at ``--infer-batch`` (default 32) for each layout and upsampling: the generator as
  ``synthesize`` loads it (``load_generator_ab``: weights only, its layout) and ``translate``, as it calls it;
- ``synthesize(n)`` end to end after start-up (checkpoint, cache reuse, generation, PNG writing) from a
  checkpoint of a 1-step ``train_gan`` run with that layout and upsampling;
- peak GPU memory (reserved) of each;
- the convolution work each rate stands for, in TFLOP/s: the paper network's FLOPs per image (one eager training step
  or generator pass at batch 1, counted by ``torch.utils.flop_counter``; the sub-pixel form, which multiplies more
  zeros for the same numbers, is credited with the same, and so is the resize form, although it does about 15 %
  more per generator pass) times the rate. It says what a target asks of the device and how far from its peak a
  row runs.
Baseline (``--usual``, imported from its path, never copied): ``usual_recipe.cyclegan_rate`` at each batch size
(100 steps at batch 1 and 30 at batch 8 as its ``main`` calls it) and its ``generator()`` timed as its ``main``
does (fp32, no_grad). Both sides run under the same global flags, set once before anything runs and stated in
every row: ``cudnn.benchmark`` (``--cudnn-benchmark``, default on, as the usual recipe sets it; ours gets it
through ``train.cudnn_benchmark``) and TF32 (``--tf32``, default on, as the usual recipe). ``cyclegan_rate`` is
CUDA-only (fixed 256², CUDA syncs); on the CPU only the inference baseline runs, and CUDA graphs and
channels_last (CUDA-only in the project) are skipped.

``--profile``: ``torch.profiler`` over a few eager steps at each batch size (first layout and upsampling) and
over the inference: a Chrome trace and a top-20 table of each under ``--out``. Everything measured goes to
``--out/results.json`` and, as a table, to the terminal; a ratio ours / baseline is printed only when both
sides run the same network at the same size.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import count_flops, cpu_name, gemm_gflop_s, load_usual, peak_mib, reset_peak, sync, tflop_s  # noqa: E402

from augment.batches import DeviceImages
from augment.data import load_dataset  # noqa: E402
from cyclegan.checkpoint import CHECKPOINT_NAME, load_generator_ab  # noqa: E402
from cyclegan.compile_cache import compile_cache_path, load_compiled, save_compiled  # noqa: E402
from cyclegan.config import GanConfig  # noqa: E402
from cyclegan.inference import translate  # noqa: E402
from cyclegan.model import LOSS_NAMES, CycleGAN  # noqa: E402
from cyclegan.step import TrainStep  # noqa: E402
from cyclegan.synthesize import synthesize  # noqa: E402
from cyclegan.train import train_gan  # noqa: E402
from foundation.config import load_config
from foundation.devices import cpu_bf16_native, pick_device, seed_everything
from foundation.meter import LossMeter
from foundation.runs import git_commit

TINY_MODEL = ["model.ngf=8", "model.ndf=8", "model.n_blocks=1", "model.n_layers_d=2"]
CPU_SCALE = {"size": 128, "ngf": 32, "ndf": 32, "blocks": 6}  # the real-data suite's CPU scale, and usual_recipe's
CPU_MODEL = [f"model.ngf={CPU_SCALE['ngf']}", f"model.ndf={CPU_SCALE['ndf']}", f"model.n_blocks={CPU_SCALE['blocks']}"]


def gan_config(a, cache_dir: str, batch_size: int, layout: str, upsample: str, graph: bool, *extra: str) -> GanConfig:
    flag = lambda v: str(v).lower()  # noqa: E731
    return load_config(GanConfig, None, [
        f"data.size={a.size}", f"data.cache_dir={cache_dir}", f"train.batch_size={batch_size}",
        f"train.bf16={flag(a.bf16)}", f"train.cpu_bf16={flag(a.bf16)}",
        f"train.channels_last={flag(layout == 'channels_last')}",
        f"model.upsample={upsample}", f"train.cuda_graph={flag(graph)}",
        f"train.cudnn_benchmark={flag(a.cudnn_benchmark)}", "train.tensorboard=false",
        *(TINY_MODEL if a.tiny else CPU_MODEL if a.cpu_scale else []), *a.overrides, *extra])


def steps_for(batch: int, tiny: bool, cpu_scale: bool = False) -> int:
    """Timed steps: 100 at batch 1 and 30 at batch 8 (as the usual recipe's ``main``), else 240 / batch, at least 10;
    at the CPU scale 30 at batch 1 and 10 above (as its ``--cpu-cyclegan``)."""
    if tiny:
        return 2
    if cpu_scale:
        return 30 if batch == 1 else 10
    return 100 if batch == 1 else max(10, 240 // batch)


def train_rate(cfg: GanConfig, images: tuple[DeviceImages, DeviceImages], device: torch.device, steps: int,
               warmup: int, compile: bool, cache_root: str, profile_to: Path | None = None) -> dict:
    """Steps/s of ``TrainStep`` plus the loop's ``LossMeter.add``, after ``warmup`` steps (cuDNN autotuning,
    the CUDA graph's warm-up and capture, compiling). With ``profile_to``, profiles the timed steps instead."""
    b = cfg.train.batch_size
    cache = compile_cache_path(cache_root, cfg, device) if compile else None
    if cache is not None:
        torch._dynamo.reset()  # each row compiles afresh, as gan-train does, rather than past the recompile limit
        load_compiled(cache)
    seed_everything(0)
    model = CycleGAN(cfg, device, total_steps=10 * (warmup + steps), compile=compile)
    train_step = TrainStep(model)
    meter = LossMeter(LOSS_NAMES, device)
    g = torch.Generator().manual_seed(0)
    batches = [domain.batches(torch.randint(len(domain), (warmup + steps, b), generator=g)) for domain in images]

    def run(i: int) -> None:  # as cyclegan/train.py's loop
        meter.add(train_step(batches[0][i][0], batches[1][i][0]), i + 1)

    start = time.perf_counter()
    for i in range(warmup):
        run(i)
    sync(device)
    warm_s = time.perf_counter() - start
    if cache is not None:
        save_compiled(cache)
    reset_peak(device)
    with profiled(device, profile_to):
        start = time.perf_counter()
        for i in range(warmup, warmup + steps):
            run(i)
        sync(device)
        rate = steps / (time.perf_counter() - start)
    losses = meter.read()
    if not all(math.isfinite(v) for v in losses.values()):
        raise RuntimeError(f"losses are not finite: {losses}")
    return {"it_s": round(rate, 3), "img_s": round(rate * b, 2), "warmup_s": round(warm_s, 2),
            "graph_replayed": train_step.graph is not None, "peak_mib": peak_mib(device)}


def flops_per_image(cfg: GanConfig, images: tuple[DeviceImages, DeviceImages], device: torch.device) -> tuple[int, int]:
    """FLOPs of one training step (both updates: the generators' cycles and identities, the discriminators) and
    of one generator pass, per image, of ``cfg``'s networks; ``cfg`` at batch 1 without a CUDA graph."""
    model = CycleGAN(cfg, device, total_steps=10)
    first = torch.zeros(1, 1, dtype=torch.int64)
    real_a, real_b = (domain.batches(first)[0][0] for domain in images)
    generator = count_flops(lambda: translate(model.generators.ab, real_a, cfg.train.bf16, cfg.train.channels_last))
    return count_flops(lambda: TrainStep(model)(real_a, real_b)), generator


def infer_rate(checkpoint: Path, device: torch.device, batch: int, iters: int, profile_to: Path | None = None) -> dict:
    """img/s of ``translate`` with the generator as ``synthesize`` loads it, after 3 warm-up calls."""
    generator, cfg, _ = load_generator_ab(checkpoint, device)
    t = cfg.train
    x = torch.rand(batch, 1, cfg.data.size, cfg.data.size, device=device)
    for _ in range(3):
        translate(generator, x, t.bf16, t.channels_last)
    sync(device)
    reset_peak(device)
    with profiled(device, profile_to):
        start = time.perf_counter()
        for _ in range(iters):
            translate(generator, x, t.bf16, t.channels_last)
        sync(device)
        rate = iters * batch / (time.perf_counter() - start)
    return {"img_s": round(rate, 1), "peak_mib": peak_mib(device)}


@contextlib.contextmanager
def profiled(device: torch.device, path: Path | None):
    """``torch.profiler`` around the block when ``path`` is given: ``<path>.json`` (a Chrome trace) and
    ``<path>-top20.txt`` (the 20 operators with the most self time on the device, else on the CPU)."""
    if path is None:
        yield
        return
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        yield
    prof.export_chrome_trace(f"{path}.json")
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    Path(f"{path}-top20.txt").write_text(prof.key_averages().table(sort_by=key, row_limit=20) + "\n")


def usual_infer_rate(usual, device: torch.device, batch: int, size: int, iters: int) -> float:
    """``usual_recipe.main``'s generator measure (fp32, no_grad, 3 warm-up calls), on ``device``."""
    g = usual.generator().to(device).eval()
    x = torch.rand(batch, 1, size, size, device=device)
    with torch.no_grad():
        for _ in range(3):
            g(x)
        sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            g(x)
        sync(device)
    return iters * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/work/shared/data/cxr3", help="class folders or a folder with manifest.csv")
    ap.add_argument("--usual", help="path of usual_recipe.py (imported, never copied); omit to measure ours only")
    ap.add_argument("--out", help="folder for results.json and profiles (default .bench/cyclegan-<time>)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--tiny", action="store_true",
                    help="smoke run: 32², ngf/ndf 8, 1 block, batches 1 and 2, 2 steps, synthesize 8 (seconds on a CPU)")
    ap.add_argument("--size", type=int, help="image side (default 256; 32 with --tiny)")
    ap.add_argument("--batches", type=int, nargs="+", help="training batch sizes (default 1 8 32; 1 2 with --tiny)")
    ap.add_argument("--layouts", nargs="+", choices=["nchw", "channels_last"], default=["nchw", "channels_last"],
                    help="memory layouts (train.channels_last; CUDA only, NCHW alone on the CPU)")
    ap.add_argument("--upsample", nargs="+", choices=["transposed", "subpixel", "resize"],
                    default=["transposed", "subpixel"], help="the generator's upsampling (model.upsample)")
    ap.add_argument("--modes", nargs="+", choices=["eager", "graph"], default=["eager", "graph"],
                    help="train.cuda_graph off / on (graph on CUDA only)")
    ap.add_argument("--warmup", type=int, help="untimed steps before each training row (default 6; 1 with --tiny; "
                                               f"at least {TrainStep.WARMUP + 1} with graphs, so capture is untimed)")
    ap.add_argument("--infer-batch", type=int, help="inference batch (default 32; 4 with --tiny)")
    ap.add_argument("--infer-iters", type=int, help="timed inference batches (default 20; 1 with --tiny)")
    ap.add_argument("--synth-n", type=int, help="images for synthesize (default 1000; 8 with --tiny)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the networks, as gan-train --compile")
    ap.add_argument("--compile-cache", default="runs", help="compiled code goes to <this>/cache/, as gan-train's")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                    help="train.bf16 and train.cpu_bf16 (on a CPU only where it computes bf16 natively)")
    ap.add_argument("--cpu-scale", action="store_true",
                    help="the real-data suite's CPU scale (128², ngf = ndf = 32, 6 blocks, batches 1 and 4, 2 warm-up "
                         "steps), training rows only; with --usual, its eager loop at the same scale after each of ours")
    ap.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True,
                    help="torch.backends.cudnn.benchmark for both sides")
    ap.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                    help="TF32 matmuls and convolutions for both sides")
    ap.add_argument("--profile", action="store_true", help="profile eager steps and inference into --out")
    ap.add_argument("--profile-steps", type=int, default=5, help="steps (batches) profiled per row")
    ap.add_argument("--cache-dir", help="image cache folder to reuse (default: a fresh temporary one)")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="extra GanConfig key=value overrides")
    a = ap.parse_args()
    a.size = a.size or (32 if a.tiny else CPU_SCALE["size"] if a.cpu_scale else 256)
    batches = a.batches or ([1, 2] if a.tiny else [1, 4] if a.cpu_scale else [1, 8, 32])
    warmup = a.warmup if a.warmup is not None else (1 if a.tiny else 2 if a.cpu_scale else 6)
    infer_batch = a.infer_batch or (4 if a.tiny else 32)
    infer_iters = a.infer_iters or (1 if a.tiny else 20)
    synth_n = a.synth_n or (8 if a.tiny else 1000)
    dev = pick_device(a.device)
    layouts = a.layouts if dev.type == "cuda" else ["nchw"]
    modes = a.modes if dev.type == "cuda" else ["eager"]
    out = Path(a.out or f".bench/cyclegan-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = a.cudnn_benchmark  # both sides, before anything runs
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = a.tf32
    usual = load_usual(a.usual) if a.usual else None

    bf16 = a.bf16 and (dev.type == "cuda" or cpu_bf16_native())
    flags = {"cudnn_benchmark": a.cudnn_benchmark, "tf32": a.tf32, "bf16": bf16,
             "compile": a.compile, "size": a.size}
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": git_commit(),
            "torch": torch.__version__, "cpu": cpu_name(), "cpu_cores": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 2),
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None, "device": dev.type,
            "threads": torch.get_num_threads(), "tiny": a.tiny, "cpu_scale": a.cpu_scale, **flags}
    if dev.type == "cpu":  # the attainable peak each row's FLOP rate is a share of
        meta["cpu_flags"] = cpu_flags()
        meta["gemm_gflop_s"] = round(gemm_gflop_s(torch.bfloat16 if bf16 else torch.float32), 1)
        meta["gemm_gflop_s_fp32"] = round(gemm_gflop_s(torch.float32), 1)
    rows: list[dict] = []
    same_model = not a.tiny and not any(o.startswith("model.") for o in a.overrides)

    def add(row: dict) -> None:
        rows.append({**row, **flags})
        print(json.dumps(rows[-1]), flush=True)

    with tempfile.TemporaryDirectory(prefix="bench_cyclegan_") as tmp:
        cache = a.cache_dir or os.path.join(tmp, "cache")
        first = gan_config(a, cache, 1, layouts[0], a.upsample[0], False)
        dataset = load_dataset(a.data, first.data, required=(first.train.domain_a, first.train.domain_b), quiet=True)
        images = tuple(DeviceImages(dataset.images[idx], dataset.labels[idx], dev)
                       for idx in (dataset.indices("train", first.train.domain_a),
                                   dataset.indices("train", first.train.domain_b)))

        paper = gan_config(a, cache, 1, layouts[0], "transposed", False)  # every row is credited with its FLOPs
        step_flops, pass_flops = flops_per_image(paper, images, dev)
        meta.update(gflop_per_train_img=round(step_flops / 1e9, 3), gflop_per_generator_pass=round(pass_flops / 1e9, 3))
        for b in batches:
            for layout in layouts:
                for upsample in a.upsample:
                    for mode in modes:
                        cfg = gan_config(a, cache, b, layout, upsample, mode == "graph")
                        w = max(warmup, TrainStep.WARMUP + 1) if mode == "graph" else warmup
                        row = {"measure": "train", "batch": b, "layout": layout, "upsample": upsample, "mode": mode,
                               "steps": steps_for(b, a.tiny, a.cpu_scale), "warmup_steps": w}
                        try:  # one failed row (a capture error, out of memory) must not lose the others
                            r = train_rate(cfg, images, dev, row["steps"], w, a.compile, a.compile_cache)
                            add({**row, **r, "tflop_s": tflop_s(r["img_s"], step_flops),
                                 **peak_share(meta, r["img_s"] * step_flops)})
                        except RuntimeError as e:  # torch.OutOfMemoryError is one
                            reset_peak(dev)
                            add({**row, "error": (str(e).splitlines() or [type(e).__name__])[0][:300]})
                if usual is not None and a.cpu_scale:  # right after ours, so both see the same machine
                    steps = steps_for(b, False, True)
                    rate = usual.cyclegan_rate(b, steps, "cpu", **CPU_SCALE, warmup=2)
                    add({"measure": "usual_train", "batch": b, "steps": steps, "it_s": round(rate, 3),
                         "img_s": round(rate * b, 2), **peak_share(meta, rate * b * step_flops, fp32=True)})
            if a.profile:
                cfg = gan_config(a, cache, b, layouts[0], a.upsample[0], False)
                train_rate(cfg, images, dev, a.profile_steps, warmup, a.compile, a.compile_cache,
                           profile_to=out / f"profile-train-bs{b}")

        for layout in layouts if not a.cpu_scale else []:
            for upsample in a.upsample:
                # a 1-step gan-train run gives the checkpoint that inference and synthesize read
                runs = os.path.join(tmp, f"runs-{layout}-{upsample}")
                cfg = gan_config(a, cache, 1, layout, upsample, False, "train.steps=1")
                run_dir = train_gan(cfg, a.data, runs, device=a.device, seed=0).run_dir
                r = infer_rate(run_dir / CHECKPOINT_NAME, dev, infer_batch, infer_iters)
                add({"measure": "infer", "batch": infer_batch, "layout": layout, "upsample": upsample,
                     "iters": infer_iters, **r, "tflop_s": tflop_s(r["img_s"], pass_flops)})
                if a.profile and (layout, upsample) == (layouts[0], a.upsample[0]):
                    infer_rate(run_dir / CHECKPOINT_NAME, dev, infer_batch, a.profile_steps,
                               profile_to=out / f"profile-infer-bs{infer_batch}")
                reset_peak(dev)
                start = time.perf_counter()
                synthesize(synth_n, a.data, runs, checkpoint=run_dir, dest=os.path.join(tmp, f"syn-{layout}-{upsample}"),
                           device=a.device)
                add({"measure": "synthesize", "n": synth_n, "layout": layout, "upsample": upsample,
                     "s": round(time.perf_counter() - start, 2), "peak_mib": peak_mib(dev)})

    if usual is not None and not a.cpu_scale:
        if dev.type == "cuda":
            for b in batches:
                steps = steps_for(b, False)
                rate = usual.cyclegan_rate(b, steps, "cuda")
                add({"measure": "usual_train", "batch": b, "steps": steps, "it_s": round(rate, 3),
                     "img_s": round(rate * b, 2)})
        add({"measure": "usual_infer", "batch": infer_batch,
             "img_s": round(usual_infer_rate(usual, dev, infer_batch, a.size, infer_iters), 1)})
        base = {(r["measure"][6:], r["batch"]): r["img_s"] for r in rows if r["measure"].startswith("usual_")}
        for r in rows:  # the usual recipe trains at 256² only, and runs the paper architecture
            comparable = same_model and (r["measure"] == "infer" or a.size == 256)
            if (r["measure"], r.get("batch")) in base and comparable and "error" not in r:
                r["ratio"] = round(r["img_s"] / base[r["measure"], r["batch"]], 2)

    if a.cpu_scale:  # ours against the eager loop at the same batch: the same network at the same size
        base = {r["batch"]: r["img_s"] for r in rows if r["measure"] == "usual_train"}
        for r in rows:
            if r["measure"] == "train" and r["batch"] in base and "error" not in r and same_model:
                r["ratio"] = round(r["img_s"] / base[r["batch"]], 2)
    (out / "results.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    report(meta, rows)
    print(f"wrote {out / 'results.json'}" + (f" and profiles to {out}/" if a.profile else ""))


def peak_share(meta: dict, flop_s: float, fp32: bool = False) -> dict:
    """On a CPU, ``flop_s`` as a share of the measured matrix-multiply rate in the row's precision."""
    peak = meta.get("gemm_gflop_s_fp32" if fp32 else "gemm_gflop_s")
    return {"gflop_s": round(flop_s / 1e9, 1), "share_of_gemm_peak": round(flop_s / 1e9 / peak, 3)} if peak else {}


def cpu_flags() -> str:
    """The CPU features that decide its speed here: AVX2, AVX-512 (F, BF16, VNNI) and AMX, as /proc/cpuinfo lists them."""
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return " ".join(f for f in line.split(":", 1)[1].split() if f in wanted) or "no AVX2/AVX-512/AMX"


def _share(row: dict) -> str:
    return f"; {row['gflop_s']} GFLOP/s, {row['share_of_gemm_peak']:.0%} of the GEMM peak" if "gflop_s" in row else ""


def report(meta: dict, rows: list[dict]) -> None:
    where = f"GPU {meta['gpu']}" if meta["gpu"] else f"CPU {meta['cpu']} ({meta['cpu_cores']} cores)"
    print(f"\n{meta['date']}  commit {meta['commit'] and meta['commit'][:7]}  torch {meta['torch']}  {where}  "
          f"{meta['size']}²  compile={meta['compile']} bf16={meta['bf16']} cudnn.benchmark={meta['cudnn_benchmark']} "
          f"tf32={meta['tf32']}")
    if meta.get("gemm_gflop_s"):
        print(f"CPU flags: {meta['cpu_flags']}; {meta['threads']} threads; matrix multiply reaches {meta['gemm_gflop_s']} "
              f"GFLOP/s in the rows' precision, {meta['gemm_gflop_s_fp32']} in float32; load average "
              f"{meta['load_avg_1min']}")
    print(f"{'CPU-scale' if meta.get('cpu_scale') else 'paper'} network: {meta['gflop_per_train_img']} GFLOP per image of a training step, "
          f"{meta['gflop_per_generator_pass']} per generator pass (convolutions, 2 per multiply-add)")
    print(f"{'measure':<12} {'batch':>5} {'layout':<13} {'upsample':<10} {'mode':<6} {'ours':>16} {'ratio':>6} "
          f"{'peak MiB':>8}  note (peak: reserved GPU memory)")
    for r in rows:
        if "error" in r:
            ours, note = "failed", r["error"]
        elif r["measure"] == "train":
            ours, note = f"{r['img_s']} img/s", (f"{r['it_s']} it/s, {r['tflop_s']} TFLOP/s; {r['steps']} steps after "
                                                  f"{r['warmup_s']} s warm-up" + _share(r))
        elif r["measure"] == "infer":
            ours, note = f"{r['img_s']} img/s", f"{r['tflop_s']} TFLOP/s; {r['iters']} batches"
        elif r["measure"] == "synthesize":
            ours, note = f"{r['s']} s", f"--n {r['n']}, after start-up"
        else:
            ours, note = f"{r['img_s']} img/s", "baseline" + (f", {r['it_s']} it/s" if "it_s" in r else "") + _share(r)
        print(f"{r['measure']:<12} {r.get('batch', '-'):>5} {r.get('layout', '-'):<13} {r.get('upsample', '-'):<10} "
              f"{r.get('mode', '-'):<6} {ours:>16} {r.get('ratio', '-'):>6} {r.get('peak_mib') or '-':>8}  {note}")


if __name__ == "__main__":
    main()
