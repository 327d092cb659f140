"""Classifier throughput against the usual torchvision recipe, on one GPU, in one run.

    python benchmarks/bench_classifier.py --usual /work/shared/bench/usual_recipe.py --data /work/shared/data/cxr3

Ours: real ``classify-train`` steps (GPU-resident uint8 images, one-warp augmentation, bf16 autocast,
channels_last, fused AdamW) at batch 256 and 64 for resnet50, vgg16 and efficientnet_b0, and the
evaluation of 500 images (prediction + metrics with 1000 bootstrap resamples). The usual recipe
(ImageFolder + DataLoader workers, and its GPU-tensor ceiling) is imported from the path given by
``--usual`` and run on the same machine; the script prints images/s, the ratios ours / usual and the
convolution and matrix work our rate stands for (TFLOP/s: 3 times the FLOPs of one image's forward pass, counted
by ``torch.utils.flop_counter``, times the rate) as JSON lines with date, hardware and commit. No figures are
recorded in this file: run it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import count_flops, load_usual, peak_mib, reset_peak, sync, tflop_s  # noqa: E402

from classifier.config import ClassifierConfig  # noqa: E402
from classifier.inference import predict  # noqa: E402
from classifier.metrics import classification_metrics  # noqa: E402
from classifier.train import Trainer  # noqa: E402
from foundation.config import load_config
from foundation.runs import git_commit

BACKBONES = ("resnet50", "vgg16", "efficientnet_b0")


def our_train_rate(trainer: Trainer, steps: int, warmup: int = 5) -> float:
    """Images/s of ``Trainer.train_step`` (augmentation included) after ``warmup`` steps (peak memory counted
    from the first timed step: :func:`common.peak_mib`)."""
    phase = trainer.phases[-1]
    net = trainer._enter_phase(phase)
    net.train()
    batches = trainer.train_data.batches(trainer._batches(0))
    bs = trainer.cfg.train.batch_size
    for i in range(warmup):
        trainer.train_step(net, batches[i % len(batches)], i)
    sync(trainer.device)
    reset_peak(trainer.device)
    start = time.perf_counter()
    for i in range(steps):
        trainer.train_step(net, batches[i % len(batches)], warmup + i)
    sync(trainer.device)
    return steps * bs / (time.perf_counter() - start)


def flops_per_image(trainer: Trainer) -> int:
    """FLOPs of training on one image: 3 times its forward pass through the trainer's model (the backward pass
    costs about twice the forward). Counted on the forward alone because the counter takes the backward pass of
    a depthwise convolution for a dense one (EfficientNet-B0: 32 GFLOP instead of about 2.3)."""
    x = torch.rand(1, 1, trainer.size, trainer.size, device=trainer.device)
    with torch.no_grad():
        return 3 * count_flops(lambda: trainer.model(x))


def our_eval_rate(trainer: Trainer, n: int = 500) -> float:
    """Images/s of evaluating ``n`` images: prediction and metrics with bootstrap intervals."""
    reps = -(-n // len(trainer.val_images))
    images = trainer.val_images.repeat(reps, 1, 1, 1)[:n]
    labels = torch.from_numpy(trainer.val_labels).repeat(reps)[:n].numpy()
    predict(trainer.model, images, trainer.size, trainer.device, batch_size=128)  # warm-up: the same batch shapes,
    sync(trainer.device)                                                       # so cuDNN's autotuning is not timed
    start = time.perf_counter()
    prob = predict(trainer.model, images, trainer.size, trainer.device, batch_size=128)
    classification_metrics(labels, prob.numpy(), trainer.classes, rounds=1000)
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--usual", help="path of usual_recipe.py (imported, never copied); omit to measure ours only")
    ap.add_argument("--data", required=True, help="image folder with class subfolders (e.g. cxr3)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batches", type=int, nargs="+", default=[256, 64])
    ap.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True,
                    help="cudnn.benchmark for both sides (the usual recipe sets it; ours: train.cudnn_benchmark)")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="extra key=value config overrides")
    a = ap.parse_args()
    torch.backends.cudnn.benchmark = a.cudnn_benchmark  # the usual side; the Trainer sets it from its config
    usual = load_usual(a.usual) if a.usual else None
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": git_commit(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as out:
        for name in a.backbones:
            for bs in a.batches:
                cfg = load_config(ClassifierConfig, None, [f"model.backbone={name}", f"train.batch_size={bs}",
                                                            f"train.cudnn_benchmark={str(a.cudnn_benchmark).lower()}",
                                                            "train.tensorboard=false", *a.overrides])
                row = {**meta, "backbone": name, "batch": bs, "cudnn_benchmark": a.cudnn_benchmark,
                       "bf16": cfg.train.bf16, "channels_last": cfg.train.channels_last, "compile": cfg.train.compile}
                try:
                    trainer = Trainer(cfg, a.data, out, device=a.device, quiet=True)
                    flops = flops_per_image(trainer)
                    row["ours_train_img_s"] = round(our_train_rate(trainer, a.steps), 1)
                    row["gflop_per_img"], row["ours_tflop_s"] = round(flops / 1e9, 2), tflop_s(row["ours_train_img_s"], flops)
                    row["ours_peak_mib"] = peak_mib(trainer.device)
                    if bs == a.batches[-1]:
                        row["ours_eval500_img_s"] = round(our_eval_rate(trainer), 1)
                    del trainer
                except torch.cuda.OutOfMemoryError:
                    print(json.dumps({**row, "error": "out of GPU memory"}), flush=True)
                    torch.cuda.empty_cache()
                    continue
                if usual is not None:
                    model = usual.classifier_model(name)
                    row["usual_dataloader_img_s"] = round(usual.train_rate(model, usual.loader_batches(a.data, bs, a.workers), a.steps), 1)
                    row["usual_gpu_tensors_img_s"] = round(usual.train_rate(model, usual.gpu_batches(bs), a.steps), 1)
                    row["ratio_vs_dataloader"] = round(row["ours_train_img_s"] / row["usual_dataloader_img_s"], 2)
                    row["ratio_vs_gpu_tensors"] = round(row["ours_train_img_s"] / row["usual_gpu_tensors_img_s"], 2)
                    del model
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
