#!/usr/bin/env bash
# One device call, run on the GPU machine from the repo root (see .gpu/kit.sh for the kit):
#   DEADLINE=520 bash .gpu/check.sh        (device run: timeout_s 580, carry [".whl", ".gpudata"])
# ResNet34-UNet at 256 px on the cached pet subset, bf16 autocast + channels_last, batch 128:
#   1. the decoder's float32 upsample (what CUDA autocast does; the code before 63b5448),
#   2. the bf16 upsample (the code now), 3. the same with --profile, 4. batch 256 auto+compile.
# Each step has its own cap and is skipped when the deadline is near; each writes $OUT/<step>.json.
# STEPS="name ..." runs only those steps. tests/test_tools_bench.py runs two of them on CPU, on tiny
# synthetic data (PY=.venv/bin/python SKIP_INSTALL=1 ARGS="--device cpu --repeats 1" SET=...).
set -uo pipefail
cd "$(dirname "$0")/.."
DEADLINE=${DEADLINE:-520}; OUT=${OUT:-bench}; PY=${PY:-python3}; SET=${SET:-}; ARGS=${ARGS:-}
START=$(date +%s); mkdir -p "$OUT"
if [ -z "${SKIP_INSTALL:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null
$PY -c 'import torch; c = torch.cuda.is_available()
print("torch", torch.__version__, torch.cuda.get_device_name() if c else "no cuda")'

COMMON="--spec experiments/resnet34_unet.yaml data.root=.gpudata/pet-sub data.image_size=256
train.channels_last=true data.num_workers=8"
# The code before the change, without checking it out: the decoder's low-precision path switched off.
FLOAT32_UPSAMPLE='import runpy, harness.models.blocks as b
b.AUTOCAST_UPCASTS_RESIZE = ()
runpy.run_module("harness.tools.bench", run_name="__main__")'

step() {  # step NAME CAP_S BATCH SETTING [python args...]
  local name=$1 cap=$2 batch=$3 setting=$4; shift 4
  if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then return; fi
  local left=$((DEADLINE - ($(date +%s) - START)))
  if [ "$left" -lt 40 ]; then echo "== $name: skipped, $left s left"; return; fi
  [ "$cap" -gt "$left" ] && cap=$left
  echo "== $name (cap ${cap} s)"
  # --archs goes last: argparse would read KEY=VALUE overrides after it as architecture names.
  timeout "$cap" "$@" $COMMON train.batch_size="$batch" $SET --settings "$setting" $ARGS \
    --out "$OUT/$name.json" --archs resnet34_unet > /tmp/step.log 2>&1
  echo "rc=$? after $(( $(date +%s) - START )) s"
  grep -E "^arch |^resnet34_unet|Error" /tmp/step.log | tail -n 4
  { echo "== $name"; cat /tmp/step.log; } >> "$OUT/check.log"
}
step b128_float32_upsample 110 128 auto $PY -c "$FLOAT32_UPSAMPLE"
step b128_bf16_upsample 110 128 auto $PY -m harness.tools.bench
step b128_bf16_upsample_profile 130 128 auto $PY -m harness.tools.bench --profile
step b256_bf16_upsample_compile 170 256 auto+compile $PY -m harness.tools.bench
echo "done in $(( $(date +%s) - START )) s"
$PY - "$OUT" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    for r in json.loads(f.read_text())["rows"]:
        print(f"{f.stem:32s} batch {r['batch_size']:4d} {r['train_img_s']:8.1f} img/s  minimal {r['minimal_img_s']:8.1f}"
              f"  wait {r['data_wait_frac']:.1%}  peak {r['peak_mem_gib']} GiB")
PY
