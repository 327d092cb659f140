"""The CPU preset against the usual torchvision recipe, at the same wall-clock budget, over seeds.

    python benchmarks/cpu_preset.py --data /work/shared/data/cxr3 --usual /work/shared/bench/usual_accuracy.py \
        --seeds 0 1 2 --candidates usual preset

Every (candidate, seed) is one row: a separate process, timed from start to exit, so both sides pay their
own start-up, data loading and per-epoch validation. ``usual`` runs ``usual_accuracy.py`` at its CPU scale
(ResNet18, 112², 12 epochs, 2 workers) with ``torch.manual_seed`` offset by 1000 × seed (seed 0 is the
script unchanged); ``preset`` runs ``classify-train --config configs/classify-train-cpu.yaml`` and then
``evaluate`` on the validation split (not timed: reporting, not training). A screening candidate is
``NAME:key=value,key=value``: the preset with those overrides. Rows are kept in ``<out>/rows/*.json``, so
a rerun skips finished rows; ``<out>/table.md`` summarises them: mean ± sd over seeds of validation
accuracy, per-class sensitivity, per-source accuracy and wall time, and each candidate's paired
difference from ``usual`` (same seeds) with a 95 % Student-t interval. Run nothing else on the machine.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from augment.ablation import mean_interval  # noqa: E402
from augment.runtime import git_commit  # noqa: E402
from common import cpu_name  # noqa: E402

CLASSES = ("covid", "normal", "pneumonia")
PRESET = ROOT / "configs" / "classify-train-cpu.yaml"
USUAL_ARGS = ["--device", "cpu", "--models", "resnet18", "--size", "112", "--epochs", "12", "--workers", "2"]
SEEDED_USUAL = """import runpy, sys, torch
seed_offset = 1000 * int(sys.argv[1])
manual_seed = torch.manual_seed
torch.manual_seed = lambda s: manual_seed(s + seed_offset)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def timed(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` with its output in ``log``; seconds from start to exit. A failure stops the sweep."""
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if code:
        sys.exit(f"{' '.join(cmd)} failed with status {code}; see {log}")
    return time.perf_counter() - start


def run_usual(usual: str, data: str, seed: int, folder: Path) -> dict:
    log = folder / "usual.log"
    wall = timed([sys.executable, "-c", SEEDED_USUAL, str(seed), usual, "--data", data, *USUAL_ARGS], log)
    r = json.loads([line for line in log.read_text().splitlines() if line.startswith("{")][-1])
    sources = {k[4:]: float(v.split()[0]) for k, v in r.items() if k.startswith("acc_") and k != "acc_ci95"}
    return {"accuracy": r["accuracy"], "accuracy_ci": r["acc_ci95"], "wall_s": wall,
            "sensitivity": {c: r[f"{c}_sens"] for c in CLASSES}, "per_source": sources}


def run_ours(overrides: list[str], data: str, seed: int, folder: Path) -> dict:
    sets = [a for o in overrides for a in ("--set", o)]
    wall = timed([sys.executable, "cli.py", "classify-train", "--data", data, "--config", str(PRESET), "--device", "cpu",
                  "--seed", str(seed), "--out", str(folder), *sets], folder / "train.log")
    run = next((folder / "classifier").iterdir())
    timed([sys.executable, "cli.py", "evaluate", "--data", data, "--config", str(PRESET), "--device", "cpu",
           "--checkpoint", str(run), "--out", str(folder), *sets], folder / "evaluate.log")
    m = json.loads(next(run.glob("eval/**/metrics.json")).read_text())
    return {"accuracy": m["accuracy"], "accuracy_ci": m["accuracy_ci"], "wall_s": wall, "split": m["split"],
            "sensitivity": {c: m["per_class"][c]["sensitivity"] for c in CLASSES},
            "per_source": {s: v["accuracy"] for s, v in m.get("per_source", {}).items()},
            "best_epoch": torch.load(run / "best.pt", weights_only=True)["epoch"]}


def summarize(rows: list[dict]) -> str:
    """Markdown table: mean ± sd per candidate; paired difference from ``usual`` with a 95 % t interval."""
    by = {}
    for r in rows:
        by.setdefault(r["candidate"], {})[r["seed"]] = r
    sources = sorted({s for r in rows for s in r["per_source"]})
    head = ["candidate", "seeds", "accuracy", *[f"sens. {c}" for c in CLASSES], *sources, "wall s",
            "acc. − usual (95 % CI)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ms(values, scale=100.0):
        x = np.array(values, dtype=float) * scale
        return f"{x.mean():.1f} ± {x.std(ddof=1):.1f}" if len(x) > 1 else f"{x.mean():.1f}"
    for name, seeds in by.items():
        rs = [seeds[s] for s in sorted(seeds)]
        diff = ""
        if name != "usual" and "usual" in by:
            paired = [seeds[s]["accuracy"] - by["usual"][s]["accuracy"] for s in sorted(seeds) if s in by["usual"]]
            if paired:
                m, lo, hi = mean_interval(np.array(paired) * 100)
                diff = f"{m:+.1f}" + (f" [{lo:+.1f}, {hi:+.1f}]" if len(paired) > 1 else "") + f" (n={len(paired)})"
        cells = [name, ",".join(map(str, sorted(seeds))), ms([r["accuracy"] for r in rs]),
                 *[ms([r["sensitivity"][c] for r in rs]) for c in CLASSES],
                 *[ms([r["per_source"].get(s, float("nan")) for r in rs]) for s in sources],
                 ms([r["wall_s"] for r in rs], 1.0), diff]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="cxr3 folder (manifest with train/val splits)")
    ap.add_argument("--usual", required=True, help="path to usual_accuracy.py (run from there, never copied)")
    ap.add_argument("--out", default=".bench/cpu_preset")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--candidates", nargs="+", default=["usual", "preset"])
    a = ap.parse_args()
    out = Path(a.out)
    (out / "rows").mkdir(parents=True, exist_ok=True)
    for seed in a.seeds:
        for cand in a.candidates:
            name, _, sets = cand.partition(":")
            path = out / "rows" / f"{name}-seed{seed}.json"
            if path.exists():
                continue
            folder = out / "runs" / f"{name}-seed{seed}"
            if folder.exists():  # an interrupted row starts over
                subprocess.run(["rm", "-rf", str(folder)], check=True)
            folder.mkdir(parents=True)
            load = os.getloadavg()[0]
            row = (run_usual(a.usual, a.data, seed, folder) if name == "usual"
                   else run_ours([s for s in sets.split(",") if s], a.data, seed, folder))
            row.update(candidate=name, overrides=sets, seed=seed, load_at_start=round(load, 2),
                       date=datetime.date.today().isoformat(), cpu=cpu_name(), cores=os.cpu_count(),
                       torch=torch.__version__, python=platform.python_version(), commit=git_commit())
            path.write_text(json.dumps(row, indent=2) + "\n")
            print(f"{name} seed {seed}: accuracy {100 * row['accuracy']:.1f} %, covid sensitivity "
                  f"{100 * row['sensitivity']['covid']:.1f} %, {row['wall_s']:.0f} s", flush=True)
    rows = [json.loads(p.read_text()) for p in sorted((out / "rows").glob("*.json"))]
    table = summarize(rows)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
