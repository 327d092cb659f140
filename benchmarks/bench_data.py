"""Data-stage speed: building the uint8 image cache, reusing it, and augmented batches per second.

    python benchmarks/bench_data.py --data /work/shared/data/cxr3 --size 256 --batch-size 64 --device all
    python benchmarks/bench_data.py --data PHANTOMS --size 32 --out-sizes 24 --batch-size 8 --batches 3 --repeats 1

Measures, on the images under ``--data`` (a class-folder tree or a folder holding manifest.csv):

1. cache build: ``augment.data.load_dataset`` into a fresh temporary cache folder (decode every image
   to ``size x size`` uint8). The JPEGs may already sit in the OS page cache, so this is decode time,
   not cold-disk time.
2. cache reuse: a second ``load_dataset`` of the same data (finds the cache and memory-maps it), and
   the upload of the training split into :class:`augment.batches.DeviceImages`.
3. batches/s, the way both training loops draw them (``DeviceImages.batches`` / ``StreamedImages.batches``
   of a seeded epoch order), on the CPU and on CUDA when one is visible:
   - fetching alone (gather + uint8 → float), from the set held on the device and streamed from host
     memory (on CUDA through pinned buffers on a side stream, one batch ahead);
   - fetching and augmenting for each output size in ``--out-sizes`` (224: classifier input; 256: GAN
     input): the one-warp ``build_augment`` (resident and streamed) against the kornia chain it replaced
     (random resized crop → affine → brightness → contrast → gamma; rows left out without kornia);
   - the GAN's jitter at ``--size``: ``resize_and_crop`` (load 286/256 of the size) against the kornia
     resize + random crop it replaced.

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
from common import cpu_name, sync  # noqa: E402

from augment.batches import DeviceImages, StreamedImages, epoch_batches
from augment.data import DataConfig, load_dataset  # noqa: E402
from augment.transforms import AugmentConfig, Resize, build_augment, resize_and_crop
from foundation.runs import git_commit


def hardware() -> dict:
    return {"cpu": cpu_name(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_avg_1min": round(os.getloadavg()[0], 2),  # others' work on a shared machine skews CPU figures
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def kornia_augment(cfg: AugmentConfig, size: int):
    """The kornia chain ``build_augment`` ran before its one-warp augmentation (None without kornia)."""
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    return K.AugmentationSequential(
        K.RandomResizedCrop((size, size), scale=cfg.crop_scale, ratio=cfg.crop_ratio),
        K.RandomAffine(cfg.degrees, translate=(cfg.translate, cfg.translate), p=1.0),
        K.RandomBrightness((1 - cfg.brightness, 1 + cfg.brightness)),
        K.RandomContrast((1 - cfg.contrast, 1 + cfg.contrast)), K.RandomGamma(cfg.gamma))


def kornia_jitter(size: int, load_size: int):
    """The kornia resize + random crop ``resize_and_crop`` ran before (None without kornia)."""
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    return torch.nn.Sequential(Resize(load_size), K.RandomCrop((size, size)))


def batch_rate(images, augment, batch_size: int, batches: int, warmup: int) -> float:
    """Batches/s of fetching the batches of a seeded order from ``images`` and, unless ``augment`` is None,
    augmenting them."""
    g = torch.Generator().manual_seed(0)
    order: list[torch.Tensor] = []
    while len(order) < warmup + batches:
        order += epoch_batches(len(images), batch_size, g)
    epoch = images.batches(torch.stack(order[:warmup + batches]))
    step = (lambda i: epoch[i][0]) if augment is None else (lambda i: augment(epoch[i][0]))
    for i in range(warmup):
        step(i)
    sync(images.device)
    start = time.perf_counter()
    for i in range(warmup, warmup + batches):
        x = step(i)
    sync(images.device)
    assert x.shape[0] == batch_size
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
        load_size = round(a.size * 286 / 256)
        for dev in devices:
            resident, upload_s = timed(lambda: DeviceImages(ds.images, ds.labels, dev, train))
            sync(dev)
            streamed = StreamedImages(ds.images, ds.labels, dev, train)
            rows.append((f"DeviceImages upload, {len(train)} train images", dev.type, f"{upload_s:.3f} s"))
            result[f"{dev.type}_upload_s"] = round(upload_s, 3)
            batches = a.batches or (200 if dev.type == "cuda" else 20)
            cases = [("fetch", f"fetch, {a.size}²", None, resident), ("fetch_streamed", f"fetch, {a.size}², streamed",
                                                                     None, streamed)]
            for out_size in a.out_sizes:
                cfg = AugmentConfig()
                cases += [(f"aug{out_size}", f"fetch + augment, {a.size}² → {out_size}²",
                           build_augment(cfg, out_size), resident),
                          (f"aug{out_size}_streamed", f"fetch + augment, {a.size}² → {out_size}², streamed",
                           build_augment(cfg, out_size), streamed),
                          (f"aug{out_size}_kornia", f"fetch + kornia chain, {a.size}² → {out_size}²",
                           kornia_augment(cfg, out_size), resident)]
            cases += [("jitter", f"fetch + GAN jitter, {a.size}² via {load_size}²",
                       resize_and_crop(a.size, load_size), resident),
                      ("jitter_kornia", f"fetch + kornia GAN jitter, {a.size}² via {load_size}²",
                       kornia_jitter(a.size, load_size), resident)]
            for key, measure, augment, images in cases:
                if key.endswith("kornia") and augment is None:
                    continue  # kornia is not installed
                rates = sorted(batch_rate(images, augment, a.batch_size, batches, a.warmup) for _ in range(a.repeats))
                rate = rates[len(rates) // 2]
                spread = f", range {rates[0]:.2f}–{rates[-1]:.2f}" if len(rates) > 1 else ""
                rows.append((f"batches/s of {a.batch_size}: {measure}", dev.type,
                             f"{rate:.2f} batch/s ({rate * a.batch_size:.0f} img/s; median of {len(rates)}{spread})"))
                result[f"{dev.type}_{key}_batch_s"] = round(rate, 2)
                result[f"{dev.type}_{key}_batch_s_all"] = [round(r, 2) for r in rates]
            del resident, streamed

    print(f"\n{meta['date']}  commit {meta['commit'] and meta['commit'][:7]}  torch {meta['torch']}  "
          f"CPU {meta['cpu']} ({meta['cpu_cores']} cores)  GPU {meta['gpu'] or 'none'}  load {meta['load_avg_1min']}")
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'device':<6}  figure")
    for measure, device, figure in rows:
        print(f"{measure:<{width}}  {device:<6}  {figure}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
