#!/usr/bin/env bash
# Creates .venv (if missing), installs torch/torchvision and the package with its
# compiled extension. Safe to re-run: an up-to-date environment is left as it is.
#   SCRATCHDET_CPU_ONLY=1 to skip the CUDA kernels; TORCH_CUDA_ARCH_LIST to pick GPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  echo "==> installing $TORCH_SPEC (several GB for the CUDA build; a few minutes)"
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q $TORCH_SPEC
fi
"$VENV/bin/python" -m pip install -q ninja numpy pillow matplotlib tqdm pycocotools pyyaml timm \
  pytest pytest-benchmark hypothesis onnx onnxscript onnxruntime openvino
echo "==> building scratchdet and its extension (MAX_JOBS=${MAX_JOBS:-$(nproc)})"
MAX_JOBS=${MAX_JOBS:-$(nproc)} "$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps -e .
"$VENV/bin/python" -c "import scratchdet, json; print(json.dumps(scratchdet.ops.build_info()))"
