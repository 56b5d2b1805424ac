#!/usr/bin/env bash
# GPU verification for a machine with an NVIDIA GPU, torch installed, no network.
#   bash scripts/gpu_check.sh              build for the local GPU, CUDA tests, GPU benchmarks
#   bash scripts/gpu_check.sh --sanitize   also run the CUDA tests under compute-sanitizer
# Logs and JSON go to $OUT (when set) and to gpu_check_out/. Budget: < 8 min on 16 cores.
set -uo pipefail
cd "$(dirname "$0")/.."
SANITIZE=0
[ "${1:-}" = "--sanitize" ] && SANITIZE=1
PY=${PYTHON:-python3}
DEST=gpu_check_out
mkdir -p "$DEST"
export MAX_JOBS=$(nproc)
unset TORCH_CUDA_ARCH_LIST   # build for the GPU that is here
declare -A STATUS
run() {  # run NAME CMD...: logs to $DEST/NAME.log, records the exit status
  local name=$1; shift
  local t0=$(date +%s)
  echo "=== $name: $*"
  "$@" > "$DEST/$name.log" 2>&1
  local rc=$?
  STATUS[$name]="rc=$rc $(( $(date +%s) - t0 ))s"
  tail -n 5 "$DEST/$name.log"
  return $rc
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$DEST/gpu.txt" 2>&1
$PY -c "import torch;print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))" >> "$DEST/gpu.txt" 2>&1
cat "$DEST/gpu.txt"
$PY -m pip install -q --no-deps --no-build-isolation -e . > /dev/null 2>&1 || true  # registers the console script where pip can
run build $PY setup.py build_ext --inplace
run build_info $PY -c "import scratchdet,json;i=scratchdet.ops.build_info();print(json.dumps(i));assert i['cuda_kernels']"
run tests_cuda $PY -m pytest tests -q -m cuda -p no:cacheprovider -rs
run tests_all $PY -m pytest tests -q -x -p no:cacheprovider -rs --deselect tests/test_train.py
run bench_cuda $PY -m pytest benchmarks -q -m cuda -p no:cacheprovider --benchmark-json "$DEST/bench_cuda.json" \
  --benchmark-min-rounds=5 --benchmark-max-time=0.5 --benchmark-columns=min,median,mean
if [ $SANITIZE = 1 ]; then
  SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  run memcheck "$SAN" --tool memcheck --error-exitcode 1 $PY -m pytest tests -q -m cuda -x -p no:cacheprovider
  run racecheck "$SAN" --tool racecheck --error-exitcode 1 $PY -m pytest -q -x -p no:cacheprovider -m cuda \
    tests/test_match_priors.py tests/test_detect.py
fi
[ -n "${OUT:-}" ] && cp -r "$DEST"/. "$OUT"/
echo
echo "===== summary ====="
for k in build build_info tests_cuda tests_all bench_cuda memcheck racecheck; do
  [ -n "${STATUS[$k]:-}" ] && printf "%-12s %s\n" "$k" "${STATUS[$k]}"
done
