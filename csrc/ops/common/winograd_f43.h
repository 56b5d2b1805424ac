#pragma once
// Winograd F(4x4, 3x3) (Lavin & Gray, 2016; interpolation points 0, +-1, +-2, inf):
//   Y = A^T [ (G g G^T) . (B^T d B) ] A
// for a 6x6 input tile d, a 3x3 filter g and a 4x4 output tile Y. A 3x3 stride-1 conv
// then costs 36 multiplies per 4x4 outputs instead of 144.
//
// The 1-D transforms (one row or column of B^T d, A^T m, G g) are templates over the value
// type: the CPU kernel applies each twice, columns then rows, on GCC vectors of 8 or 16
// channels, and on double for the filters; a CUDA kernel would on float. Input and output
// transforms use only small integers, so they are exact up to rounding of the sums; the
// filter transform divides by 6, 12 and 24 and is best done once, in double
// (winograd_f43_pack does).
#include "macros.h"

// Always inlined on the host: the CPU kernel calls these from functions compiled twice (AVX2 and
// baseline clones), and an out-of-line copy would be compiled for the baseline only, taking its
// vectors through memory.
#if defined(__CUDACC__) || defined(__HIPCC__) || !defined(__GNUC__)
#define SD_WINO_INLINE SD_HOST_DEVICE
#else
#define SD_WINO_INLINE inline __attribute__((always_inline))
#endif

namespace scratchdet {

// One row/column of B^T d.
template <typename T>
SD_WINO_INLINE void winograd_f43_input_1d(const T d0, const T d1, const T d2, const T d3, const T d4,
                                          const T d5, T* r, int stride) {
  r[0 * stride] = 4.0f * d0 - 5.0f * d2 + d4;
  r[1 * stride] = d3 + d4 - 4.0f * (d1 + d2);
  r[2 * stride] = d4 - d3 + 4.0f * (d1 - d2);
  r[3 * stride] = d4 - d2 + 2.0f * (d3 - d1);
  r[4 * stride] = d4 - d2 + 2.0f * (d1 - d3);
  r[5 * stride] = 4.0f * d1 - 5.0f * d3 + d5;
}

// One row/column of A^T m.
template <typename T>
SD_WINO_INLINE void winograd_f43_output_1d(const T m0, const T m1, const T m2, const T m3, const T m4,
                                           const T m5, T* o, int stride) {
  const T a = m1 + m2, b = m1 - m2, c = m3 + m4, e = m3 - m4;
  o[0 * stride] = m0 + a + c;
  o[1 * stride] = b + 2.0f * e;
  o[2 * stride] = a + 4.0f * c;
  o[3 * stride] = b + 8.0f * e + m5;
}

// One row/column of G g.
template <typename T>
SD_WINO_INLINE void winograd_f43_filter_1d(const T g0, const T g1, const T g2, T* u, int stride) {
  u[0 * stride] = g0 / T(4);
  u[1 * stride] = -(g0 + g1 + g2) / T(6);
  u[2 * stride] = -(g0 - g1 + g2) / T(6);
  u[3 * stride] = g0 / T(24) + g1 / T(12) + g2 / T(6);
  u[4 * stride] = g0 / T(24) - g1 / T(12) + g2 / T(6);
  u[5 * stride] = g2;
}

}  // namespace scratchdet
