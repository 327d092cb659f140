"""The real-data evidence suite on cxr3: one command, resumable stages, a time budget per call.

    python experiments/cxr3_suite.py --data DIR --out DIR [--usual PATH] [--lungs-data DIR]
        [--stages levers recipe gan ablation audit crossval] [--levers NAME ...] [--budget-s S] [--scale gpu|cpu|tiny]
        [--device D] [--report DIR] [--results-from SUMMARY_JSON]

On a GPU machine whose commands have a time limit (each command below ends within about 10 minutes):

1. Copy the data next to the checkout into the git-ignored `.data/` (cxr3 and the lung pairs are for
   research use only: never commit them, delete the copies afterwards), with the usual-recipe script
   `usual_accuracy.py` that the accuracy baseline comes from. Every package the toolkit imports must be
   installed (`pip install -e .` installs them all).

       mkdir -p .data && cp -r CXR3_DIR LUNGSEG_DIR USUAL_ACCURACY_PY .data/

2. Run the same command several times, back to back (COMMIT: `git rev-parse HEAD` of the checkout, for
   copies of the tree without .git; REPORT: a folder that is kept after the machine is returned):

       export PYTHONUNBUFFERED=1; python3 experiments/cxr3_suite.py --data .data/cxr3 \\
         --lungs-data .data/lungseg --usual .data/usual_accuracy.py --out .suite --report REPORT \\
         --budget-s 540 --commit COMMIT [--results-from .data/summary.json]

   Each call skips finished units, resumes a stopped training run from its checkpoint, and ends itself
   within 540 s plus a 30 s grace (a training run is stopped with SIGTERM, saves, and the next call
   resumes it). `.suite/` (git-ignored: checkpoints and image caches) survives between calls only while
   the machine is kept. After every unit, REPORT receives four or five flat files: summary.md,
   summary.json (every finished unit's result), logs.tar.gz and the translation grid; copy the figures
   into benchmarks/RESULTS.md from there (never the images).

3. On a fresh machine (the last one was returned, or another day), carry the last summary.json back as
   `.data/summary.json` and add `--results-from .data/summary.json`: its units count as done, except a
   run that a unit still to come reads (the recipe's first run, the CycleGAN, the lung segmenter), which
   trains again because its folder stayed on the other machine. Its durations inform the estimates.
   By `Scale.estimates` (recipe and gan measured on an H100, the rest guessed) recipe takes about 25
   minutes, gan 9, ablation 20 and audit 5, so the whole suite takes several machine loans; `--stages`
   picks what one loan runs. The stage crossval (named only) is the cross-validated ablation with a placebo
   arm (`cli.py ablation --folds`; at --scale cpu its `--scale cpu` preset, about 3 hours on 2 CPU cores), with
   the gan-lungs arm when --lungs-data gives a lung segmenter.

Units and the budget: the stages run in the order levers (only when named), recipe, gan, ablation, audit,
crossval (only when named); each is a list of units whose result is ``<out>/results/<unit>.json``; a unit
whose result exists is skipped. Before a unit starts, its duration is estimated (the mean of finished
units of its kind, else the scale's guess, less what earlier attempts spent). A unit that cannot resume
starts only if that fits in what is left of ``--budget-s``; a training unit, which resumes, starts if half
of it (or half the budget, when it is longer than one call) fits. Otherwise the suite stops and prints
what remains.

Levers and recipe: the levers stage trains the config as it is and each one change to it on ``screen_folds``
folds of the data's training split (grouped by patient, stratified by label × source) and pools their
out-of-fold figures; the data's validation and test splits take no part, so the recipe stage, which scores our
runs and the usual recipe on the test split, reports the chosen config on films no choice saw. On each fold the
config's run comes first; every lever then trains within that run's time budget (the config measures the usual
recipe's time afresh each run: 238 to 303 s for one fold on 2 shared cores). With --usual,
the screen also runs the usual recipe on each fold (lever ``usual``), so the config as it is meets it on patients
no earlier choice of the config saw, paired fold by fold, and then the config once more with the usual recipe's
measured time on the fold as its budget (lever ``usual-time``: the same wall time, where the config's own estimate
leaves out the usual recipe's JPEG decoding and validation passes). Neither is ever chosen. With --screen-seeds N
every candidate runs each fold with the scale's first N seeds, and differences are paired by seed within the fold.

Scales: ``gpu`` is the full-size recipe (configs/classify-train.yaml, 224² input, 2 seeds; CycleGAN 5,000
steps at 256², Zebin et al.); ``cpu`` mirrors the CPU preset (configs/classify-train-cpu.yaml against the
usual recipe at its CPU scale, 3 seeds, the rows of RESULTS.md's "CPU preset"); ``tiny`` runs every stage
on phantoms in about a minute on a CPU (tests/test_suite.py).

Exit status: 0 when every planned unit finished or was skipped with a reason, 3 when the budget ran out
first, 1 when a unit failed (its log says why; the others still ran), 130 when stopped by a signal.
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from ablation.seeds import mean_interval, write_tstr_manifest  # noqa: E402
from augment.balance import Policy, balance  # noqa: E402
from augment.data import DataConfig, csv_rows, decode_to_square  # noqa: E402
from augment.runsplit import SPLIT_FILE, read_split  # noqa: E402
from benchmarks.common import cpu_name  # noqa: E402
from ablation.folds import assign_folds, fold_parts  # noqa: E402
from augment.balance import COLUMNS  # noqa: E402
from augment.data import load_dataset, write_csv  # noqa: E402
from foundation.errors import UserError  # noqa: E402
from foundation.files import json_safe, write_bytes_atomic, write_text_atomic  # noqa: E402
from foundation.runs import git_commit, latest_run  # noqa: E402

STAGES = ("levers", "recipe", "gan", "ablation", "audit", "crossval")
MINORITY = "covid"
# rows of the lever screen that measure the config against the usual recipe, never chosen as levers: the recipe
# itself, and the config given the recipe's measured wall time on the fold as its budget
YARDSTICKS = ("usual", "usual-time")
# the targets, and the usual recipe's cxr3 validation accuracy quoted for each headline backbone
# (usual_accuracy.py at full size on a GPU)
TARGET_ACCURACY = TARGET_COVID_SENSITIVITY = 0.90
QUOTED_USUAL = {"resnet50": 0.837, "efficientnet_b0": 0.747, "vgg16": 0.678}
GRACE_S = 30        # after SIGTERM, seconds a command has to save its checkpoint before it is killed
INTERRUPTED = 130   # exit status of a toolkit training stopped by a signal (after saving)
BUDGET_SPENT = 3    # exit status when the budget ran out before every unit finished
# runs usual_accuracy.py with torch.manual_seed offset by 1000 × seed (seed 0: the script unchanged)
SEEDED_USUAL = """import runpy, sys, torch
seed_offset = 1000 * int(sys.argv[1])
manual_seed = torch.manual_seed
torch.manual_seed = lambda s: manual_seed(s + seed_offset)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@dataclass(frozen=True)
class Scale:
    """The sizes of every stage at one scale. Paths are relative to the repository."""
    classifier_config: str
    classifier_sets: tuple[str, ...]          # overrides of every classifier
    backbones: tuple[str, ...]                # recipe; the first is screened by levers, and its first seed is
                                              # the yardstick of gan, tstr and audit
    seeds: tuple[int, ...]                    # recipe and levers
    usual_args: tuple[str, ...]               # usual_accuracy.py options besides --data, --models, --device
    levers: tuple[tuple[str, tuple[str, ...]], ...]  # (name, overrides), each against the config as it is
    gan_config: str | None
    gan_sets: tuple[str, ...]                 # gan-train overrides; also the ablation's CycleGAN
    ablation_seeds: int
    lungseg_config: str
    lungseg_sets: tuple[str, ...]
    # seconds a unit of each kind ("ours:vgg16", else "ours", else "default") is expected to take until
    # one has run here
    estimates: dict[str, float] = field(default_factory=dict)
    # the cross-validated ablation (stage crossval): `cli.py ablation --scale <crossval_preset>`, or else
    # `--folds <crossval_folds>` with this scale's classifier (first backbone) and CycleGAN
    crossval_folds: int = 3
    crossval_preset: str | None = None
    # the lever screen: folds of the data's training split (its validation and test splits stay unseen)
    screen_folds: int = 3


