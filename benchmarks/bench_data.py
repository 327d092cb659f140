"""Data-stage speed: building the uint8 image cache, reusing it, and augmented batches per second.

    python benchmarks/bench_data.py --data /work/shared/data/cxr3 --size 256 --batch-size 64 --device all

Measures, on the images under ``--data`` (a class-folder tree or a folder holding manifest.csv):

1. cache build: ``augment.data.load_dataset`` into a fresh temporary cache folder (decode every image
   to ``size x size`` uint8). The JPEGs may already sit in the OS page cache, so this is decode time,
   not cold-disk time.
2. cache reuse: a second ``load_dataset`` of the same data (finds the cache and memory-maps it), and
   the upload of the training split into :class:`augment.gpu.DeviceImages`.
3. augmented batches/s: the training path of the classifier and the GAN, on the device:
   ``epoch_batches`` → ``DeviceImages.get`` (gather + uint8 → float) → ``build_augment`` (kornia:
   random resized crop, affine, brightness, contrast, gamma), for each output size in ``--out-sizes``
   (224: classifier input; 256: GAN input), on the CPU and on CUDA when one is visible.

Writes nothing into the repository: the cache lives in a temporary folder that is removed at the end.
Prints a table and one JSON line with date, hardware, torch version and commit.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from augment.data import DataConfig, load_dataset  # noqa: E402
from augment.gpu import AugmentConfig, DeviceImages, build_augment, epoch_batches  # noqa: E402
from augment.runtime import git_commit  # noqa: E402
from common import cpu_name  # noqa: E402


def hardware() -> dict:
    return {"cpu": cpu_name(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_avg_1min": round(os.getloadavg()[0], 2),  # others' work on a shared machine skews CPU figures
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def augmented_rate(images: DeviceImages, out_size: int, batch_size: int, batches: int, warmup: int) -> float:
    """Batches/s of gather + augment, the way both training loops draw them (no host sync inside)."""
    device = images.device
    augment = build_augment(AugmentConfig(), out_size).to(device)
    g = torch.Generator().manual_seed(0)
    order: list[torch.Tensor] = []
    while len(order) < warmup + batches:
        order += epoch_batches(len(images), batch_size, g)
    for idx in order[:warmup]:
        augment(images.get(idx)[0])
    sync(device)
    start = time.perf_counter()
    for idx in order[warmup:warmup + batches]:
        x = augment(images.get(idx)[0])
    sync(device)
    assert x.shape[-2:] == (out_size, out_size)
    return batches / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/work/shared/data/cxr3", help="class folders or a folder with manifest.csv")
    ap.add_argument("--size", type=int, default=256, help="cache size (pixels per side)")
    ap.add_argument("--out-sizes", type=int, nargs="+", default=[224, 256], help="augmentation output sizes")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="all", choices=["all", "cpu", "cuda"],
                    help="all: the CPU, and CUDA when visible")
    ap.add_argument("--batches", type=int, default=None, help="timed batches (default 20 on CPU, 200 on CUDA)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per row; the median is shown")
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU is visible")
    devices = [torch.device(d) for d in (["cpu", "cuda"] if a.device == "all" else [a.device])
               if d == "cpu" or torch.cuda.is_available()]

    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": git_commit(),
            "torch": torch.__version__, **hardware(), "data": a.data, "size": a.size, "batch_size": a.batch_size}
    rows: list[tuple[str, str, str]] = []  # (measure, device, figure)
    result = dict(meta)
    with tempfile.TemporaryDirectory(prefix="bench_data_cache_") as cache:
        builds, reuses = [], []
        for r in range(a.repeats):  # each build into its own fresh folder, then one reuse of it
            cfg = DataConfig(size=a.size, cache_dir=os.path.join(cache, str(r)))
            builds.append(timed(lambda: load_dataset(a.data, cfg, quiet=True))[1])
            ds, reuse_s = timed(lambda: load_dataset(a.data, cfg, quiet=True))
            reuses.append(reuse_s)
        build_s, reuse_s = sorted(builds)[len(builds) // 2], sorted(reuses)[len(reuses) // 2]
        n = len(ds)
        result.update(images=n, cache_build_s=round(build_s, 2), cache_build_img_s=round(n / build_s, 1),
                      cache_reuse_s=round(reuse_s, 3), cache_build_s_all=[round(b, 2) for b in builds],
                      cache_reuse_s_all=[round(u, 3) for u in reuses])
        rows += [(f"cache build, {n} images at {a.size}²", "cpu",
                  f"{build_s:.2f} s ({n / build_s:.0f} img/s; median of {len(builds)}, "
                  f"range {min(builds):.2f}–{max(builds):.2f})"),
                 ("cache reuse (second load_dataset)", "cpu",
                  f"{reuse_s:.3f} s (median of {len(reuses)}, range {min(reuses):.3f}–{max(reuses):.3f})")]
        train = ds.indices("train")
        for dev in devices:
            images, upload_s = timed(lambda: DeviceImages(ds.images[train], ds.labels[train], dev))
            sync(dev)
            rows.append((f"DeviceImages upload, {len(train)} train images", dev.type, f"{upload_s:.3f} s"))
            result[f"{dev.type}_upload_s"] = round(upload_s, 3)
            batches = a.batches or (200 if dev.type == "cuda" else 20)
            for out_size in a.out_sizes:
                rates = sorted(augmented_rate(images, out_size, a.batch_size, batches, a.warmup)
                               for _ in range(a.repeats))
                rate = rates[len(rates) // 2]
                spread = f", range {rates[0]:.2f}–{rates[-1]:.2f}" if len(rates) > 1 else ""
                rows.append((f"augmented batches/s, {a.batch_size} x {a.size}² → {out_size}²", dev.type,
                             f"{rate:.2f} batch/s ({rate * a.batch_size:.0f} img/s; median of {len(rates)}{spread})"))
                result[f"{dev.type}_aug{out_size}_batch_s"] = round(rate, 2)
                result[f"{dev.type}_aug{out_size}_batch_s_all"] = [round(r, 2) for r in rates]
            del images

    print(f"\n{meta['date']}  commit {meta['commit'] and meta['commit'][:7]}  torch {meta['torch']}  "
          f"CPU {meta['cpu']} ({meta['cpu_cores']} cores)  GPU {meta['gpu'] or 'none'}  load {meta['load_avg_1min']}")
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'device':<6}  figure")
    for measure, device, figure in rows:
        print(f"{measure:<{width}}  {device:<6}  {figure}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
