"""Train the three headline backbones from scratch on a data folder and report their evaluation.

    python benchmarks/recipe_cxr3.py --data /work/shared/data/cxr3 --config configs/classify-train.yaml

For each of efficientnet_b0, resnet50 and vgg16: classify-train with the given config (pretrained
none), then evaluate on the test split (the validation split when the data has none). Prints accuracy
with its 95 % interval, per-class sensitivity and per-source accuracy, and one JSON line per backbone
with date, hardware and commit. Meant for a GPU machine.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from augment.config import load_config  # noqa: E402
from augment.runtime import git_commit  # noqa: E402
from classifier.config import ClassifierConfig  # noqa: E402
from classifier.evaluate import evaluate  # noqa: E402
from classifier.train import train  # noqa: E402

BACKBONES = ("efficientnet_b0", "resnet50", "vgg16")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="folder of class subfolders or a manifest CSV")
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "classify-train.yaml"))
    ap.add_argument("--out", default="runs/recipe_cxr3")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="extra key=value overrides")
    a = ap.parse_args()
    for name in a.backbones:
        cfg = load_config(ClassifierConfig, a.config, [*a.overrides, f"model.backbone={name}", "model.pretrained=none"])
        start = time.perf_counter()
        run = train(cfg, a.data, a.out, device=a.device, seed=a.seed)
        minutes = (time.perf_counter() - start) / 60
        m = evaluate(a.data, run, a.out, cfg.eval, a.device, seed=a.seed)
        lo, hi = m["accuracy_ci"]
        print(f"\n{name}: {m['split']} accuracy {100 * m['accuracy']:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}] "
              f"over {m['n']} images; trained {minutes:.1f} min")
        for c, p in m["per_class"].items():
            s_lo, s_hi = p["sensitivity_ci"]
            print(f"  sensitivity {c:<10} {100 * p['sensitivity']:.1f} % [{100 * s_lo:.1f}, {100 * s_hi:.1f}]")
        for s, v in m.get("per_source", {}).items():
            print(f"  source {s:<20} n={v['n']:<5} accuracy {100 * v['accuracy']:.1f} %")
        print(json.dumps({"backbone": name, "date": datetime.datetime.now().isoformat(timespec="seconds"),
                          "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                          "commit": git_commit(), "run": str(run), "split": m["split"], "accuracy": m["accuracy"],
                          "accuracy_ci": m["accuracy_ci"], "macro_f1": m["macro"]["f1"],
                          "sensitivity": {c: p["sensitivity"] for c, p in m["per_class"].items()},
                          "per_source": m.get("per_source"), "train_minutes": round(minutes, 2)}), flush=True)


if __name__ == "__main__":
    main()
