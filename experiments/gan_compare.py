"""Several CycleGAN runs side by side on real films: every gan-eval diagnostic, the share a real-only classifier
calls covid, and train-on-synthetic-test-on-real (TSTR), in one table.

    python experiments/gan_compare.py --data DATA --classifier REAL_ONLY_RUN --lungs LUNGSEG_RUN --out .suite/compare \\
        --gan plain=RUN --gan lungs=RUN --gan lungs-adult-da=RUN [--preset cpu --backbone resnet18 --split val]

For each GAN: ``gan-eval`` on ``--split`` in the real-only classifier's features with ``--lungs``'s masks; then
``synthesize`` as many translations as there are real covid training films, which replace those films in the
training split (the validation and test films stay real), and ``classify-train`` + ``evaluate`` on that, with the
real-only run's backbone, seed and preset. Each step is skipped when its result exists, so a stopped comparison
goes on. Writes ``<out>/summary.json`` and ``<out>/summary.md``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from ablation.seeds import write_tstr_manifest  # noqa: E402
from augment.balance import Policy, balance  # noqa: E402
from augment.data import DataConfig  # noqa: E402
from augment.runsplit import SPLIT_FILE, read_split  # noqa: E402
from experiments.cxr3_suite import classifier_figures  # noqa: E402
from foundation.files import json_safe, write_text_atomic
from foundation.runs import latest_run

MINORITY = "covid"


def cli(*args) -> None:
    command = [sys.executable, str(ROOT / "cli.py"), *map(str, args)]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def compare_one(name: str, gan: Path, a) -> dict:
    """gan-eval and TSTR of one GAN run; their figures."""
    folder = a.out / name
    step = yaml.safe_load((gan / "config.yaml").read_text())["train"]["steps"]
    report = gan / f"gan-eval-step{step}.json"
    if not report.exists():
        cli("gan-eval", "--data", a.data, "--checkpoint", gan, "--classifier", a.classifier, "--lungs", a.lungs,
            "--split", a.split, "--out", folder)
    ev = json.loads(report.read_text())
    n = sum(r["label"] == MINORITY and r["split"] == "train" for r in read_split(gan / SPLIT_FILE))
    synthetic, manifest = folder / "synthetic", folder / "tstr.csv"
    if not (synthetic / "manifest.csv").exists():
        cli("synthesize", "--data", a.data, "--checkpoint", gan, "--n", n, "--dest", synthetic, "--overwrite",
            "--out", folder)
    if not manifest.exists():  # read as the real-only run read the data: same groups and splits
        data = yaml.safe_load((a.classifier / "config.yaml").read_text())["data"]
        cfg = DataConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
        balance(a.data, synthetic, Policy("count", n), folder / "balanced.csv", cfg, overwrite=True)
        write_tstr_manifest(folder / "balanced.csv", manifest, MINORITY)
    runs = folder / "classifier"
    if not (runs.exists() and any(runs.glob("*/eval/metrics.json"))):
        real = json.loads((a.classifier / "run.json").read_text())
        cli("classify-train", "--data", manifest, "--preset", a.preset, "--backbone", a.backbone,
            "--seed", real["seed"], "--out", folder)
        cli("evaluate", "--data", manifest, "--checkpoint", latest_run(folder, "classifier"), "--out", folder)
    tstr = classifier_figures(next(runs.glob("*/eval/metrics.json")).parent.parent)
    d = ev["diagnostics"]
    pick = lambda entry: entry and {"value": entry.get("value"), "ci": entry.get("ci")}  # noqa: E731
    probes = d["probes"]
    return {"gan": str(gan), "steps": step, "split": ev["split"], "features": d["features"],
            "fd": ev["fd"], "kid": ev["kid"], "ssim": ev["ssim_mean"], "called_covid": ev["share_called_b"],
            "lung_change": pick(d.get("lung_change")),
            "disease_shift": pick(probes["disease_probe"].get("shift")),
            "disease_probe_source": probes["disease_probe"].get("source"),
            "source_shift": pick(probes["source_probe"].get("shift")),
            "disease_minus_source": pick(probes.get("disease_minus_source")),
            "copies_z": d["copies"]["z_u"], "copies_flagged": d["copies"]["flagged_share"],
            "synthetic_vs_real_auc": {"value": d["synthetic_vs_real"].get("auc"),
                                      "ci": d["synthetic_vs_real"].get("ci")},
            "checkerboard": [d["checkerboard"]["translated"]["max"], d["checkerboard"]["real"]["max"]],
            "tstr": {"n_synthetic": n, "accuracy": tstr["accuracy"], "accuracy_ci": tstr["accuracy_ci"],
                     "covid_sensitivity": tstr["sensitivity"][MINORITY],
                     "covid_sensitivity_ci": tstr["sensitivity_ci"][MINORITY], "run": tstr["run"]}}


def markdown(rows: dict) -> str:
    def ci(entry, digits=2):
        if not entry or entry.get("value") is None:
            return "n/a"
        lo, hi = entry["ci"] or (float("nan"), float("nan"))
        return f"{entry['value']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"

    lines = ["| measure | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    table = [
        ("change in lungs / lung area", lambda r: ci(r["lung_change"])),
        ("disease-probe shift (share of real gap)", lambda r: ci(r["disease_shift"])),
        ("source-probe shift (share of real gap)", lambda r: ci(r["source_shift"])),
        ("disease − source shift", lambda r: ci(r["disease_minus_source"])),
        ("called covid by the real-only classifier", lambda r: f"{r['called_covid']:.1%}"),
        ("copy test Z_U / flagged", lambda r: f"{r['copies_z']:.2f} / {r['copies_flagged']:.1%}"),
        ("synthetic-vs-real probe AUC", lambda r: ci(r["synthetic_vs_real_auc"])),
        ("checkerboard peak, translations / real", lambda r: f"{r['checkerboard'][0]:.1f} / {r['checkerboard'][1]:.1f}"),
        ("Fréchet distance / KID", lambda r: f"{r['fd']:.3g} / {r['kid']:.3g}"),
        ("TSTR accuracy", lambda r: f"{r['tstr']['accuracy']:.1%} [{r['tstr']['accuracy_ci'][0]:.1%}, "
                                    f"{r['tstr']['accuracy_ci'][1]:.1%}]"),
        ("TSTR covid sensitivity", lambda r: f"{r['tstr']['covid_sensitivity']:.1%} "
                                             f"[{r['tstr']['covid_sensitivity_ci'][0]:.1%}, "
                                             f"{r['tstr']['covid_sensitivity_ci'][1]:.1%}]"),
    ]
    for label, fn in table:
        lines.append(f"| {label} | " + " | ".join(fn(r) for r in rows.values()) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--classifier", type=Path, required=True, help="classifier run trained on real films only")
    ap.add_argument("--lungs", type=Path, required=True, help="lungseg-train run")
    ap.add_argument("--gan", action="append", required=True, help="NAME=GAN_RUN_FOLDER, once per GAN")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--backbone", default="resnet18")
    a = ap.parse_args()
    rows = {}
    for item in a.gan:
        name, _, run = item.partition("=")
        rows[name] = compare_one(name, Path(run), a)
        write_text_atomic(a.out / "summary.json", json.dumps(json_safe(rows), indent=2) + "\n")
    write_text_atomic(a.out / "summary.md", markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
