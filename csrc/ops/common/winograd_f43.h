#pragma once
// Winograd F(4x4, 3x3) (Lavin & Gray, 2016; interpolation points 0, +-1, +-2, inf):
//   Y = A^T [ (G g G^T) . (B^T d B) ] A
// for a 6x6 input tile d, a 3x3 filter g and a 4x4 output tile Y. A 3x3 stride-1 conv
// then costs 36 multiplies per 4x4 outputs instead of 144.
//
// The transforms are templates over the value type: the CPU kernel runs them on
// GCC vectors of 8 channels, the tests on float and double, a CUDA kernel would on
// float. Input and output transforms use only small integers, so they are exact up
// to rounding of the sums; the filter transform divides by 6, 12 and 24 and is best
// done once, in double (winograd_f43_pack does).
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

constexpr int kWinoTile = 6;   // input tile side (m + r - 1)
constexpr int kWinoOut = 4;    // output tile side (m)

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

// v = B^T d B for a 6x6 tile, both row-major.
template <typename T>
SD_WINO_INLINE void winograd_f43_input_transform(const T* d, T* v) {
  T t[36];
  for (int c = 0; c < 6; ++c)  // columns: t = B^T d
    winograd_f43_input_1d(d[c], d[6 + c], d[12 + c], d[18 + c], d[24 + c], d[30 + c], t + c, 6);
  for (int r = 0; r < 6; ++r)  // rows: v = t B
    winograd_f43_input_1d(t[6 * r], t[6 * r + 1], t[6 * r + 2], t[6 * r + 3], t[6 * r + 4],
                          t[6 * r + 5], v + 6 * r, 1);
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

// y = A^T m A: a 6x6 tile of products to a 4x4 output tile, both row-major.
template <typename T>
SD_WINO_INLINE void winograd_f43_output_transform(const T* m, T* y) {
  T t[24];  // 4 rows x 6 columns
  for (int c = 0; c < 6; ++c)
    winograd_f43_output_1d(m[c], m[6 + c], m[12 + c], m[18 + c], m[24 + c], m[30 + c], t + c, 6);
  for (int r = 0; r < 4; ++r)
    winograd_f43_output_1d(t[6 * r], t[6 * r + 1], t[6 * r + 2], t[6 * r + 3], t[6 * r + 4],
                           t[6 * r + 5], y + 4 * r, 1);
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

// u = G g G^T: a 3x3 filter (row-major) to its 6x6 transform (row-major).
template <typename T>
SD_WINO_INLINE void winograd_f43_filter_transform(const T* g, T* u) {
  T t[18];  // 6 rows x 3 columns
  for (int c = 0; c < 3; ++c) winograd_f43_filter_1d(g[c], g[3 + c], g[6 + c], t + c, 3);
  for (int r = 0; r < 6; ++r) winograd_f43_filter_1d(t[3 * r], t[3 * r + 1], t[3 * r + 2], u + 6 * r, 1);
}

}  // namespace scratchdet
