#!/usr/bin/env bash
# The GPU rows of benchmarks/RESULTS.md not measured yet, in parts that each end within 10 minutes on an
# H100 (every command has its own time limit), so that one part fits one command of a machine whose
# commands are limited to that:
#
#   bash benchmarks/gpu_rows.sh PART LOGS
#
# PART 1: the GPU tests; classifier rows at batch 256 and 64 with the evaluation of 500 images; ResNet50
#         with the image cache streamed from the host (train.device_cache_share=0), against the resident row
#         of the same run; predict on a folder of films.
# PART 2: the classifier and the CycleGAN compiled (torch.compile; the warm-up time printed includes it).
# PART 3: the CycleGAN at batch 8 and 32 with both upsampling forms, with profiles.
# LOGS:   a folder that receives one log per command (and the CycleGAN's results.json and profiles).
#
# DATA (default .data/cxr3) and USUAL (default .data/usual_recipe.py) are copies next to the checkout, in a
# git-ignored folder: cxr3 is for research use only, never commit it and delete the copy afterwards.
set -uo pipefail
part=${1:?give the part: 1, 2 or 3}
logs=${2:?give a folder for the logs}
data=${DATA:-.data/cxr3}
usual=${USUAL:-.data/usual_recipe.py}
mkdir -p "$logs"
export PYTHONUNBUFFERED=1

# run NAME SECONDS COMMAND...: the command's output to the terminal and LOGS/NAME.txt, stopped after SECONDS
run() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit} s): $*"
  timeout "$limit" "$@" 2>&1 | tee "$logs/$name.txt"
  echo "== $name: exit ${PIPESTATUS[0]}"
}

case $part in
  1)
    run gpu-tests 150 python3 -m pytest -q -m gpu
    run classifier 200 python3 benchmarks/bench_classifier.py --data "$data" --usual "$usual" --batches 256 64
    run classifier-streamed 60 python3 benchmarks/bench_classifier.py --data "$data" --backbones resnet50 \
      --batches 256 --set train.device_cache_share=0
    run predict 90 python3 benchmarks/bench_predict.py --data "$data" --device cuda
    ;;
  2)
    run classifier-compiled 280 python3 benchmarks/bench_classifier.py --data "$data" --batches 256 \
      --set train.compile=true
    run cyclegan-compiled 280 python3 benchmarks/bench_cyclegan.py --data "$data" --usual "$usual" \
      --out "$logs/cyclegan-compiled" --compile --batches 1 8 --layouts nchw --upsample transposed
    ;;
  3)
    run cyclegan 560 python3 benchmarks/bench_cyclegan.py --data "$data" --usual "$usual" --out "$logs/cyclegan" \
      --batches 8 32 --layouts nchw --upsample transposed subpixel --profile
    ;;
  *)
    echo "unknown part $part: give 1, 2 or 3" >&2
    exit 2
    ;;
esac
