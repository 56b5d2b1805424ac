#!/usr/bin/env bash
# Creates .venv (if missing), installs torch/torchvision and the package with its
# compiled extension. Safe to re-run: an up-to-date environment is left as it is.
#   SCRATCHDET_CPU_ONLY=1 to skip the CUDA kernels; TORCH_CUDA_ARCH_LIST to pick GPUs;
#   SCRATCHDET_REBUILD=1 to rebuild an extension that looks up to date.
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
  pytest pytest-benchmark hypothesis onnx onnxscript onnxruntime openvino nncf ruff import-linter opencv-python-headless
# Rebuild only when the installed extension is missing or older than its sources (pip builds
# editable installs in a fresh temporary folder, so it would recompile everything each time).
so=$(ls scratchdet/_C*.so 2>/dev/null | head -n 1 || true)
if [ -n "$so" ] && [ -z "${SCRATCHDET_REBUILD:-}" ] \
   && [ -z "$(find csrc setup.py pyproject.toml -newer "$so" -print -quit)" ] \
   && "$VENV/bin/python" -c "import scratchdet, sys; sys.exit(not scratchdet.ops.build_info()['extension_loaded'])" 2>/dev/null; then
  echo "==> scratchdet's extension is up to date ($so; SCRATCHDET_REBUILD=1 forces a build)"
else
  echo "==> building scratchdet and its extension (MAX_JOBS=${MAX_JOBS:-$(nproc)})"
  MAX_JOBS=${MAX_JOBS:-$(nproc)} "$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps -e .
fi
"$VENV/bin/python" -c "import scratchdet, json; print(json.dumps(scratchdet.ops.build_info()))"
