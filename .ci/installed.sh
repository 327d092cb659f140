#!/usr/bin/env bash
# CI, after the tests: the toolkit as users install it.
#
# Builds the wheel from the working tree's files (those git tracks or would track, copied aside, so no stale
# build/ folder of the checkout leaks into it), installs it non-editable into a fresh virtual environment that
# sees this Python's packages (--system-site-packages: torch is not installed again; --no-index: nothing is
# downloaded), checks that what the environment imports (cli, the packages, the shipped configs) lies inside it,
# then runs a short chain from an unrelated folder on tiny phantoms: phantoms -> classify-train -> evaluate ->
# predict. The same classify-train run from the source tree must resolve the same config.yaml, byte for byte.
#
#   .ci/installed.sh            (PYTHON=... to build and compare with another interpreter; KEEP=1 keeps the folder)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cxrgan-installed.XXXXXX")"
[ "${KEEP:-0}" = 1 ] && echo "installed.sh: working in $WORK (kept)" || trap 'rm -rf "$WORK"' EXIT
fail() { echo "installed.sh: FAILED: $*" >&2; exit 1; }
step() { echo "installed.sh: $* ($((SECONDS - START)) s)"; }
START=$SECONDS
export PYTHONNOUSERSITE=1 OMP_NUM_THREADS=1
unset PYTHONPATH

step "building the wheel"
git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1 || fail "$REPO is not a git checkout: the files to build are those git tracks"
mkdir "$WORK/src"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard) | "$PYTHON" -c '
import shutil, sys
from pathlib import Path
repo, dest = Path(sys.argv[1]), Path(sys.argv[2])
for name in sys.stdin.buffer.read().decode().split("\0"):
    if name and (repo / name).is_file():  # a file deleted but not yet staged is not there
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, dest / name)
' "$REPO" "$WORK/src"
# setuptools of this Python builds it (no isolated build environment to download)
"$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$WORK/dist" "$WORK/src" >/dev/null
WHEEL="$(ls "$WORK"/dist/cxrgan-*.whl)"

step "installing $(basename "$WHEEL") into a fresh virtual environment"
# Without pip of its own (the setuptools a venv seeds would shadow the newer one torch requires): the pip it
# sees among this Python's packages installs into it.
"$PYTHON" -m venv --system-site-packages --without-pip "$WORK/venv"
VENV="$WORK/venv"
"$VENV/bin/python" -m pip install --quiet --no-index "$WHEEL" >/dev/null 2>&1 \
    || "$VENV/bin/python" -m pip install --no-index "$WHEEL"  # again, to show why
[ -x "$VENV/bin/cxrgan" ] || fail "the wheel put no cxrgan command in $VENV/bin"

mkdir "$WORK/installed" "$WORK/source"
cd "$WORK/installed"  # unrelated to the checkout: nothing may come from there
step "checking that the environment imports only itself"
"$VENV/bin/python" - "$VENV" "$REPO" <<'EOF'
import importlib, sys
from pathlib import Path
venv, repo = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
from foundation.config import config_source, load_config, shipped_config, shipped_configs
import cli
where = {name: Path(importlib.import_module(name).__file__).resolve()
         for name in ("cli", "augment", "classifier", "cyclegan", "lungs", "audit", "cxrgan_configs")}
where["shipped configs"] = Path(str(shipped_configs())).resolve()
outside = {name: str(path) for name, path in where.items() if not path.is_relative_to(venv) or path.is_relative_to(repo)}
if outside:
    sys.exit(f"installed.sh: FAILED: imported from outside {venv}: {outside}")
from classifier.config import ClassifierConfig
from cyclegan import GanConfig
from lungs import LungsegConfig
classes = {"classify-train": ClassifierConfig, "gan-train": GanConfig, "lungseg-train": LungsegConfig}
repo_configs = {p.name for p in (repo / "configs").glob("*.yaml")}
named = {name for pair in cli.DEFAULT_CONFIGS.values() for name in pair if name} | set(cli.PRESETS.values())
shipped = {p.name for p in shipped_configs().iterdir() if p.name.endswith(".yaml")}
if shipped != repo_configs or not named <= shipped:
    sys.exit(f"installed.sh: FAILED: the wheel ships {sorted(shipped)}, configs/ holds {sorted(repo_configs)}, "
             f"the commands name {sorted(named)}")
