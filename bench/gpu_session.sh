#!/usr/bin/env bash
# One lent GPU, one call (issue 18): the CUDA tests, then every benchmark with --device cuda.
#
# Here, once:   make gpu-carry     (wheels the device image lacks + Fashion-MNIST test files in .gpu/)
# Device tool:  run  carry [".gpu"]  command "bash bench/gpu_session.sh"  timeout_s 540 (the steps: 480 s at most)
# It writes at most 8 files to $OUT (what comes back): log.txt and one JSON per benchmark. Every
# step has its own time limit, so a slow one costs its share, not the session; the sizes are
# chosen to end within ~8 minutes on an H100 (15 minutes of device time per session, starting
# the machine included). Record what comes back in bench/reference/*-cuda-* and NOTES.md.
#
# A dry run on this CPU machine (tiny sizes, cpu device):
#   SMOKE=1 DEVICE=cpu PYTHON=.venv/bin/python bash bench/gpu_session.sh
set -u
OUT=${OUT:-bench/results/gpu}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
SMOKE=${SMOKE:-0}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1

export PYTHONPATH=$PWD/src
if ! "$PYTHON" -c "import kornia, torchattacks" 2>/dev/null; then  # the device image lacks both
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .gpu/wheels/*.whl >>"$LOG" 2>&1 || { echo "wheel install failed (make gpu-carry here first)" >>"$LOG"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD/src
fi
[ -d .gpu/fashion-mnist ] && export ADVREPAIR_FASHION_MNIST=$PWD/.gpu/fashion-mnist

if [ "$SMOKE" = 1 ]; then
  REVERSE="--images 16 --steps 2 --rounds 1"
  ATTACKS="--n-cnn 16 --rounds 1 --models fashion-cnn --attacks fgsm apgd-ce-100"
  RIDE="--batch-sizes 1,8 --chunk-images 8 --chunk-sizes 8 --iterations 2 --sequential-images 2 --rounds 1"
  AUDIT="--images 4 --defenses none --no-reference"
  SUITE="--images 8 --only fgsm pgd"
  DEFENSES="--images 8 --only jpeg median"
else
  REVERSE="--images 512 --rounds 3"
  ATTACKS="--n-cnn 200 --rounds 2 --models fashion-cnn fashion-cnn-standard --attacks apgd-ce-100 autoattack-standard"
  RIDE="--batch-sizes 1,16,64,256 --chunk-images 256 --chunk-sizes 16,64,256 --sequential-images 4 --rounds 2"
  AUDIT="--images 20 --defenses none,jpeg,reverse-attack"
  SUITE="--images 64"
  DEFENSES="--images 64"
fi

step() {  # step SECONDS NAME COMMAND...: run with a time limit, log its tail and status
  local limit=$1 name=$2
  shift 2
  echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s)" >>"$LOG"
  timeout "$limit" "$@" >"/tmp/gpu_session_$name.txt" 2>&1
  local status=$?
  tail -n 40 "/tmp/gpu_session_$name.txt" >>"$LOG"
  echo "=== $name: exit $status" >>"$LOG"
}

{
  date -u
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PYTHON" -c "import torch, kornia; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      'available', torch.cuda.is_available(), 'kornia', kornia.__version__)"
} >>"$LOG" 2>&1

step 90 cuda_tests "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_runtime.py tests/test_device_placement.py
step 60 reverse_attack "$PYTHON" bench/reverse_attack_throughput.py --device "$DEVICE" $REVERSE \
  --out "$OUT/reverse_attack_throughput.json"
step 120 attacks "$PYTHON" bench/attack_throughput.py --device "$DEVICE" $ATTACKS --out "$OUT/attack_throughput.json"
step 60 ride "$PYTHON" bench/ride_throughput.py --device "$DEVICE" $RIDE --out "$OUT/ride_throughput.json"
step 60 audit "$PYTHON" bench/audit_presets.py --device "$DEVICE" $AUDIT --out "$OUT/audit_presets.json"
step 60 attack_suite "$PYTHON" bench/attack_suite_throughput.py --device "$DEVICE" $SUITE \
  --out "$OUT/attack_suite_throughput.json"
step 30 defenses "$PYTHON" bench/defense_throughput.py --device "$DEVICE" $DEFENSES --out "$OUT/defense_throughput.json"
echo "done $(date -u +%H:%M:%S)" >>"$LOG"
