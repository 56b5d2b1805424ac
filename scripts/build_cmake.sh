#!/usr/bin/env bash
# Configure, build and test the CMake (LibTorch) library against the torch of $PYTHON, then
# check its installed headers.
# Usage: scripts/build_cmake.sh [BUILD_DIR] [extra cmake args, e.g. -DWITH_CUDA=ON]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
BUILD_DIR=${1:-build-cmake}
shift || true
prefix=$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')
site=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
args=(-DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release)
# A pip torch built with CUDA asks its CMake config for the toolkit and for nvrtc.
cuda_root=${CUDA_HOME:-/usr/local/cuda}
if [ -d "$cuda_root" ]; then
  args+=(-DCUDA_TOOLKIT_ROOT_DIR="$cuda_root" -DCUDAToolkit_ROOT="$cuda_root")
  [ -x "$cuda_root/bin/nvcc" ] && args+=(-DCMAKE_CUDA_COMPILER="$cuda_root/bin/nvcc")
fi
nvrtc=$(ls "$site"/nvidia/cu*/lib/libnvrtc.so.* 2>/dev/null | head -n 1 || true)
[ -n "$nvrtc" ] && args+=(-DCUDA_nvrtc_LIBRARY="$nvrtc")
# Without a GPU, torch's config would try to detect one by compiling a CUDA probe.
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
cmake -S . -B "$BUILD_DIR" "${args[@]}" "$@"
cmake --build "$BUILD_DIR" -j "${MAX_JOBS:-$(nproc)}"
ctest --test-dir "$BUILD_DIR" --output-on-failure
# What `cmake --install` puts in include/ is all a LibTorch user needs: <scratchdet/scratchdet.h> compiles.
rm -rf "$BUILD_DIR/install"
cmake --install "$BUILD_DIR" --prefix "$BUILD_DIR/install" > /dev/null
torch_includes=$("$PYTHON" -c 'from torch.utils.cpp_extension import include_paths; print(" ".join("-I" + p for p in include_paths()))')
echo '#include <scratchdet/scratchdet.h>' |
  "${CXX:-c++}" -std=c++20 -fsyntax-only -I"$BUILD_DIR/install/include" $torch_includes -x c++ -
echo "installed headers: <scratchdet/scratchdet.h> compiles"