for name in sorted(shipped):  # each loads from the wheel, against the dataclasses of the command it is named for
    [cls] = [c for command, c in classes.items() if name.startswith(command)]
    cfg = load_config(cls, shipped_config(name))
    assert Path(config_source(cfg)["file"]).is_relative_to(venv), config_source(cfg)
EOF
version="$("$VENV/bin/cxrgan" --version)"
case "$version" in
    "cxrgan "*"running from $VENV/"*) ;;
    *) fail "cxrgan --version says '$version', not a run from $VENV" ;;
esac

# the same tiny classifier for both: a shallow CNN at 32², one epoch; everything else from configs/classify-train.yaml
TINY=(--device cpu --seed 0 --set model.backbone=shallow --set model.width=8 --set data.size=32
      --set model.input_size=32 --set train.epochs=1 --set train.batch_size=8 --set train.tensorboard=false
      --set data.cache_dir=cache --set eval.bootstrap=20)

step "chain with the installed cxrgan: phantoms, classify-train, evaluate, predict"
"$VENV/bin/cxrgan" phantoms --out data --n-per-class 8 --size 32 >/dev/null
"$VENV/bin/cxrgan" classify-train --data data --out runs "${TINY[@]}" > train.log 2>&1 || { cat train.log; fail "classify-train"; }
grep -q "evaluate with: cxrgan evaluate --checkpoint" train.log || { cat train.log; fail "the hint does not name cxrgan"; }
RUN="$(ls -d runs/classifier/*/)"
"$VENV/bin/cxrgan" evaluate --data data --out runs "${TINY[@]}" > evaluate.log 2>&1 || { cat evaluate.log; fail "evaluate"; }
[ -f "$RUN/eval/metrics.json" ] || fail "evaluate wrote no $RUN/eval/metrics.json"
"$VENV/bin/cxrgan" predict data/covid --out runs --device cpu > predict.log 2>&1 || { cat predict.log; fail "predict"; }
grep -q "8 images scored" predict.log || { cat predict.log; fail "predict did not score the 8 covid phantoms"; }

step "the same classify-train from the source tree"
cd "$WORK/source"
"$PYTHON" "$REPO/cli.py" phantoms --out data --n-per-class 8 --size 32 >/dev/null
"$PYTHON" "$REPO/cli.py" classify-train --data data --out runs "${TINY[@]}" > train.log 2>&1 \
    || { cat train.log; fail "classify-train from the source tree"; }
SOURCE_RUN="$(ls -d runs/classifier/*/)"
diff -u "$WORK/installed/$RUN/config.yaml" "$SOURCE_RUN/config.yaml" \
    || fail "the installed package resolved another config.yaml than the source tree (diff above)"
"$PYTHON" - "$WORK/installed/$RUN/run.json" "$SOURCE_RUN/run.json" "$VENV" "$REPO" <<'EOF'
import json, sys
from pathlib import Path
installed, source = (json.loads(Path(p).read_text()) for p in sys.argv[1:3])
venv, repo = Path(sys.argv[3]).resolve(), Path(sys.argv[4]).resolve()
files = Path(installed["config_file"]), Path(source["config_file"])
assert files[0].name == files[1].name == "classify-train.yaml", files
assert files[0].resolve().is_relative_to(venv) and files[1].resolve() == repo / "configs" / "classify-train.yaml", files
assert installed["config_overrides"] == source["config_overrides"], (installed["config_overrides"], source["config_overrides"])
assert installed["git_commit"] is None and installed["versions"]["cxrgan"] == source["versions"]["cxrgan"]
EOF
step "passed: the wheel installs, imports only itself, and resolves the source tree's config"
