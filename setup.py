"""Builds the scratchdet._C extension: CPU kernels always, CUDA kernels when usable.

Environment:
  SCRATCHDET_CPU_ONLY=1   never compile CUDA sources
  FORCE_CUDA=1            compile CUDA sources although no GPU is visible (CI, container builds)
  TORCH_CUDA_ARCH_LIST    e.g. "9.0" or "8.0;9.0+PTX"; defaults to the visible GPU, else a
                          portable list of what nvcc supports
  MAX_JOBS                parallel compile jobs (ninja)
  CUDA_HOME               CUDA toolkit root; found from nvcc or /usr/local/cuda otherwise
"""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _is_toolkit(path):
    return bool(path) and os.path.exists(os.path.join(path, "bin", "nvcc")) and \
        os.path.exists(os.path.join(path, "include", "cuda_runtime.h"))


def _find_cuda_home():
    """CUDA_HOME/CUDA_PATH, else /usr/local/cuda, else the toolkit around nvcc.

    nvcc on PATH may be a wrapper script (e.g. /usr/local/bin/nvcc), so a
    candidate counts only if it holds both bin/nvcc and include/cuda_runtime.h.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if _is_toolkit(os.environ.get(var)):
            return os.environ[var]
    candidates = ["/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for path in candidates:
        if _is_toolkit(path):
            return path
    return None


# torch.utils.cpp_extension reads CUDA_HOME when imported: settle it first.
_cuda_home = _find_cuda_home()
if _cuda_home and os.environ.get("CUDA_HOME") != _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

# A portable default when no GPU is visible: data-centre and consumer parts
# from Turing on, plus PTX for newer ones. Trimmed to what this nvcc supports.
DEFAULT_ARCHS = ["7.5", "8.0", "8.6", "8.9", "9.0"]


def _nvcc_version():
    try:
        out = subprocess.check_output([os.path.join(_cuda_home, "bin", "nvcc"), "--version"], text=True)
    except (OSError, subprocess.CalledProcessError, TypeError):
        return ""
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else ""


def _nvcc_archs():
    try:
        out = subprocess.check_output(
            [os.path.join(_cuda_home, "bin", "nvcc"), "--list-gpu-arch"], text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return {f"{m[:-1]}.{m[-1]}" for m in re.findall(r"compute_(\d+)", out)}


def _cuda_usable():
    """torchvision's rule: CUDA sources are compiled when a GPU is visible or FORCE_CUDA=1.

    Compiling them for GPUs a machine cannot see was most of a 26-minute first setup on
    2 cores; CI keeps compiling them (FORCE_CUDA=1, one architecture) as a build check.
    """
    if _env_flag("SCRATCHDET_CPU_ONLY"):
        return False
    if _env_flag("FORCE_CUDA"):
        return True
    return torch.version.cuda is not None and _cuda_home is not None and torch.cuda.is_available()


def _arch_list():
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        caps = sorted({"%d.%d" % torch.cuda.get_device_capability(i)
                       for i in range(torch.cuda.device_count())})
        return ";".join(caps)
    supported = _nvcc_archs()
    archs = [a for a in DEFAULT_ARCHS if supported is None or a in supported]
    return ";".join(archs) + "+PTX"


def _pip_cuda_includes():
    """Headers of pip's CUDA wheels (nvidia/cu13/include, nvidia/cudnn/include, ...)."""
    dirs = []
    for base in sys.path:
        nv = os.path.join(base, "nvidia")
        if os.path.isdir(nv):
            dirs += sorted(glob.glob(os.path.join(nv, "cu[0-9]*", "include")))
            dirs += sorted(glob.glob(os.path.join(nv, "cudnn", "include")))
            break
    return [d for d in dirs if os.path.isdir(d)]


def _extension():
    with_cuda = _cuda_usable()
    cpu_sources = [os.path.join(CSRC, "scratchdet.cpp"), os.path.join(CSRC, "python_module.cpp")]
    cpu_sources += sorted(glob.glob(os.path.join(CSRC, "ops", "*.cpp")))
    cpu_sources += sorted(glob.glob(os.path.join(CSRC, "ops", "cpu", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join(CSRC, "ops", "cuda", "*.cu")))

    torch_version = torch.__version__.split("+")[0]
    define_macros = [("SCRATCHDET_TORCH_VERSION", f'"{torch_version}"')]
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-Wall", "-Wno-unused-function"]
    extra_link = ["-fopenmp"]
    include_dirs = [os.path.join(ROOT, CSRC)]
    kwargs = dict(name="scratchdet._C", include_dirs=include_dirs, define_macros=define_macros,
                  extra_link_args=extra_link)

    if not with_cuda:
        kwargs["extra_compile_args"] = {"cxx": cxx}
        print("scratchdet: building the CPU kernels only", file=sys.stderr)
        return CppExtension(sources=cpu_sources, **kwargs), False

    arch_list = _arch_list()
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    define_macros += [
        ("SCRATCHDET_WITH_CUDA", None),
        ("SCRATCHDET_CUDA_ARCH_LIST", f'"{arch_list}"'),
        ("SCRATCHDET_CUDA_VERSION", f'"{_nvcc_version() or torch.version.cuda}"'),
    ]
    include_dirs += _pip_cuda_includes()
    nvcc = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "--fmad=false",
            "-DSCRATCHDET_WITH_CUDA", "-Xcompiler", "-fopenmp"]
    kwargs["extra_compile_args"] = {"cxx": cxx, "nvcc": nvcc}
    print(f"scratchdet: building CPU + CUDA kernels (CUDA_HOME={_cuda_home}, "
          f"TORCH_CUDA_ARCH_LIST={arch_list})", file=sys.stderr)
    return CUDAExtension(sources=cpu_sources + cuda_sources, **kwargs), True


ext, _ = _extension()

setup(
    packages=find_packages(include=["scratchdet", "scratchdet.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
