"""``predict`` on a folder of JPEGs against the bare forward pass on images already in memory.

    python benchmarks/bench_predict.py --data /work/shared/data/cxr3 --n 2000 --device cpu

1. A folder of ``--n`` JPEGs in ``.bench/predict-films`` (git-ignored): links to the JPEGs under
   ``--data``, repeated to reach ``--n``; without ``--data``, phantoms saved as JPEG at 256 x 300
   (cxr3's size). Never copied into the repository.
2. A tiny but real model: ``--backbone`` (resnet18) at ``--input-size`` (112), randomly initialised,
   saved as a run's ``best.pt`` with data size ``--size`` (256), crop.
3. Interleaved, ``--repeats`` times: the bare forward pass (:func:`classifier.inference.predict` on the
   uint8 ``(N, 1, size, size)`` tensor decoded beforehand by the data stage) and
   :func:`classifier.predict.predict_files` on the folder (decode on a thread pool, forward, CSV).
   Reports images/s of each (median) and their ratio (target: predict at least 0.8 of the forward pass).

Prints a table and one JSON line with date, hardware, torch version and commit.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import cpu_name  # noqa: E402
from PIL import Image  # noqa: E402

from augment.data import decode_to_square  # noqa: E402
from augment.phantoms import write_phantoms  # noqa: E402
from classifier.config import ClassifierConfig  # noqa: E402
from classifier.inference import predict  # noqa: E402
from classifier.model import create_model  # noqa: E402
from classifier.predict import predict_files  # noqa: E402
from classifier.train import model_args  # noqa: E402
from foundation.checkpoints import save_checkpoint
from foundation.config import config_to_dict, load_config
from foundation.devices import pick_device
from foundation.runs import git_commit

BENCH = ROOT / ".bench"


def film_folder(data: str | None, n: int) -> Path:
    """``.bench/predict-films`` holding ``n`` JPEGs (links to ``data``'s JPEGs, or phantoms)."""
    folder = BENCH / "predict-films" / (Path(data).name if data else "phantoms") / str(n)
    if folder.is_dir() and len(list(folder.iterdir())) == n:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    if data:
        sources = sorted(p for p in Path(data).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
        for i in range(n):
            link = folder / f"film_{i:05d}.jpg"
            link.unlink(missing_ok=True)
            link.symlink_to(sources[i % len(sources)].resolve())
    else:
        phantoms = write_phantoms(BENCH / "predict-phantoms", n_per_class=(n + 2) // 3, size=300, seed=0)
        pngs = sorted(phantoms.rglob("*.png"))[:n]
        for i, png in enumerate(pngs):
            Image.open(png).resize((256, 300)).save(folder / f"film_{i:05d}.jpg", quality=90)
    return folder


def make_run(backbone: str, input_size: int, size: int) -> Path:
    """A run folder whose ``best.pt`` holds a randomly initialised ``backbone`` (no validation predictions)."""
    cfg = load_config(ClassifierConfig, None, [f"model.backbone={backbone}", f"model.input_size={input_size}",
                                               f"data.size={size}"])
    run = BENCH / "predict-run" / f"{backbone}-{input_size}-{size}"
    model = create_model(**model_args(cfg, 3))
    save_checkpoint({"model": model.state_dict(), "classes": list(cfg.data.classes), "model_args": model_args(cfg, 3),
                     "input_size": input_size, "config": config_to_dict(cfg)}, run / "best.pt")
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="folder of JPEGs (e.g. /work/shared/data/cxr3); default: phantoms")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--input-size", type=int, default=112)
    ap.add_argument("--size", type=int, default=256, help="the run's data.size")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()

    device = pick_device(a.device)
    folder = film_folder(a.data, a.n)
    run = make_run(a.backbone, a.input_size, a.size)
    files = sorted(folder.iterdir())
    images = torch.from_numpy(np.stack([decode_to_square(p, a.size, "crop") for p in files])).unsqueeze(1)
    from classifier.checkpoint import load_classifier
    model, _ = load_classifier(run / "best.pt", device)
    predict(model, images[:a.batch_size], a.input_size, device, a.batch_size)  # warm-up

    load = round(os.getloadavg()[0], 2)
    forward, full = [], []
    for _ in range(a.repeats):
        start = time.perf_counter()
        predict(model, images, a.input_size, device, a.batch_size)
        if device.type == "cuda":
            torch.cuda.synchronize()
        forward.append(len(files) / (time.perf_counter() - start))
        start = time.perf_counter()
        result = predict_files([folder], run, dest=BENCH / "predict-out", overwrite=True, device=a.device,
                               batch_size=a.batch_size, quiet=True)
        full.append(len(files) / (time.perf_counter() - start))
        assert result["images"] == len(files), result
    f, p = statistics.median(forward), statistics.median(full)
    print(f"| bare forward (images in memory) | {f:.1f} img/s | runs {', '.join(f'{x:.1f}' for x in forward)} |")
    print(f"| predict on the folder           | {p:.1f} img/s | runs {', '.join(f'{x:.1f}' for x in full)} |")
    print(f"ratio predict / forward: {p / f:.2f}")
    print(json.dumps({
        "date": datetime.date.today().isoformat(), "cpu": cpu_name(), "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "load_avg_1min": load,
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None, "torch": torch.__version__,
        "commit": git_commit(), "images": len(files), "data": a.data or "phantoms 256x300 JPEG",
        "backbone": a.backbone, "input_size": a.input_size, "size": a.size, "batch_size": a.batch_size,
        "forward_img_s": forward, "predict_img_s": full, "ratio": p / f}))


if __name__ == "__main__":
    main()
