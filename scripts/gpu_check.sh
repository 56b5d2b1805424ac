#!/usr/bin/env bash
# GPU verification on a machine with an NVIDIA GPU, torch installed and no network (made for one
# H200 lent for 15 minutes; every budget below is for that machine, the total is under 8 minutes).
#   bash scripts/gpu_check.sh              build, CUDA tests, CPU tests, GPU benchmarks
#   bash scripts/gpu_check.sh --sanitize   build, CUDA tests, then compute-sanitizer memcheck and
#                                          racecheck on the small `sanitize` subset (instead of the
#                                          CPU tests and benchmarks, to stay in the window)
#   bash scripts/gpu_check.sh --cuda       build, CUDA tests, GPU benchmarks (no CPU tests: the
#                                          shortest full check of the kernels, ~5 min)
#   bash scripts/gpu_check.sh --dry-run    print the steps and their time budgets; runs nothing
# Each step runs under a timeout (1.5x its budget), writes <step>.log and <step>.json (and pytest's
# <step>.xml) to $OUT (default gpu_check_out/); a failed step does not stop the later ones. The
# script ends with one table (step, status, seconds) and exits non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=full DRY=0
for arg in "$@"; do
  case $arg in
    --sanitize) MODE=sanitize ;;
    --cuda) MODE=cuda ;;
    --dry-run) DRY=1 ;;
    *) echo "usage: $0 [--sanitize | --cuda] [--dry-run]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
DEST=${OUT:-gpu_check_out}
mkdir -p "$DEST"
PYTEST="$PY -m pytest -q -p no:cacheprovider -rfEs"
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
# The sanitizer subset: the tests marked `sanitize` (small cases of every kernel and branch), CUDA only.
SAN_TESTS="tests/test_box_iou.py tests/test_batched_nms.py tests/test_detect.py tests/test_match_priors.py"
SAN_TESTS+=" tests/test_conv_bn_act.py tests/test_batch_norm_relu.py"
RACE_TESTS="tests/test_batched_nms.py tests/test_detect.py tests/test_match_priors.py"

# name | budget (s) | command. Budgets: CPU-side times of the same work on this repo's 2-core
# machine, scaled to the H200 host (16 cores), plus the GPU part (see docs/DESIGN.md).
STEPS=(
  "env|10|nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv && $PY -c 'import torch;print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'"
  "build|150|FORCE_CUDA=1 MAX_JOBS=\$(nproc) $PY setup.py build_ext --inplace"
  "build_info|15|$PY -c \"import scratchdet,json;i=scratchdet.ops.build_info();print(json.dumps(i));assert i['cuda_kernels']\""
  "tests_cuda|100|$PYTEST tests -m cuda --junitxml=$DEST/tests_cuda.xml"
)
if [ $MODE = full ]; then
  STEPS+=("tests_cpu|150|$PYTEST tests -m 'not cuda' --deselect tests/test_train.py --junitxml=$DEST/tests_cpu.xml")
fi
if [ $MODE != sanitize ]; then
  STEPS+=(
    "bench_cuda|45|$PY -m pytest benchmarks -q -m cuda -p no:cacheprovider --benchmark-json $DEST/bench_cuda.json --benchmark-min-rounds=5 --benchmark-max-time=0.5 --benchmark-columns=min,median,mean"
  )
else
  STEPS+=(
    "memcheck|120|$SAN --tool memcheck --error-exitcode 1 $PYTEST -m 'cuda and sanitize' $SAN_TESTS --junitxml=$DEST/memcheck.xml"
    "racecheck|75|$SAN --tool racecheck --error-exitcode 1 $PYTEST -m 'cuda and sanitize' -k 'not large_input' $RACE_TESTS --junitxml=$DEST/racecheck.xml"
  )
fi

if [ $DRY = 1 ]; then
  total=0
  printf "%-11s %7s %8s  %s\n" step budget timeout command
  for s in "${STEPS[@]}"; do
    IFS='|' read -r name budget cmd <<< "$s"
    total=$((total + budget))
    printf "%-11s %6ss %7ss  %s\n" "$name" "$budget" "$((budget * 3 / 2))" "$cmd"
  done
  echo "total budget: ${total}s ($((total / 60)) min $((total % 60)) s), mode $MODE"
  if [ $MODE = sanitize ]; then
    echo "sanitizer subset (-m 'cuda and sanitize'):"
    $PY -m pytest --collect-only -q -p no:cacheprovider -m sanitize $SAN_TESTS 2>/dev/null | grep '\[cuda\|cuda' | grep -v '\[cpu' | sed 's/^/  /'
  fi
  exit 0
fi

# The build is in place (setup.py picks the visible GPU's arch unless TORCH_CUDA_ARCH_LIST is set);
# the tests import the package from the repository root, so nothing is pip-installed (a pip -e
# install would compile every kernel a second time, outside any step's clock).
export PYTHONUNBUFFERED=1
failed=0
for s in "${STEPS[@]}"; do
  IFS='|' read -r name budget cmd <<< "$s"
  limit=$((budget * 3 / 2))
  echo "=== $name (budget ${budget}s, timeout ${limit}s): $cmd"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" bash -c "$cmd" > "$DEST/$name.log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - t0 ))
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    *) status=failed ;;
  esac
  [ $status = ok ] || failed=1
  xml=""; [ -f "$DEST/$name.xml" ] && xml="$name.xml"
  printf '{"step": "%s", "status": "%s", "rc": %d, "seconds": %d, "budget_s": %d, "timeout_s": %d, "log": "%s.log", "junit": "%s"}\n' \
    "$name" "$status" "$rc" "$secs" "$budget" "$limit" "$name" "$xml" > "$DEST/$name.json"
  tail -n 3 "$DEST/$name.log"
done
echo
$PY scripts/gpu_check_report.py "$DEST" | tee "$DEST/summary.txt"
exit $failed