SCALES = {
    "gpu": Scale(
        classifier_config="configs/classify-train.yaml", classifier_sets=(),
        backbones=("resnet50", "efficientnet_b0", "vgg16"), seeds=(0, 1),
        usual_args=("--epochs", "40", "--size", "224", "--workers", "16"),
        # the CPU screen (RESULTS.md, "Levers on the CPU preset") found training without random crops best, and
        # cutmix, mixup, stronger crops, a higher resolution, no EMA, no label smoothing and balanced batches no
        # better: those are not repeated. Longer training kept the accuracy and raised covid sensitivity (+3.6 points)
        levers=(("crop100", ("augment.crop_scale=[1.0,1.0]",)), ("epochs60", ("train.epochs=60",))),
        gan_config=None, gan_sets=("data.size=256", "train.steps=5000", "train.checkpoint_every=500"),
        ablation_seeds=3, lungseg_config="configs/lungseg-train.yaml", lungseg_sets=(),
        # measured on an H100 on 2026-11-24 (ours, usual, gan-train, gan-eval, tstr); the rest are guesses
        estimates={"ours": 125, "ours:vgg16": 130, "usual": 120, "usual:vgg16": 90, "lever": 125, "gan-train": 400,
                   "gan-eval": 20, "tstr": 115, "ablation": 1200, "lungseg": 90, "audit": 60, "lung-crop": 120,
                   "crossval": 4500, "default": 120}),  # crossval: 15 classifiers and 6 CycleGANs (guessed)
    "cpu": Scale(
        classifier_config="configs/classify-train-cpu.yaml", classifier_sets=(), backbones=("resnet18",),
        seeds=(0, 1, 2), usual_args=("--size", "112", "--epochs", "12", "--workers", "2"),
        # against the preset, which trains without random crops since the screen of RESULTS.md ("Levers on the CPU
        # preset"; epochs and class-balanced batches: "CPU preset")
        levers=(("mixup", ("train.mixup=0.2",)), ("cutmix", ("train.cutmix=1.0",)), ("no-ema", ("train.ema=0",)),
                ("crop50", ("augment.crop_scale=[0.5,1.0]",)), ("crop80", ("augment.crop_scale=[0.8,1.0]",)),
                ("crop90", ("augment.crop_scale=[0.9,1.0]",)), ("no-smoothing", ("train.label_smoothing=0",)),
                # more pixels, so fewer epochs inside the preset's budget (train.time_budget: usual plans them)
                ("res160", ("data.size=176", "model.input_size=160")),
                ("no-class-weights", ("train.balance=none",)),
                ("sqrt-class-weights", ("train.class_weight_power=0.5",)),  # between the two above
                ("tta4", ("eval.tta=4",)),
                # the usual recipe's pixels, so more epochs inside the budget (where float32 steps are slow)
                ("res112", ("data.size=128", "model.input_size=112")),
                # as on a CPU without native bf16: float32 steps, so the budget plans fewer epochs
                ("float32", ("train.cpu_bf16=false",))),
        gan_config=None, gan_sets=("data.size=128", "model.ngf=32", "model.ndf=32", "model.n_blocks=6",
                                   "train.steps=2000", "train.checkpoint_every=200"),
        ablation_seeds=3, lungseg_config="configs/lungseg-train.yaml",
        lungseg_sets=("data.size=128", "model.width=8", "model.depth=5", "train.epochs=18", "train.lr=0.003"),
        estimates={"ours": 380, "usual": 400, "lever": 400, "gan-train": 3600, "gan-eval": 120, "tstr": 500,
                   "ablation": 14400, "lungseg": 900, "audit": 300, "lung-crop": 500, "crossval": 10800,
                   "default": 300},
        crossval_preset="cpu"),  # 3 folds, the CPU presets, CycleGANs of 1,500 steps: about 3 hours
    "tiny": Scale(
        classifier_config="configs/classify-train-demo.yaml",
        classifier_sets=("data.size=32", "model.input_size=32", "model.width=4", "train.epochs=2",
                         "train.tensorboard=false", "eval.bootstrap=20"),
        backbones=("shallow",), seeds=(0,), usual_args=("--size", "32", "--epochs", "1", "--workers", "0"),
        levers=(("mixup", ("train.mixup=0.2",)),),
        gan_config="configs/gan-train-demo.yaml",
        gan_sets=("data.size=32", "model.ngf=4", "model.ndf=4", "model.n_blocks=1", "model.n_layers_d=2",
                  "train.pool_size=2", "train.steps=4", "train.log_every=2", "train.checkpoint_every=2",
                  "train.tensorboard=false"),
        ablation_seeds=1, lungseg_config="configs/lungseg-train-demo.yaml",
        lungseg_sets=("data.size=32", "train.epochs=1", "train.tensorboard=false", "eval.bootstrap=20"),
        estimates={"default": 10}, crossval_folds=2, screen_folds=2),
}


class Stopped(Exception):
    """The budget ran out, or a stop was asked for; finished work is kept."""


class Failed(Exception):
    """A command of a unit failed; the unit's log says why."""


@dataclass
class Unit:
    """One resumable piece of work; its result is ``results/<name>.json``."""
    name: str
    kind: str                                   # units of one kind take about as long (duration estimates)
    resumable: bool                             # stopping it keeps its progress (a training run)
    work: Callable[["Unit"], dict]              # runs the commands, returns the figures
    needs: tuple[str, ...] = ()                 # units whose results it reads
    unavailable: str | None = None              # why it cannot run here at all (a missing command or option)


def read_json(path: Path, default=None):
    return json.loads(path.read_text()) if path.exists() else default


def shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (commands run there), else absolute."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def write_json(path: Path, value) -> None:
    write_text_atomic(path, json.dumps(json_safe(value), indent=2) + "\n")


def gpu_name() -> str | None:
    """The GPU as nvidia-smi names it (not torch, which would hold a CUDA context in this process)."""
    if not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


