// Which instruction set the CPU kernels' own code paths may use.
//
// The kernels pick their AVX-512 paths (the Winograd transforms on 16 channels at a time, the
// AVX-512 small GEMM) when the CPU has AVX-512F. SCRATCHDET_CPU_ISA=avx2, read once at the first
// call, keeps them to their AVX2 paths on an AVX-512 CPU, so an AVX-512 machine reproduces what an
// AVX2-only one (e.g. AMD Zen 3) computes; with ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2
// and MKL_ENABLE_INSTRUCTIONS=AVX2 the libraries underneath do the same. Unset, "auto" or
// "avx512": what the CPU has. The functions compiled for several targets (target_clones) are still
// picked by the CPU; their AVX-512 and AVX2 clones do the same arithmetic on the 8-float vectors
// the AVX2 path uses (both contract into FMAs), so the results are the AVX2 machine's.
#pragma once

#include <c10/util/Exception.h>

#include <cctype>
#include <cstdlib>
#include <string>

namespace scratchdet {

// True when this process runs the AVX-512 code paths: the CPU has AVX-512F and
// SCRATCHDET_CPU_ISA does not forbid it.
inline bool avx512_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("SCRATCHDET_CPU_ISA");
    std::string isa = env ? env : "";
    for (char& ch : isa) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    TORCH_CHECK(isa.empty() || isa == "auto" || isa == "avx512" || isa == "avx2",
                "scratchdet: SCRATCHDET_CPU_ISA must be auto, avx512 or avx2, got '", env ? env : "", "'");
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();  // may run from a static initializer, before libgcc's own
    return isa != "avx2" && __builtin_cpu_supports("avx512f") != 0;
#else
    return false;
#endif
  }();
  return enabled;
}

// True when the CPU has AVX2 and FMA (every x86-64 CPU of the last decade; the AVX2 kernels' guard).
inline bool avx2_fma_supported() {
  static const bool supported = [] {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0 && __builtin_cpu_supports("fma") != 0;
#else
    return false;
#endif
  }();
  return supported;
}

}  // namespace scratchdet
