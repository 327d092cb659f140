"""CycleGAN speed against the plain eager loop of the usual recipe, on one device, in one process.

    python benchmarks/bench_cyclegan.py --data /work/shared/data/cxr3 --usual /work/shared/bench/usual_recipe.py
    python benchmarks/bench_cyclegan.py --quick --device cpu     # smoke run: 64², a few steps (~4 min on 2 cores)

Ours (the project's own code paths, one channel, paper architecture):
- training step at batch 1 (it/s) and batch 8 (img/s): the body of ``cyclegan/train.py``'s loop,
  i.e. ``DeviceImages.get`` → jitter crop → ``CycleGAN.set_input`` →
  ``CycleGAN.optimize_parameters`` → ``LossMeter.add``, on training-split images of ``--data``;
- generator inference at batch 32 (img/s): ``cyclegan.inference.translate`` with the A→B generator;
- ``synthesize(n)`` end to end after start-up (checkpoint load, cache reuse, generation, PNG writing),
  from a checkpoint written by a 1-step ``train_gan`` run;
- peak GPU memory of each of these.
Baseline (``--usual``, imported from its path, never copied): ``usual_recipe.cyclegan_rate`` at batch 1
and 8 as its ``main`` calls it, and its ``generator()`` timed like its ``main`` (fp32, no_grad, batch 32).
Ours runs first under the project's own settings; then the baseline's global flags (cudnn.benchmark,
TF32) are set, as its ``main`` sets them. ``cyclegan_rate`` is CUDA-only (fixed 256², CUDA syncs), so
on the CPU only the inference baseline runs. Everything is written to a temporary folder; prints a table,
the ratios ours / baseline and one JSON line with date, hardware, torch version and commit.
"""
from __future__ import annotations

import argparse
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

from augment.config import load_config  # noqa: E402
from augment.data import load_dataset  # noqa: E402
from augment.gpu import DeviceImages, resize_and_crop  # noqa: E402
from augment.runtime import LossMeter, git_commit, pick_device, seed_everything  # noqa: E402
from common import cpu_name, load_usual  # noqa: E402
from cyclegan.config import GanConfig  # noqa: E402
from cyclegan.inference import to_model_range, translate  # noqa: E402
from cyclegan.model import LOSS_NAMES, CycleGAN  # noqa: E402
from cyclegan.synthesize import synthesize  # noqa: E402
from cyclegan.train import train_gan  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None


def gan_config(a, batch_size: int, cache_dir: str) -> GanConfig:
    return load_config(GanConfig, None, [
        f"data.size={a.size}", f"data.cache_dir={cache_dir}", f"train.batch_size={batch_size}",
        f"train.bf16={str(a.bf16).lower()}", f"train.channels_last={str(a.channels_last).lower()}",
        "train.tensorboard=false", *a.overrides])


def our_train_rate(cfg: GanConfig, dataset, device: torch.device, steps: int, warmup: int, compile: bool) -> dict:
    """Steps/s of the gan-train loop body after ``warmup`` steps (compilation, cudnn autotuning)."""
    t = cfg.train
    images_a, images_b = (DeviceImages(dataset.images[idx], dataset.labels[idx], device)
                          for idx in (dataset.indices("train", t.domain_a), dataset.indices("train", t.domain_b)))
    seed_everything(0)
    model = CycleGAN(cfg, device, total_steps=10 * (warmup + steps), compile=compile)
    augment = resize_and_crop(cfg.data.size, cfg.augment.load_size(cfg.data.size)).to(device)
    meter = LossMeter(LOSS_NAMES, device)
    g = torch.Generator().manual_seed(0)
    order_a = torch.randint(len(images_a), (warmup + steps, t.batch_size), generator=g).to(device)
    order_b = torch.randint(len(images_b), (warmup + steps, t.batch_size), generator=g).to(device)

    def step(i: int) -> None:  # as in cyclegan/train.py's loop
        model.set_input(to_model_range(augment(images_a.get(order_a[i])[0])),
                        to_model_range(augment(images_b.get(order_b[i])[0])))
        meter.add(model.optimize_parameters(), i + 1)

    start = time.perf_counter()
    for i in range(warmup):
        step(i)
    sync(device)
    warm_s = time.perf_counter() - start
    reset_peak(device)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    sync(device)
    rate = steps / (time.perf_counter() - start)
    losses = meter.read()
    if not all(math.isfinite(v) for v in losses.values()):
        raise RuntimeError(f"losses are not finite: {losses}")
    out = {"it_s": rate, "warmup_s": warm_s, "peak_mib": peak_mib(device)}
    del model
    return out


