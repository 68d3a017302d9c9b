#!/usr/bin/env bash
# One command for the GPU machine: CUDA correctness tests, then the benchmark (and a profile), with
# logs and JSON under $OUT. Run from anywhere in the checkout:
#
#   scripts/gpu_check.sh                # CUDA: tests (<= 150 s) + benchmarks/bench_gpu.py (<= 270 s)
#   scripts/gpu_check.sh --profile      # ... plus benchmarks/bench_gpu.py --profile (<= 75 s); <= 8 min in all
#   scripts/gpu_check.sh --cpu-smoke    # the same steps on CPU at tiny sizes (checks this script)
#
# On the GPU machine transformer_lens is not installed: the TL 3.9 wheels from scripts/gpu_wheels.sh
# (.whl/tl3/, ignored by git, carried with the run as `.whl`) are installed with
# `pip install --no-index --no-deps --target /tmp/depass_gpu_site` first.
# Environment: OUT (default /tmp/depass_gpu_out), PYTHON (default python3), BENCH_BUDGET_S (default 200),
# WHEELS (default .whl/tl3).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/depass_gpu_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
SMOKE=0 PROFILE=0
for a in "$@"; do
  case $a in
    --cpu-smoke) SMOKE=1 ;;
    --profile) PROFILE=1 ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done
T0=$(date +%s)
log() { echo "[gpu_check $(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/gpu_check.log"; }

# 1. the kit: transformer_lens importable, depass_tl from this checkout
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! $PY -c "import transformer_lens" 2>/dev/null; then
  WHEELS=${WHEELS:-.whl/tl3}
  ls "$WHEELS"/*.whl >/dev/null 2>&1 || { log "no transformer_lens and no $WHEELS/*.whl: run scripts/gpu_wheels.sh"; exit 3; }
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/depass_gpu_site \
    "$WHEELS"/*.whl 2>&1 | tail -3 | tee -a "$OUT/gpu_check.log"
  export PYTHONPATH="$PYTHONPATH:/tmp/depass_gpu_site"
  if ! $PY -c "import datasets" 2>/dev/null; then  # TL only imports names from it
    export PYTHONPATH="$PWD:$PWD/benchmarks/gpu_stubs:/tmp/depass_gpu_site"
    log "datasets wheel does not import here: using benchmarks/gpu_stubs"
  fi
fi
$PY -c "import torch, transformer_lens, depass_tl; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'depass_tl', depass_tl.__file__)" 2>&1 | tee -a "$OUT/gpu_check.log"
command -v nvidia-smi >/dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1

# 2. CUDA correctness subset (completeness in both precisions, chunked == unchunked, TF32 off in exact
#    mode, a cpu + cuda:0 split, the memory budget); --cpu-smoke runs the same tests on the CPU
log "tests/test_cuda.py tests/test_devices.py"
if [ $SMOKE = 1 ]; then export DEPASS_TEST_DEVICE=cpu; fi
# pytest when it (and hypothesis, for tests/conftest.py) imports; else scripts/run_cuda_tests.py's own runner
timeout "${TESTS_TIMEOUT_S:-150}" $PY scripts/run_cuda_tests.py tests/test_cuda.py tests/test_devices.py 2>&1 | tee "$OUT/tests_cuda.log"
TESTS=${PIPESTATUS[0]}
log "tests exit $TESTS"

# 3. the benchmark table (issue 18) and its targets
BENCH_ARGS=(--budget-s "${BENCH_BUDGET_S:-200}")
[ $SMOKE = 1 ] && BENCH_ARGS+=(--cpu-smoke)
log "benchmarks/bench_gpu.py ${BENCH_ARGS[*]}"
OUT="$OUT" timeout 270 $PY benchmarks/bench_gpu.py "${BENCH_ARGS[@]}" 2>&1 | tee "$OUT/bench_gpu.log"
BENCH=${PIPESTATUS[0]}
log "bench exit $BENCH"

# 4. optional profile: kernel launches and top kernels
if [ $PROFILE = 1 ]; then
  PROF_ARGS=(--profile)
  [ $SMOKE = 1 ] && PROF_ARGS+=(--cpu-smoke --profile-lengths 128)
  timeout 75 $PY benchmarks/bench_gpu.py "${PROF_ARGS[@]}" 2>&1 | tee "$OUT/profile_gpu.log"
  log "profile exit ${PIPESTATUS[0]}"
fi
log "done: tests $TESTS, bench $BENCH; logs in $OUT"
[ $TESTS = 0 ] && [ $BENCH = 0 ]
