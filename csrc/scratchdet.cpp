// The scratchdet operator library: the library itself (TORCH_LIBRARY) and _build_info. Each op
// adds its schema, typed API and autocast kernels in csrc/ops/<op>.cpp (TORCH_LIBRARY_FRAGMENT)
// and its kernels in csrc/ops/cpu/<op>_kernel.cpp and csrc/ops/cuda/<op>_kernel.cu
// (TORCH_LIBRARY_IMPL); see scratchdet.h for the layout.
#include "scratchdet.h"

#include <torch/library.h>

#include <string>

#ifndef SCRATCHDET_CUDA_ARCH_LIST
#define SCRATCHDET_CUDA_ARCH_LIST ""
#endif
#ifndef SCRATCHDET_TORCH_VERSION
#define SCRATCHDET_TORCH_VERSION ""
#endif
#ifndef SCRATCHDET_CUDA_VERSION
#define SCRATCHDET_CUDA_VERSION ""
#endif

namespace scratchdet {

// key=value pairs separated by ';', parsed by scratchdet.ops.build_info().
std::string build_info() {
  std::string info = "cpu=1;";
#ifdef SCRATCHDET_WITH_CUDA
  info += "cuda=1;";
#else
  info += "cuda=0;";
#endif
  info += std::string("cuda_arch_list=") + SCRATCHDET_CUDA_ARCH_LIST + ";";
  info += std::string("torch_version=") + SCRATCHDET_TORCH_VERSION + ";";
  info += std::string("cuda_version=") + SCRATCHDET_CUDA_VERSION + ";";
#ifdef _OPENMP
  info += "openmp=1";
#else
  info += "openmp=0";
#endif
  return info;
}

}  // namespace scratchdet

TORCH_LIBRARY(scratchdet, m) {
  m.def("_build_info() -> str", &scratchdet::build_info);
}