def our_infer_rate(generator, device: torch.device, batch: int, size: int, iters: int, bf16: bool) -> dict:
    x = torch.rand(batch, 1, size, size, device=device)
    for _ in range(3):
        translate(generator, x, bf16)
    sync(device)
    reset_peak(device)
    start = time.perf_counter()
    for _ in range(iters):
        translate(generator, x, bf16)
    sync(device)
    return {"img_s": iters * batch / (time.perf_counter() - start), "peak_mib": peak_mib(device)}


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
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="smoke run: 64², a few steps, synthesize 32 (CPU-friendly)")
    ap.add_argument("--size", type=int, default=None, help="image side (default 256; 64 with --quick)")
    ap.add_argument("--steps", type=int, nargs=2, default=None, metavar=("BS1", "BS8"),
                    help="timed steps at batch 1 and 8 (default 100 30, as usual_recipe; 3 1 with --quick)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10; 1 with --quick)")
    ap.add_argument("--infer-iters", type=int, default=None, help="timed batches of 32 (default 20; 2 with --quick)")
    ap.add_argument("--synth-n", type=int, default=None, help="images for synthesize (default 1000; 32 with --quick)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the networks, as gan-train --compile")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="train.bf16 (CUDA only)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="train.channels_last (CUDA only)")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="set torch.backends.cudnn.benchmark for ours too (gan-train leaves it off)")
    ap.add_argument("--cache-dir", help="image cache folder to reuse (default: a fresh temporary one)")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="extra GanConfig key=value overrides")
    a = ap.parse_args()
    a.size = a.size or (64 if a.quick else 256)
    steps1, steps8 = a.steps or ((3, 1) if a.quick else (100, 30))
    warmup = a.warmup if a.warmup is not None else (1 if a.quick else 10)
    infer_iters = a.infer_iters or (2 if a.quick else 20)
    synth_n = a.synth_n or (32 if a.quick else 1000)
    dev = pick_device(a.device)
    if a.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    usual = load_usual(a.usual) if a.usual else None

    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": git_commit(),
            "torch": torch.__version__, "cpu": cpu_name(), "cpu_cores": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 2),
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None, "device": dev.type,
            "size": a.size, "quick": a.quick, "compile": a.compile, "bf16": a.bf16 and dev.type == "cuda",
            "channels_last": a.channels_last and dev.type == "cuda", "cudnn_benchmark": a.cudnn_benchmark}
    res: dict = dict(meta)
    with tempfile.TemporaryDirectory(prefix="bench_cyclegan_") as tmp:
        cache = a.cache_dir or os.path.join(tmp, "cache")
        cfg1, cfg8 = gan_config(a, 1, cache), gan_config(a, 8, cache)
        dataset = load_dataset(a.data, cfg1.data, required=(cfg1.train.domain_a, cfg1.train.domain_b), quiet=True)

        r1 = our_train_rate(cfg1, dataset, dev, steps1, warmup, a.compile)
        r8 = our_train_rate(cfg8, dataset, dev, steps8, warmup, a.compile)
        res.update(ours_bs1_it_s=round(r1["it_s"], 3), ours_bs1_warmup_s=round(r1["warmup_s"], 1),
                   ours_bs1_peak_mib=r1["peak_mib"], ours_bs8_img_s=round(8 * r8["it_s"], 3),
                   ours_bs8_warmup_s=round(r8["warmup_s"], 1), ours_bs8_peak_mib=r8["peak_mib"])

        # a 1-step gan-train run gives the checkpoint that inference and synthesize read
        runs = os.path.join(tmp, "runs")
        trained = train_gan(load_config(GanConfig, None, [f"data.size={a.size}", f"data.cache_dir={cache}",
                                                          "train.steps=1", "train.tensorboard=false",
                                                          f"train.bf16={str(a.bf16).lower()}", *a.overrides]),
                            a.data, runs, device=a.device, seed=0)
        run_dir, generator = trained.run_dir, trained.model.generators.ab.eval()
        inf = our_infer_rate(generator, dev, 32, a.size, infer_iters, a.bf16)
        res.update(ours_infer_bs32_img_s=round(inf["img_s"], 1), ours_infer_peak_mib=inf["peak_mib"])
        del trained, generator

        reset_peak(dev)
        start = time.perf_counter()
        synthesize(synth_n, a.data, runs, checkpoint=run_dir, dest=os.path.join(tmp, "synthetic"), device=a.device)
        synth_s = time.perf_counter() - start
        res.update(synth_n=synth_n, ours_synth_s=round(synth_s, 2), ours_synth_peak_mib=peak_mib(dev))

        if usual is not None:  # after ours: its global flags would otherwise change our figures
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            if dev.type == "cuda":
                res["usual_bs1_it_s"] = round(usual.cyclegan_rate(1, 100, "cuda"), 2)
                res["usual_bs8_img_s"] = round(8 * usual.cyclegan_rate(8, 30, "cuda"), 2)
            res["usual_infer_bs32_img_s"] = round(usual_infer_rate(usual, dev, 32, a.size, infer_iters), 1)
            # the baseline is the paper architecture; its training rate is always at 256², its inference at --size
            same_model = not any(o.startswith("model.") for o in a.overrides)
            for ours, base, comparable in (("ours_bs1_it_s", "usual_bs1_it_s", same_model and a.size == 256),
                                           ("ours_bs8_img_s", "usual_bs8_img_s", same_model and a.size == 256),
                                           ("ours_infer_bs32_img_s", "usual_infer_bs32_img_s", same_model)):
                if base in res and comparable:
                    res["ratio_" + ours[5:]] = round(res[ours] / res[base], 2)

    report(res, steps1, steps8, infer_iters)