class Suite:
    def __init__(self, a: argparse.Namespace):
        self.a, self.scale = a, SCALES[a.scale]
        self.data, self.out = Path(a.data).resolve(), Path(a.out).resolve()
        self.lungs = Path(a.lungs_data).resolve() if a.lungs_data else None
        self.usual_script = Path(a.usual).resolve() if a.usual else None
        self.cache = self.out / "cache"
        self.cache_set = f"data.cache_dir={shown(self.cache)}"  # every run's image cache, shared
        self.deadline = time.monotonic() + a.budget_s if a.budget_s else None
        self.progress = read_json(self.out / "progress.json", {})
        for key in ("spent", "timers", "commands", "durations"):
            self.progress.setdefault(key, {})
        self.skipped: dict[str, str] = {}
        self.failed: dict[str, str] = {}
        self.stopped: str | None = None
        self.remaining: list[str] = []
        self.stop_requested = False
        self.environment = {"gpu": gpu_name(), "cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                            "python": platform.python_version(), "commit": git_commit() or a.commit}

    # ------------------------------------------------------------ paths and commands
    @staticmethod
    def arg(value) -> str:
        """A command-line argument; paths as :func:`shown`."""
        return shown(value) if isinstance(value, Path) else str(value)

    def cli(self, command: str, *args) -> list[str]:
        return [sys.executable, "cli.py", command, *map(self.arg, args), "--device", self.a.device]

    def folder(self, unit: Unit) -> Path:
        return self.out / "runs" / unit.name

    def result(self, name: str) -> dict | None:
        return read_json(self.out / "results" / f"{name}.json")

    def classifier_sets(self, *extra: str) -> list[str]:
        return [*self.scale.classifier_sets, self.cache_set, *extra]

    @staticmethod
    def flags(flag: str, values) -> list[str]:
        return [x for v in values for x in (flag, v)]

    # ------------------------------------------------------------ running units under the budget
    def take_results(self, summary: Path) -> None:
        """Count the units an earlier call finished (``summary.json``'s ``units``, from a report of another
        machine, say) as done here, unless a result of this folder's own is there."""
        earlier = read_json(summary, {})
        if "units" not in earlier:
            raise UserError(f"{summary}: not a summary.json of this suite (no units); give the one --report wrote")
        if earlier.get("scale") != self.a.scale:
            raise UserError(f"{summary}: a suite at scale {earlier.get('scale')}, not {self.a.scale}; give --scale "
                            f"{earlier.get('scale')} or another summary")
        units = earlier["units"]
        for name, result in units.items():
            if self.result(name) is None:
                write_json(self.out / "results" / f"{name}.json", result)
                self.progress["durations"].setdefault(result["kind"], []).append(result["seconds"])  # estimates
        self.save_progress()

    def done(self, name: str, needed: set[str]) -> bool:
        """Whether unit ``name`` has its result, and, when a planned unit reads its run folder (``needed``), that
        folder still exists (a result taken from another machine names a run this one lacks: it runs again)."""
        result = self.result(name)
        return result is not None and not (name in needed and "run" in result and not (ROOT / result["run"]).exists())

    def run(self, units: list[Unit]) -> None:
        needed = {n for u in units for n in u.needs}
        for i, unit in enumerate(units):
            if self.done(unit.name, needed):
                print(f"{unit.name}: done earlier, kept", flush=True)
                continue
            try:
                missing = [n for n in unit.needs if not self.done(n, needed)]
                reason = unit.unavailable or (f"needs {', '.join(missing)} first" if missing else None)
                if reason:
                    self.skipped[unit.name] = reason
                    print(f"{unit.name}: skipped: {reason}", flush=True)
                    continue
                self.check_budget(unit)
                self.run_unit(unit)
            except Stopped as e:
                self.stopped = str(e)
                self.remaining = list(dict.fromkeys(u.name for u in units[i:]
                                                    if not self.done(u.name, needed) and not u.unavailable))
                print(f"stopped: {e}\nremaining: {', '.join(self.remaining)}", flush=True)
                return
            except Exception as e:  # noqa: BLE001 - one unit's failure must not cost the others their turn
                if not isinstance(e, Failed):
                    log = self.out / "logs" / f"{unit.name}.log"
                    log.parent.mkdir(parents=True, exist_ok=True)
                    with open(log, "a", encoding="utf-8") as f:
                        traceback.print_exc(file=f)
                self.failed[unit.name] = str(e) if isinstance(e, Failed) else f"{type(e).__name__}: {e}"
                print(f"{unit.name}: failed: {self.failed[unit.name]}", flush=True)
            finally:
                self.write_summary(units)
        self.write_summary(units)  # also when every unit was done earlier

    def estimate(self, unit: Unit) -> float:
        """Seconds ``unit`` still needs: the mean of finished units of its kind, else the scale's guess,
        less what earlier attempts spent (at least a tenth of it)."""
        done = self.progress["durations"].get(unit.kind)
        guesses = self.scale.estimates
        total = mean(done) if done else guesses.get(unit.kind, guesses.get(unit.kind.split(":")[0], guesses["default"]))
        return max(total - self.progress["spent"].get(unit.name, 0.0), 0.1 * total)

    def check_budget(self, unit: Unit) -> None:
        if self.stop_requested:
            raise Stopped("stopped by a signal")
        if self.deadline is None:
            return
        left, need = self.deadline - time.monotonic(), self.estimate(unit)
        if unit.resumable:  # it saves when stopped: worth starting when half of it (or of a call) fits
            need = min(need, self.a.budget_s) / 2
        if need > left:
            raise Stopped(f"{unit.name} needs about {need:.0f} s to start, {max(left, 0):.0f} s of the "
                          f"{self.a.budget_s:g} s budget are left")

    def run_unit(self, unit: Unit) -> None:
        print(f"{unit.name}: running (about {self.estimate(unit):.0f} s)", flush=True)
        start = time.monotonic()
        try:
            figures = unit.work(unit)
        finally:
            self.progress["spent"][unit.name] = self.progress["spent"].get(unit.name, 0.0) + time.monotonic() - start
            self.save_progress()
        seconds = self.progress["spent"].pop(unit.name)
        self.progress["durations"].setdefault(unit.kind, []).append(round(seconds, 1))
        result = {"unit": unit.name, "kind": unit.kind, "seconds": round(seconds, 1),
                  "timers": self.progress["timers"].pop(unit.name, {}),
                  "commands": self.progress["commands"].pop(unit.name, []),
                  "finished": datetime.datetime.now().isoformat(timespec="seconds"), **self.environment, **figures}
        write_json(self.out / "results" / f"{unit.name}.json", result)
        self.save_progress()
        print(f"{unit.name}: done in {seconds:.0f} s", flush=True)

    def save_progress(self) -> None:
        write_json(self.out / "progress.json", self.progress)

    def call(self, unit: Unit, cmd: list[str], timer: str) -> None:
        """Run one command of ``unit``, its output appended to the unit's log, and add its wall time to
        the unit's ``timer``. At the end of the budget the command gets SIGTERM (a training saves and
        exits) and, :data:`GRACE_S` later, SIGKILL."""
        if self.stop_requested or (self.deadline is not None and time.monotonic() >= self.deadline):
            raise Stopped("stopped by a signal" if self.stop_requested else "the time budget ran out")
        log = self.out / "logs" / f"{unit.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.progress["commands"].setdefault(unit.name, []).append(shlex.join(["python", *cmd[1:]]))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "30"}  # few progress-bar lines in logs
        start, why, signalled = time.monotonic(), None, None
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"$ {shlex.join(cmd)}\n")
            f.flush()
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
            while True:
                try:
                    code = proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                if why is None and self.deadline is not None and now >= self.deadline:
                    why, signalled = "the time budget ran out", now
                    proc.send_signal(signal.SIGTERM)
                elif why is None and self.stop_requested:  # the signal reached the command too (same group)
                    why, signalled = "stopped by a signal", now
                if signalled is not None and now - signalled > GRACE_S:
                    proc.kill()
        timers = self.progress["timers"].setdefault(unit.name, {})
        timers[timer] = round(timers.get(timer, 0.0) + time.monotonic() - start, 2)
        self.save_progress()
        if code and (why or code == INTERRUPTED):
            raise Stopped(why or f"{cmd[2]} was interrupted")
        if code:
            raise Failed(f"`{shlex.join(cmd[1:4])} ...` exited with status {code}; see {log}")

    # ------------------------------------------------------------ the work of each kind of unit
    def train_or_resume(self, unit: Unit, command: str, kind: str, marker: str, start: list, resume=()) -> Path:
        """The ``command`` run (``kind``, its checkpoint ``marker``) in the unit's folder: started there with the
        ``start`` arguments, or, when an earlier call left one, resumed (with the ``resume`` arguments)."""
        folder = self.folder(unit)
        run = latest_run(folder, kind, marker=marker)
        if run is not None:
            self.call(unit, self.cli(command, "--resume", run, *resume), "train")
            return run
        self.call(unit, self.cli(command, *start, "--out", folder), "train")
        return latest_run(folder, kind, marker=marker)

    def train_and_evaluate(self, unit: Unit, data: Path, backbone: str, seed: int, extra=(),
                           budget_s: float | None = None) -> dict:
        """classify-train in the unit's folder (resuming the run there), then evaluate: its figures. ``budget_s``
        replaces the config's ``train.time_budget``."""
        folder, config = self.folder(unit), ROOT / self.scale.classifier_config
        budget = [f"train.time_budget={budget_s}s"] if budget_s else []
        sets = self.flags("--set", self.classifier_sets(*extra, *budget))
        run = self.train_or_resume(unit, "classify-train", "classifier", "last.pt",
                                   ["--data", data, "--config", config, "--backbone", backbone, "--seed", seed, *sets],
                                   ["--data", data])
        self.call(unit, self.cli("evaluate", "--data", data, "--config", config, "--checkpoint", run, "--out", folder,
                                 *sets), "evaluate")
        return classifier_figures(run) | {"backbone": backbone, "seed": seed, "overrides": list(extra),
                                          "train_s": self.progress["timers"][unit.name]["train"],
                                          "budget_s": budget_seconds(run)}

    def lever(self, unit: Unit, base_unit: str, k: int, sets: tuple[str, ...] | None) -> dict:
        """One lever of the screen on fold ``k`` (``sets`` None: lung-cropped training), with the seed and within
        the time budget of the fold's base run ``base_unit``: the config measures its budget (the usual recipe's
        time on this machine) afresh in each run, so every lever of a fold gets the same one. Test-time
        augmentation is trained too: the run chooses its epoch with it, and its validation's cost comes out of the
        budget."""
        base = self.result(base_unit)
        extra = self.lung_crop_sets() if sets is None else sets
        return self.train_and_evaluate(unit, self.screen_fold(k), base["backbone"], base["seed"], extra,
                                       budget_seconds(ROOT / base["run"])) | {"fold": k}

    def usual(self, unit: Unit, backbone: str, seed: int, data_split: tuple[Path, str] | None = None) -> dict:
        """usual_accuracy.py for one backbone and seed, as a process of its own, on ``data_split`` (a folder and
        the split it reports on; by default :meth:`usual_data`)."""
        device = "cuda" if self.a.device != "cpu" and torch.cuda.is_available() else "cpu"
        data, split = data_split or self.usual_data()
        self.call(unit, [sys.executable, "-c", SEEDED_USUAL, str(seed), self.arg(self.usual_script), "--data",
                         self.arg(data), "--models", backbone, "--device", device, *self.scale.usual_args], "train")
        lines = (self.out / "logs" / f"{unit.name}.log").read_text().splitlines()
        return usual_figures(next(line for line in reversed(lines) if line.startswith("{"))) | {
            "backbone": backbone, "seed": seed, "split": split, "wall_s": self.progress["timers"][unit.name]["train"]}

    def usual_data(self) -> tuple[Path, str]:
        """The data usual_accuracy.py is given, and the split it then reports on. The script scores its ``val``
        rows; when the data's manifest has a test split, a copy of it (absolute paths) whose ``val`` rows are the
        test split makes it report on the films our runs are evaluated on. It also picks its best epoch on them,
        an advantage our runs (epoch chosen on the validation split) do not have."""
        manifest = self.data / "manifest.csv"
        rows = []
        if manifest.is_file():
            with open(manifest, newline="", encoding="utf-8") as f:
                rows = csv_rows(f)
        if not any(r.get("split") == "test" for r in rows):
            return self.data, "val"
        return tested_as_val(rows, self.data, self.out / "usual-data"), "test"

    def usual_on_fold(self, unit: Unit, k: int, seed: int) -> dict:
        """The usual recipe on fold ``k`` of the lever screen: it trains on the fold's training part and reports
        (choosing its epoch there too, an advantage the config's runs do not have) on the fold's test part."""
        with open(self.screen_fold(k), newline="", encoding="utf-8") as f:
            rows = csv_rows(f)
        tested = [r["label"] for r in rows if r["split"] == "test"]
        data = tested_as_val(rows, self.data, self.out / "screen" / f"usual-fold{k}")
        figures = self.usual(unit, self.scale.backbones[0], seed, (data, f"fold {k}"))
        return figures | {"fold": k, "n": len(tested), "support": {c: tested.count(c) for c in figures["sensitivity"]},
                          "overrides": []}

    def at_usual_time(self, unit: Unit, usual_unit: str, k: int, seed: int) -> dict:
        """The config on fold ``k`` with the usual recipe's measured time there (``usual_unit``'s whole process) as
        its budget: the same wall time, where the config's own estimate (``train.time_budget: usual``) leaves out
        the usual recipe's JPEG decoding and validation passes, and the plan's margin leaves part of that unused."""
        seconds = max(1, round(self.result(usual_unit)["wall_s"]))
        return self.train_and_evaluate(unit, self.screen_fold(k), self.scale.backbones[0], seed,
                                       (), seconds) | {"fold": k, "overrides": ["train.time_budget=<usual's s>"]}

    def gan_train(self, unit: Unit) -> dict:
        config = ["--config", ROOT / self.scale.gan_config] if self.scale.gan_config else []
        run = self.train_or_resume(unit, "gan-train", "gan", "checkpoint.pt",
                                   ["--data", self.data, *config,
                                    *self.flags("--set", [*self.scale.gan_sets, self.cache_set])], ["--data", self.data])
        info, seconds = read_json(run / "run.json"), self.progress["timers"][unit.name]["train"]
        size = yaml.safe_load((run / "config.yaml").read_text())["data"]["size"]
        return {"run": self.arg(run), "steps": info["total_steps"], "size": size, "train_images": info["train_images"],
                "train_s": seconds, "it_s": info["total_steps"] / seconds}

    def gan_eval(self, unit: Unit) -> dict:
        gan, yardstick = self.result("gan/train"), self.result(self.yardstick)
        run = ROOT / gan["run"]
        self.call(unit, self.cli("gan-eval", "--data", self.data, "--checkpoint", run, "--classifier",
                                 ROOT / yardstick["run"], "--out", self.folder(unit)), "eval")
        report = read_json(run / f"gan-eval-step{gan['steps']}.json")
        keep = ("features", "split", "n_translated", "n_real_b", "fd", "kid", "kid_std", "ssim_mean", "ssim_std",
                "share_called_b")
        return {k: report[k] for k in keep} | {"gan": gan["run"], "classifier": yardstick["run"]}

    def tstr(self, unit: Unit) -> dict:
        """Train on synthetic covid (as many as the real covid training images, which leave), test on real;
        and the grid of the first 16 translations beside their sources."""
        gan, real = self.result("gan/train"), self.result(self.yardstick)
        run, folder = ROOT / gan["run"], self.folder(unit)
        n = sum(r["label"] == MINORITY and r["split"] == "train" for r in read_split(run / SPLIT_FILE))
        synthetic = folder / "synthetic"
        if not (synthetic / "manifest.csv").exists():
            self.call(unit, self.cli("synthesize", "--data", self.data, "--checkpoint", run, "--n", n, "--dest",
                                     synthetic, "--overwrite", "--out", folder), "synthesize")
        grid = translation_grid(synthetic, run, self.out / "figures" / "gan-translations.png")
        manifest = folder / "tstr.csv"
        if not manifest.exists():  # read as the real-only run read the data: same groups and splits
            data = yaml.safe_load((ROOT / real["run"] / "config.yaml").read_text())["data"]
            cfg = DataConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
            balance(self.data, synthetic, Policy("count", n), folder / "balanced.csv", cfg, overwrite=True)
            write_tstr_manifest(folder / "balanced.csv", manifest, MINORITY)
        figures = self.train_and_evaluate(unit, manifest, real["backbone"], real["seed"])
        return figures | {"n_synthetic": n, "grid": self.arg(grid), "train_real_accuracy": real["accuracy"],
                          "train_real_sensitivity": real["sensitivity"], "train_real_run": real["run"]}

    def ablation(self, unit: Unit, fraction: float | None) -> dict:
        folder = self.folder(unit)
        dest = folder / "experiment"
        gan_config = ["--gan-config", ROOT / self.scale.gan_config] if self.scale.gan_config else []
        self.call(unit, self.cli(
            "ablation", "--data", self.data, "--out", folder, "--dest", dest, "--backbone", self.scale.backbones[0],
            "--seeds", self.scale.ablation_seeds, "--config", ROOT / self.scale.classifier_config,
            *self.flags("--set", self.classifier_sets()), *gan_config,
            *self.flags("--gan-set", [*self.scale.gan_sets, self.cache_set]),
            *(["--minority-fraction", fraction] if fraction else [])), "ablation")
        s = read_json(dest / "summary.json")
        keep = ("conditions", "synthetic_minus_classic", "verdict", "tstr", "gan_quality", "gan_per_seed", "minority",
                "minority_fraction", "seeds", "n_synthetic")
        return {k: s[k] for k in keep} | {"backbone": self.scale.backbones[0], "table": (dest / "table.md").read_text()}

    def crossval(self, unit: Unit) -> dict:
        """``cli.py ablation --folds`` (the scale's options), with the lung segmenter's gan-lungs arm when there is
        one; its summary's decisions, endpoints and differences, and the report."""
        folder = self.folder(unit)
        dest = folder / "experiment"
        s = self.scale
        lungs = ["--lungs", ROOT / self.result("lungseg")["run"]] if self.lungs else []
        design = (["--scale", s.crossval_preset] if s.crossval_preset else
                  ["--folds", s.crossval_folds, "--config", ROOT / s.classifier_config, "--backbone", s.backbones[0],
                   *self.flags("--set", s.classifier_sets), *self.flags("--gan-set", s.gan_sets),
                   *(["--gan-config", ROOT / s.gan_config] if s.gan_config else [])])
        self.call(unit, self.cli("ablation", "--data", self.data, "--out", folder, "--dest", dest, *design, *lungs,
                                 "--set", self.cache_set, "--gan-set", self.cache_set), "ablation")
        summary = read_json(dest / "summary.json")
        keep = ("folds", "arms", "skipped", "n", "n_patients", "rounds", "covid_source", "covid_free_sources",
                "covid_training_films_by_source", "endpoints", "differences", "decisions")
        return {k: summary[k] for k in keep} | {"report": (dest / "report.md").read_text()}

    def lungseg(self, unit: Unit) -> dict:
        run = self.train_or_resume(unit, "lungseg-train", "lungseg", "checkpoint.pt",
                                   ["--data", self.lungs, "--config", ROOT / self.scale.lungseg_config,
                                    *self.flags("--set", [*self.scale.lungseg_sets, self.cache_set])])
        m = read_json(run / "metrics.json")
        every = m["per_source"]["all"]
        return {"run": self.arg(run), "split": m["split"], "size": m["size"], "dice": every["dice"],
                "dice_ci": every["dice_ci"], "iou": every["iou"], "iou_ci": every["iou_ci"], "n": every["n"],
                "per_source": {s: {"n": v["n"], "dice": v["dice"], "dice_ci": v["dice_ci"]}
                               for s, v in m["per_source"].items() if s != "all"}}

    def audit(self, unit: Unit, classifier: Path) -> dict:
        """``cli.py audit`` of a classifier run with the lung segmenter, into the unit's folder; its key
        figures from ``audit.json`` (each a value with its interval over patients)."""
        dest = self.folder(unit) / "audit"
        self.call(unit, self.cli("audit", "--data", self.data, "--checkpoint", classifier, "--lungs",
                                 ROOT / self.result("lungseg")["run"], "--dest", dest, "--overwrite"), "audit")
        r = read_json(dest / "audit.json")
        probe, hidden = r["source_probe"]["all"], r["lungs_hidden"]
        return {"audited": self.arg(classifier), "report": self.arg(dest / "audit.md"), "input": r["input"],
                "split": r["split"], "n": r["n"], "method": r["method"], "sentences": r["sentences"],
                "cam_in_lungs": r["cam"]["all"]["share"], "peak_in_lungs": r["cam"]["all"]["peak"],
                "lung_area": r["cam"]["all"]["area"],
                "source_probe": probe if "skipped" in probe else
                {k: probe[k] for k in ("accuracy", "majority_rate", "accuracy_minus_majority")},
                "accuracy": {v: hidden[v] for v in ("plain", "hidden", "kept")}, "chance": hidden["chance"],
                "per_source": {name: {"n": v["n"], "accuracy": v["accuracy"]["plain"], "hidden": v["accuracy"]["hidden"],
                                      "kept": v["accuracy"]["kept"], "cam_in_lungs": v["cam"]["share"]}
                               for name, v in r["per_source"].items()}}

    def lung_crop(self, unit: Unit) -> dict:
        real = self.result(self.yardstick)
        figures = self.train_and_evaluate(unit, self.data, real["backbone"], real["seed"], self.lung_crop_sets())
        return figures | self.audit(unit, ROOT / figures["run"])

    def lung_crop_sets(self) -> tuple[str, ...]:
        return "data.lung_crop=true", f"data.lungseg_run={self.result('lungseg')['run']}"

    def screen_fold(self, k: int) -> Path:
        """The manifest of fold ``k`` of the lever screen. Only the data's training split takes part, in
        ``screen_folds`` folds grouped by patient and stratified by label × source (the ablation's folds,
        :mod:`ablation.folds`): the fold tests, about a tenth of the other patients, drawn in proportion to
        each label's sources so that it is composed as the fold is, chooses the epoch and the covid threshold, the
        rest trains (the screens of 2026-12-07 drew them round-robin over the sources, as the ablation does). The
        data's validation and test splits are never seen, so the recipe stage can report the chosen config on its
        test split."""
        folder = self.out / "screen"
        path = folder / f"fold{k}.csv"
        if path.exists():
            return path
        images = folder / "images.csv"
        if not images.exists():  # written once: every fold and every later call uses the same folds
            ds = load_dataset(self.data, DataConfig(cache_dir=str(self.cache)), quiet=True)
            train = ds.indices("train").tolist()
            labels = [ds.classes[int(ds.labels[i])] for i in train]
            groups, sources = [ds.groups[i] for i in train], [ds.sources[i] for i in train]
            folds = assign_folds(groups, labels, sources, self.scale.screen_folds, seed=0)
            write_csv(images, [{"path": str((ds.root / ds.paths[i]).resolve()), "label": y, "group_id": g, "source": s,
                                "fold": int(f)} for i, y, g, s, f in zip(train, labels, groups, sources, folds.tolist())],
                      ["path", "label", "group_id", "source", "fold"])
        with open(images, newline="", encoding="utf-8") as f:
            rows = csv_rows(f)
        col = {c: [r[c] for r in rows] for c in ("path", "label", "group_id", "source")}
        parts = fold_parts(col["group_id"], col["label"], col["source"], np.array([int(r["fold"]) for r in rows]), k,
                           seed=0, minority=MINORITY, proportional_val=True)
        write_csv(path, [{"path": r["path"], "label": r["label"], "split": part, "group_id": r["group_id"],
                          "source": r["source"], "origin": "real"} for r, part in zip(rows, parts)], COLUMNS)
        return path

    # ------------------------------------------------------------ the plan
    @property
    def yardstick(self) -> str:
        """The recipe run that gan-eval, TSTR and the audit compare with: first backbone, first seed."""
        return f"recipe/ours-{self.scale.backbones[0]}-seed{self.scale.seeds[0]}"

    def plan(self, stages: list[str]) -> list[Unit]:
        s, units = self.scale, []
        no_lungs = None if self.lungs else "no --lungs-data given"

        def ours(bb: str, seed: int) -> Unit:
            return Unit(f"recipe/ours-{bb}-seed{seed}", f"ours:{bb}", True,
                        lambda u: self.train_and_evaluate(u, self.data, bb, seed))

        if "levers" in stages:  # each change against the config as it is, on folds of the training split
            def wanted(name: str) -> bool:
                return self.a.levers is None or name in self.a.levers

            levers = [lever for lever in s.levers if wanted(lever[0])]
            if not no_lungs and wanted("lung-crop"):
                units.append(Unit("lungseg", "lungseg", True, self.lungseg))  # lung-cropped training needs it
                levers.append(("lung-crop", None))
            for seed in s.seeds[:self.a.screen_seeds]:
                for k in range(s.screen_folds):
                    base = screen_unit("base", k, seed, s.seeds[0])
                    units.append(Unit(base, "lever:base", True, lambda u, k=k, seed=seed: self.train_and_evaluate(
                        u, self.screen_fold(k), s.backbones[0], seed) | {"fold": k}))
                    for name, sets in levers:
                        units.append(Unit(screen_unit(name, k, seed, s.seeds[0]), f"lever:{name}", True,
                                          lambda u, base=base, k=k, sets=sets: self.lever(u, base, k, sets),
                                          needs=(*(("lungseg",) if sets is None else ()), base)))
                    usual = screen_unit("usual", k, seed, s.seeds[0])
                    if self.usual_script and wanted("usual"):  # the config against the usual recipe on the same folds
                        units.append(Unit(usual, f"usual:{s.backbones[0]}", False,
                                          lambda u, k=k, seed=seed: self.usual_on_fold(u, k, seed)))
                    if self.usual_script and wanted("usual-time"):
                        units.append(Unit(screen_unit("usual-time", k, seed, s.seeds[0]), "lever:usual-time", True,
                                          lambda u, usual=usual, k=k, seed=seed: self.at_usual_time(u, usual, k, seed),
                                          needs=(usual,)))
        if "recipe" in stages:
            for seed in s.seeds:
                for bb in s.backbones:
                    units.append(ours(bb, seed))
                    units.append(Unit(f"recipe/usual-{bb}-seed{seed}", f"usual:{bb}", False,
                                      lambda u, bb=bb, seed=seed: self.usual(u, bb, seed),
                                      unavailable=None if self.usual_script else "no --usual given"))
        if "gan" in stages:
            units += [ours(s.backbones[0], s.seeds[0]),  # the yardstick, when recipe did not run here
                      Unit("gan/train", "gan-train", True, self.gan_train),
                      Unit("gan/eval", "gan-eval", False, self.gan_eval, needs=("gan/train", self.yardstick)),
                      Unit("gan/tstr", "tstr", True, self.tstr, needs=("gan/train", self.yardstick))]
        if "ablation" in stages:
            for fraction in (0.25, None) if self.a.full_ablation else (0.25,):
                units.append(Unit(f"ablation/{f'f{fraction:g}' if fraction else 'full'}", "ablation", True,
                                  lambda u, f=fraction: self.ablation(u, f)))
        if "audit" in stages:
            if not no_lungs:
                units.append(ours(s.backbones[0], s.seeds[0]))
            units += [Unit("lungseg", "lungseg", True, self.lungseg, unavailable=no_lungs),
                      Unit("audit/default", "audit", False,
                           lambda u: self.audit(u, ROOT / self.result(self.yardstick)["run"]),
                           needs=("lungseg", self.yardstick), unavailable=no_lungs),
                      Unit("audit/lung-crop", "lung-crop", True, self.lung_crop, needs=("lungseg", self.yardstick),
                           unavailable=no_lungs)]
        if "crossval" in stages:
            if not no_lungs:
                units.append(Unit("lungseg", "lungseg", True, self.lungseg))
            units.append(Unit("crossval", "crossval", True, self.crossval, needs=() if no_lungs else ("lungseg",)))
        first = {}
        for u in units:  # a unit two stages share (the recipe's run, the lung segmenter) is planned once, first
            first.setdefault(u.name, u)
        return list(first.values())

    # ------------------------------------------------------------ the summary
    def write_summary(self, units: list[Unit]) -> None:
        results = {u.name: r for u in units if (r := self.result(u.name)) is not None}
        summary = {"suite": "cxr3", "scale": self.a.scale, "data": str(self.data), "date": datetime.date.today().isoformat(),
                   **self.environment, "command": shlex.join(["python", *sys.argv]),
                   "budget_s": self.a.budget_s, "stopped": self.stopped,
                   "remaining": self.remaining,
                   "skipped": self.skipped, "failed": self.failed,
                   "stages": stage_summaries(results, self.scale), "units": results}
        write_json(self.out / "summary.json", summary)
        write_text_atomic(self.out / "summary.md", markdown(summary))
        if self.a.report:
            self.copy_report(Path(self.a.report))

    def copy_report(self, report: Path) -> None:
        """A few flat files in ``report``, as a GPU machine hands back: summary.json (every unit's result),
        summary.md, logs.tar.gz (every unit's log) and the figures."""
        report.mkdir(parents=True, exist_ok=True)
        for name in ("summary.json", "summary.md"):
            shutil.copy2(self.out / name, report / name)
        logs = self.out / "logs"
        if logs.is_dir():
            with tarfile.open(report / ".logs.tar.gz.tmp", "w:gz") as tar:
                tar.add(logs, arcname="logs")
            os.replace(report / ".logs.tar.gz.tmp", report / "logs.tar.gz")
        for figure in sorted((self.out / "figures").glob("*")):
            shutil.copy2(figure, report / figure.name)