def report(r: dict, steps1: int, steps8: int, infer_iters: int) -> None:
    where = f"GPU {r['gpu']}" if r["gpu"] else f"CPU {r['cpu']} ({r['cpu_cores']} cores)"
    print(f"\n{r['date']}  commit {r['commit'] and r['commit'][:7]}  torch {r['torch']}  {where}  {r['size']}²  "
          f"compile={r['compile']} bf16={r['bf16']} channels_last={r['channels_last']}")
    mem = lambda k: f"{r[k]} MiB" if r.get(k) is not None else "-"  # noqa: E731
    rows = [("train step, batch 1", f"{r['ours_bs1_it_s']} it/s", r.get("usual_bs1_it_s"), r.get("ratio_bs1_it_s"),
             mem("ours_bs1_peak_mib"), f"{steps1} steps after warm-up {r['ours_bs1_warmup_s']} s"),
            ("train step, batch 8", f"{r['ours_bs8_img_s']} img/s", r.get("usual_bs8_img_s"),
             r.get("ratio_bs8_img_s"), mem("ours_bs8_peak_mib"), f"{steps8} steps after warm-up {r['ours_bs8_warmup_s']} s"),
            ("generator inference, batch 32", f"{r['ours_infer_bs32_img_s']} img/s", r.get("usual_infer_bs32_img_s"),
             r.get("ratio_infer_bs32_img_s"), mem("ours_infer_peak_mib"), f"{infer_iters} batches"),
            (f"synthesize --n {r['synth_n']}", f"{r['ours_synth_s']} s", None, None, mem("ours_synth_peak_mib"),
             "end to end after start-up")]
    print(f"{'measure':<30} {'ours':>14} {'baseline':>10} {'ours/base':>9} {'peak GPU mem':>12}  note")
    for name, ours, base, ratio, peak, note in rows:
        print(f"{name:<30} {ours:>14} {'-' if base is None else base:>10} {'-' if ratio is None else ratio:>9} "
              f"{peak:>12}  {note}")
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