def tested_as_val(rows: list[dict], root: Path, folder: Path) -> Path:
    """``folder`` holding a copy of a manifest's ``rows`` for usual_accuracy.py, which reports on its ``val`` rows:
    the training rows, and the test rows as ``val`` (paths made absolute; other rows dropped). Written once."""
    if not (folder / "manifest.csv").exists():
        renamed = {"train": "train", "test": "val"}
        write_csv(folder / "manifest.csv", [{**r, "path": str((root / r["path"]).resolve()), "split": renamed[r["split"]]}
                                            for r in rows if r["split"] in renamed], list(rows[0]))
    return folder


# ---------------------------------------------------------------- reading the toolkit's outputs
def budget_seconds(run: Path) -> float | None:
    """The time budget a classifier run planned its epochs for (``run.json``), None without one."""
    return (read_json(run / "run.json").get("budget") or {}).get("budget_s")


def classifier_figures(run: Path) -> dict:
    """Figures of a classifier run from ``eval/metrics.json`` (evaluate) and ``best_metrics.json``."""
    m = read_json(run / "eval" / "metrics.json")  # the run's own split
    return {"run": shown(run), "split": m["split"], "n": m["n"], "accuracy": m["accuracy"], "accuracy_ci": m["accuracy_ci"],
            "macro_f1": m["macro"]["f1"], "macro_auc": m["macro"]["auc"],
            "sensitivity": {c: p["sensitivity"] for c, p in m["per_class"].items()},
            "sensitivity_ci": {c: p["sensitivity_ci"] for c, p in m["per_class"].items()},
            "support": {c: p["support"] for c, p in m["per_class"].items()},
            "per_source": {s: {"n": v["n"], "accuracy": v["accuracy"]} for s, v in m.get("per_source", {}).items()},
            "at_threshold": at_threshold(m), "best_epoch": read_json(run / "best_metrics.json")["epoch"]}


def at_threshold(m: dict) -> dict | None:
    """Sensitivity to the positive class (covid) against the rest at the threshold the run chose on its validation
    split for the target specificity (Minaee et al.'s operating point), None where it could not choose one."""
    b = m.get("binary") or {}
    op = b.get("operating_point")
    return op and {"sensitivity": op["sensitivity"], "specificity": op["specificity"], "threshold": op["threshold"],
                   "n_positive": b["n_positive"], "specificity_target": b["specificity_target"]}


def usual_figures(line: str) -> dict:
    """The JSON line usual_accuracy.py prints per model, as the same figures as ours."""
    r = json.loads(line)
    classes = [k[:-5] for k in r if k.endswith("_sens")]
    per_source = {}
    for k, v in r.items():
        if k.startswith("acc_") and k != "acc_ci95":
            accuracy, n = v.split(" (n=")
            per_source[k[4:]] = {"n": int(n.rstrip(")")), "accuracy": float(accuracy)}
    return {"accuracy": r["accuracy"], "accuracy_ci": r["acc_ci95"], "sensitivity": {c: r[f"{c}_sens"] for c in classes},
            "specificity": {c: r[f"{c}_spec"] for c in classes}, "per_source": per_source, "epochs": r["epochs"],
            "train_s": r["train_s"]}


def translation_grid(synthetic: Path, gan_run: Path, dest: Path, n: int = 16) -> Path:
    """A PNG of the first ``n`` translations of ``synthetic`` beside their sources as the GAN saw them:
    rows of four source | translation pairs."""
    data = yaml.safe_load((gan_run / "config.yaml").read_text())["data"]
    with open(synthetic / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = csv_rows(f)[:n]
    size, gap = data["size"], 4
    pairs = [np.hstack([decode_to_square(Path(r["source_image"]), size, data["resize"]),
                        np.full((size, 1), 255, np.uint8),
                        np.asarray(Image.open(synthetic / r["path"]).convert("L"))]) for r in rows]
    per_row = min(4, len(pairs))
    canvas = np.full(((len(pairs) + per_row - 1) // per_row * (size + gap) - gap,
                      per_row * (pairs[0].shape[1] + gap) - gap), 255, np.uint8)
    for i, pair in enumerate(pairs):
        y, x = i // per_row * (size + gap), i % per_row * (pair.shape[1] + gap)
        canvas[y:y + size, x:x + pair.shape[1]] = pair
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG")
    write_bytes_atomic(dest, buffer.getvalue())
    return dest


# ---------------------------------------------------------------- per-stage summaries
def side(results: list[dict]) -> dict | None:
    """Mean over seeds of one side (ours or usual) of a backbone."""
    if not results:
        return None
    classes = results[0]["sensitivity"]
    sources = sorted({s for r in results for s in r["per_source"]})
    return {"seeds": [r["seed"] for r in results], "split": results[0].get("split", "val"),
            "accuracy": mean(r["accuracy"] for r in results),
            "accuracy_per_seed": [[r["accuracy"], r["accuracy_ci"]] for r in results],
            "sensitivity": {c: mean(r["sensitivity"][c] for r in results) for c in classes},
            "per_source": {s: mean(r["per_source"][s]["accuracy"] for r in results if s in r["per_source"])
                           for s in sources},
            "train_s": mean(r.get("wall_s", r["train_s"]) for r in results)}


def paired(ours: list[dict], theirs: list[dict]) -> dict | None:
    """Mean paired accuracy difference over the seeds both sides ran, with a 95 % t interval (≥ 3 seeds)."""
    by_seed = {r["seed"]: r["accuracy"] for r in theirs}
    d = [r["accuracy"] - by_seed[r["seed"]] for r in ours if r["seed"] in by_seed]
    if not d:
        return None
    m, lo, hi = mean_interval(d)
    return {"mean": m, "low": lo, "high": hi, "n": len(d)}


def pooled(results: list[dict]) -> dict:
    """Figures of one lever over the folds (and seeds) of the screen, pooled: accuracy weighted by each run's
    films, sensitivities by each class's films in it; ``n`` counts the folds' films once."""
    classes = results[0]["sensitivity"]
    scored = sum(r["n"] for r in results)  # a fold's films once per seed
    support = {c: sum(r["support"][c] for r in results) for c in classes}
    return {"folds": sorted({r["fold"] for r in results}), "seeds": sorted({r["seed"] for r in results}),
            "n": sum({r["fold"]: r["n"] for r in results}.values()),
            "accuracy": sum(r["accuracy"] * r["n"] for r in results) / scored,
            "sensitivity": {c: (sum((r["sensitivity"][c] or 0) * r["support"][c] for r in results) / support[c]
                                if support[c] else None) for c in classes},
            "at_threshold": pooled_at_threshold([r.get("at_threshold") for r in results]),
            "train_s": mean(r.get("wall_s", r["train_s"]) for r in results)}


def pooled_at_threshold(points: list[dict | None]) -> float | None:
    """Sensitivity at each fold's validation-chosen threshold, pooled over the folds' positives; None unless every
    fold has an operating point (the usual recipe has no validation split to choose one on)."""
    if not points or None in points:
        return None
    return sum(p["sensitivity"] * p["n_positive"] for p in points) / sum(p["n_positive"] for p in points)


def screen_unit(name: str, fold: int, seed: int, first_seed: int) -> str:
    """The unit of candidate ``name`` on ``fold`` with ``seed``; the first seed's units carry no seed in their
    names (those of the screens before ``--screen-seeds``)."""
    return f"levers/{name}-fold{fold}" + ("" if seed == first_seed else f"-seed{seed}")


def by_fold_difference(a: dict[int, list[dict]], b: dict[int, list[dict]]) -> dict | None:
    """Accuracy of ``a`` minus ``b`` (each fold's runs) on the folds both ran, paired by seed and averaged over the
    seeds both ran there: the mean over folds, its 95 % t interval (from 3 folds), and the sign in each fold."""
    d = []
    for k in sorted(a):
        theirs = {r["seed"]: r["accuracy"] for r in b.get(k, ())}
        by_seed = [r["accuracy"] - theirs[r["seed"]] for r in a[k] if r["seed"] in theirs]
        if by_seed:
            d.append(mean(by_seed))
    if not d:
        return None
    m, lo, hi = mean_interval(d)
    return {"mean": m, "low": lo, "high": hi, "n": len(d), "signs": "".join("+-"[x < 0] for x in d)}


def screen_summary(results: list[dict], scale: Scale) -> dict:
    """The lever screen: each lever's out-of-fold figures pooled over folds and seeds, its accuracy minus the
    config's fold by fold (mean over seeds; mean, 95 % t interval over the folds, the sign in each), and the lever
    with the highest pooled accuracy."""
    by: dict[str, dict[int, list[dict]]] = {}
    for r in results:
        by.setdefault(r["unit"].split("/")[1].rsplit("-fold", 1)[0], {}).setdefault(r["fold"], []).append(r)
    base = by.get("base", {})
    rows = {}
    for name, folds in by.items():
        rs = [r for k in sorted(folds) for r in folds[k]]
        rows[name] = {"overrides": rs[0]["overrides"], **pooled(rs), "units": [r["unit"] for r in rs],
                      "minus_base": None if name == "base" else by_fold_difference(folds, base)}
    levers = [k for k in rows if k not in YARDSTICKS]
    winner = max(levers, key=lambda k: (rows[k]["accuracy"], rows[k]["sensitivity"].get(MINORITY) or 0), default=None)
    return {"backbone": scale.backbones[0], "folds": scale.screen_folds, "candidates": rows, "winner": winner,
            "winner_sets": " ".join(f"--set {o}" for o in rows[winner]["overrides"]) if winner else None,
            "base_minus_usual": by_fold_difference(base, by.get("usual", {})),
            "usual_time_minus_usual": by_fold_difference(by.get("usual-time", {}), by.get("usual", {}))}


def stage_summaries(results: dict, scale: Scale) -> dict:
    out = {}
    pick = lambda prefix: [r for n, r in results.items() if n.startswith(prefix)]  # noqa: E731
    if pick("levers/"):
        out["levers"] = screen_summary(pick("levers/"), scale)
    if pick("recipe/"):
        rows = {}
        for bb in scale.backbones:
            ours, usual = pick(f"recipe/ours-{bb}-"), pick(f"recipe/usual-{bb}-")
            if ours or usual:
                rows[bb] = {"ours": side(ours), "usual": side(usual), "ours_minus_usual": paired(ours, usual),
                            "quoted_usual": QUOTED_USUAL.get(bb), "units": [r["unit"] for r in ours + usual]}
        scored = [bb for bb in rows if rows[bb]["ours"]]
        best = max(scored, key=lambda bb: rows[bb]["ours"]["accuracy"], default=None)
        targets = None
        if best:
            b = rows[best]["ours"]
            targets = {"best_backbone": best, "accuracy": b["accuracy"],
                       "accuracy_met": b["accuracy"] >= TARGET_ACCURACY,
                       "covid_sensitivity": b["sensitivity"].get(MINORITY),
                       "covid_sensitivity_met": (b["sensitivity"].get(MINORITY) or 0) >= TARGET_COVID_SENSITIVITY,
                       "above_quoted_usual": {bb: rows[bb]["ours"]["accuracy"] > rows[bb]["quoted_usual"]
                                             for bb in scored if rows[bb]["quoted_usual"] is not None},
                       "above_measured_usual": {bb: rows[bb]["ours_minus_usual"]["mean"] > 0
                                                for bb in scored if rows[bb]["ours_minus_usual"]}}
        out["recipe"] = {"backbones": rows, "targets": targets}
    gan = {k: results[f"gan/{k}"] for k in ("train", "eval", "tstr") if f"gan/{k}" in results}
    if gan:
        out["gan"] = gan
    ablation = {n.split("/")[1]: r for n, r in results.items() if n.startswith("ablation/")}
    if ablation:
        out["ablation"] = ablation
    audit = {n: results[n] for n in ("lungseg", "audit/default", "audit/lung-crop") if n in results}
    if audit:
        out["audit"] = audit
    if "crossval" in results:
        out["crossval"] = results["crossval"]
    return out


# ---------------------------------------------------------------- summary.md
def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def seconds(x) -> str:
    return "–" if x is None else f"{x:.0f}"


def ci(pair) -> str:
    return f" [{pct(pair[0])}, {pct(pair[1])}]" if pair else ""


def interval(v: dict) -> str:
    """An audit figure ``{"value", "ci"}`` in percent with its interval."""
    return "–" if v["value"] is None else pct(v["value"]) + ci(v["ci"])


def diff(d: dict | None) -> str:
    if not d:
        return "–"
    bounds = f" [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]" if d["low"] is not None else ""
    return f"{100 * d['mean']:+.1f}{bounds} (n={d['n']})"


def markdown(s: dict) -> str:
    st = s["stages"]
    lines = [f"# cxr3 evidence suite, scale `{s['scale']}`", "",
             f"{s['date']} · GPU {s['gpu'] or 'none'} · CPU {s['cpu']}, {s['cores']} cores · torch {s['torch']} · "
             f"Python {s['python']} · commit `{s['commit'] or 'unknown'}` · data `{s['data']}`", "",
             f"Command: `{s['command']}`", "",
             "Accuracy and sensitivities in %; intervals are 95 % (per seed: bootstrap over patients; "
             "differences: Student t over seeds, none below 3 seeds). Every unit's commands, date, GPU and "
             "commit are listed at the end and in summary.json."]
    if s["stopped"]:
        lines += ["", f"**Stopped: {s['stopped']}.** Remaining: {', '.join(s['remaining']) or 'none'}."]
    notes = [f"- {what} {u}: {why}" for what in ("skipped", "failed") for u, why in s[what].items()]
    if notes:
        lines += ["", *notes]
    if "levers" in st:
        lv = st["levers"]
        lines += ["", f"## levers: one change at a time on {lv['backbone']}, {lv['folds']} folds of the training split",
                  "", "| candidate | overrides | folds | seeds | films | accuracy (pooled) | covid sens. | "
                  "covid sens. at the val. threshold | − base, by fold (signs) | train s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in lv["candidates"].items():
            signs = f" {r['minus_base']['signs']}" if r["minus_base"] else ""
            lines.append(f"| {name} | {', '.join(r['overrides']) or '(the config)'} | {len(r['folds'])} | "
                         f"{len(r['seeds'])} | {r['n']} | "
                         f"{pct(r['accuracy'])} | {pct(r['sensitivity'].get(MINORITY))} | {pct(r.get('at_threshold'))} | "
                         f"{diff(r['minus_base'])}"
                         f"{signs} | {r['train_s']:.0f} |")
        lines += [] if lv["winner"] is None else ["", f"Highest pooled out-of-fold accuracy: **{lv['winner']}**: "
                  + (f"`{lv['winner_sets']}`" if lv["winner_sets"] else "the config as it is")
                  + ". Chosen on the training split's folds only: the data's validation and test splits took no part, "
                  "so the recipe stage's test-split figures of the chosen config are evidence the choice never saw."]
        if lv["base_minus_usual"]:
            lines += ["", f"The config as it is against the usual recipe on the same folds (row `usual`: it chooses its "
                      f"epoch on the fold it is scored on): **{diff(lv['base_minus_usual'])}** "
                      f"({lv['base_minus_usual']['signs']}) points of accuracy."]
        if lv.get("usual_time_minus_usual"):
            lines += ["", f"The config given the usual recipe's measured time on each fold (row `usual-time`) against "
                      f"the usual recipe: **{diff(lv['usual_time_minus_usual'])}** "
                      f"({lv['usual_time_minus_usual']['signs']}) points of accuracy."]
    if "recipe" in st:
        rows, t = st["recipe"]["backbones"], st["recipe"]["targets"]
        split = next((r["ours"]["split"] for r in rows.values() if r["ours"]), "val")
        lines += ["", f"## recipe: our defaults against the usual recipe, {split} split", "",
                  "| backbone | ours: accuracy per seed [CI] | ours mean | covid | normal | pneumonia | usual mean | "
                  "usual covid | ours − usual | quoted usual | s ours / usual |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for bb, r in rows.items():
            o, u = r["ours"] or {}, r["usual"] or {}
            per_seed = "; ".join(f"{pct(a)}{ci(c)}" for a, c in o.get("accuracy_per_seed", []))
            sens = o.get("sensitivity", {})
            lines.append(f"| {bb} | {per_seed or '–'} | {pct(o.get('accuracy'))} | {pct(sens.get('covid'))} | "
                         f"{pct(sens.get('normal'))} | {pct(sens.get('pneumonia'))} | {pct(u.get('accuracy'))} | "
                         f"{pct(u.get('sensitivity', {}).get('covid'))} | {diff(r['ours_minus_usual'])} | "
                         f"{pct(r['quoted_usual'])} | {seconds(o.get('train_s'))} / {seconds(u.get('train_s'))} |")
        if t:
            lines += ["", f"Targets: best backbone {t['best_backbone']}: accuracy {pct(t['accuracy'])} "
                      f"(≥ 90: {'met' if t['accuracy_met'] else 'not met'}), covid sensitivity "
                      f"{pct(t['covid_sensitivity'])} (≥ 90: {'met' if t['covid_sensitivity_met'] else 'not met'}). "
                      "Above the quoted usual figure: " + (", ".join(f"{bb} {'yes' if v else 'no'}" for bb, v in
                                                                     t["above_quoted_usual"].items()) or "–")
                      + ". Above the usual recipe measured here: " + (", ".join(
                          f"{bb} {'yes' if v else 'no'}" for bb, v in t["above_measured_usual"].items()) or "not run")
                      + "." + (" Both sides pick their best epoch on the validation split they are scored on, "
                               "so both figures are optimistic in the same way." if split == "val" else "")]
        sources = sorted({src for r in rows.values() for x in (r["ours"], r["usual"]) if x for src in x["per_source"]})
        if sources:
            lines += ["", "Accuracy per source, ours / usual:", "", "| backbone | " + " | ".join(sources) + " |",
                      "|---|" + "---|" * len(sources)]
            for bb, r in rows.items():
                o, u = (r["ours"] or {}).get("per_source", {}), (r["usual"] or {}).get("per_source", {})
                lines.append(f"| {bb} | " + " | ".join(f"{pct(o.get(x))} / {pct(u.get(x))}" for x in sources) + " |")
    if "gan" in st:
        g = st["gan"]
        lines += ["", "## gan: CycleGAN normal → covid", ""]
        if "train" in g:
            tr = g["train"]
            images = " and ".join(f"{n} {c}" for c, n in tr["train_images"].items())
            lines.append(f"- gan-train: {tr['steps']} steps at {tr['size']}² on {images} training images in "
                         f"{tr['train_s']:.0f} s: {tr['it_s']:.2f} it/s over the wall time (start-up included)")
        if "eval" in g:
            e = g["eval"]
            called = "–" if e["share_called_b"] is None else pct(e["share_called_b"])
            lines.append(f"- gan-eval on the {e['split']} split ({e['n_translated']} translated, {e['n_real_b']} real "
                         f"covid, features {e['features']}): Fréchet distance {e['fd']:.4g}, KID {e['kid']:.4g} ± "
                         f"{e['kid_std']:.2g}, SSIM source vs translation {e['ssim_mean']:.3f}, called covid {called} %")
        if "tstr" in g:
            x = g["tstr"]
            lines.append(f"- TSTR ({x['n_synthetic']} synthetic covid replace the real ones in training; "
                         f"{x['backbone']}): accuracy {pct(x['accuracy'])}{ci(x['accuracy_ci'])}, covid sensitivity "
                         f"{pct(x['sensitivity'].get(MINORITY))}; trained on real: {pct(x['train_real_accuracy'])}, "
                         f"{pct(x['train_real_sensitivity'].get(MINORITY))}. Grid: `{x['grid']}`")
    for name, r in st.get("ablation", {}).items():
        lines += ["", f"## ablation {name}: {r['backbone']}, seeds {r['seeds']}", "", r["table"].strip()]
    if "audit" in st:
        a = st["audit"]
        lines += ["", "## lung segmenter and audit", ""]
        if "lungseg" in a:
            ls = a["lungseg"]
            lines.append(f"- lungseg-train: {ls['split']} Dice {ls['dice']:.3f} [{ls['dice_ci'][0]:.3f}, "
                         f"{ls['dice_ci'][1]:.3f}] at {ls['size']}² over {ls['n']} images")
        rows = [(key, a[key]) for key in ("audit/default", "audit/lung-crop") if key in a]
        if rows:
            lines += ["", "| classifier | input | accuracy | lungs hidden | only lungs | CAM mass in lungs | "
                      "lung area | source probe − majority |", "|---|---|---|---|---|---|---|---|"]
            for key, r in rows:
                probe = r["source_probe"]
                lines.append(f"| {key} | {r['input']} | " + " | ".join(
                    interval(v) for v in (*(r["accuracy"][k] for k in ("plain", "hidden", "kept")),
                                          r["cam_in_lungs"], r["lung_area"]))
                    + f" | {'–' if 'skipped' in probe else interval(probe['accuracy_minus_majority'])} |")
            for key, r in rows:
                lines += ["", f"{key} (`{r['report']}`): " + " ".join(r["sentences"].values())]
    if "crossval" in st:
        report = st["crossval"]["report"].strip().splitlines()
        lines += ["", f"## crossval: {report[0].lstrip('# ')}", *report[1:]]
    lines += ["", "## Commands", ""]
    for name, r in s["units"].items():
        lines.append(f"- **{name}** ({r['finished']}, {r['seconds']:.0f} s, GPU {r['gpu'] or 'none'}, torch "
                     f"{r['torch']}, commit `{r['commit'] or 'unknown'}`): " + "; ".join(f"`{c}`" for c in r["commands"]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="The module docstring gives the "
                                 "command sequence on a GPU machine.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data", required=True, help="cxr3 folder (manifest.csv with train/val splits)")
    ap.add_argument("--out", required=True, help="working folder: results, logs, runs, cache")
    ap.add_argument("--usual", help="usual_accuracy.py, run from its path (not part of the project)")
    ap.add_argument("--lungs-data", help="lung image/mask pairs for lungseg-train (stage audit; levers' lung crop)")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=["recipe", "gan", "ablation", "audit"])
    ap.add_argument("--levers", nargs="+", metavar="NAME",
                    help="screen only these levers (stage levers; default: all of the scale's, lung-crop with --lungs-data)")
    ap.add_argument("--screen-seeds", type=int, default=1, metavar="N",
                    help="stage levers: every candidate with the scale's first N seeds on each fold (paired by seed)")
    ap.add_argument("--budget-s", type=float, help="stop before the work would run past this many seconds")
    ap.add_argument("--scale", choices=sorted(SCALES), default="gpu")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--full-ablation", action="store_true", help="also the ablation with all covid training data")
    ap.add_argument("--report", help="folder that receives a copy of the summary, results, logs and figures after "
                                     "every unit (a folder kept after a GPU machine is returned)")
    ap.add_argument("--commit", help="the commit to record when git cannot tell (a copy of the tree without .git)")
    ap.add_argument("--results-from", action="append", default=[], metavar="SUMMARY_JSON",
                    help="an earlier call's summary.json (from --report, on another machine, say): its finished units "
                         "count as done, except runs another unit needs that are not here (repeatable)")
    a = ap.parse_args(argv)
    for flag, path in (("--data", a.data), ("--usual", a.usual), ("--lungs-data", a.lungs_data),
                       *(("--results-from", p) for p in a.results_from)):
        if path and not Path(path).exists():
            print(f"error: {flag} {path}: no such file or folder", file=sys.stderr)
            return 2
    known = [name for name, _ in SCALES[a.scale].levers] + ["lung-crop", *YARDSTICKS]
    unknown = sorted(set(a.levers or ()) - set(known))
    if unknown:
        print(f"error: --levers {' '.join(unknown)}: no such lever at scale {a.scale}; choose from {', '.join(known)}",
              file=sys.stderr)
        return 2
    if "lung-crop" in (a.levers or ()) and not a.lungs_data:
        print("error: --levers lung-crop needs --lungs-data (lung image/mask pairs to train the segmenter on)",
              file=sys.stderr)
        return 2
    seeds = SCALES[a.scale].seeds
    if not 1 <= a.screen_seeds <= len(seeds):
        print(f"error: --screen-seeds {a.screen_seeds}: scale {a.scale} has {len(seeds)} seed(s); "
              f"give 1 to {len(seeds)}", file=sys.stderr)
        return 2
    for name in YARDSTICKS:
        if name in (a.levers or ()) and not a.usual:
            print(f"error: --levers {name} needs --usual (the usual recipe's script, usual_accuracy.py)", file=sys.stderr)
            return 2
    suite = Suite(a)
    settings = {"scale": a.scale, "data": str(suite.data)}
    earlier = read_json(suite.out / "suite.json")
    if earlier is not None and earlier != settings:
        print(f"error: {suite.out} holds a suite run with other settings ({earlier}); give another --out", file=sys.stderr)
        return 2
    write_json(suite.out / "suite.json", settings)

    def request_stop(signum, frame):
        if suite.stop_requested:
            raise KeyboardInterrupt
        suite.stop_requested = True
    handlers = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for summary in a.results_from:
            suite.take_results(Path(summary))
        suite.run(suite.plan([s for s in STAGES if s in a.stages]))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in handlers.items():  # as they were, for a caller that runs main() in its own process
            signal.signal(sig, handler)
    print(f"wrote {suite.out / 'summary.md'} and summary.json" + (f", copied to {a.report}" if a.report else ""))
    if suite.stopped:
        return INTERRUPTED if suite.stop_requested else BUDGET_SPENT
    return 1 if suite.failed else 0


if __name__ == "__main__":
    sys.exit(main())
