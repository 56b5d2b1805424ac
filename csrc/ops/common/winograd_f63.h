#pragma once
// Winograd F(6x6, 3x3) (Lavin & Gray, 2016; interpolation points 0, 1, -1, 1/2, -1/2, 2, -2, inf, in
// the order of the transform rows):
//   Y = A^T [ (G g G^T) . (B^T d B) ] A
// for an 8x8 input tile d, a 3x3 filter g and a 6x6 output tile Y: 64 multiplies per 36 outputs,
// 1.78 per output where F(4x4, 3x3) needs 2.25 and a direct conv 9. The price is rounding: about
// 1.5x F(4x4, 3x3)'s, 1e-5 of the output's scale per layer in float32 (tests/test_winograd_conv3x3.py).
//
// 1-D transforms, templates over the value type like winograd_f43.h's. The input and output transforms multiply by
// powers of two and by 4.25 and 5.25 (exact in float); the filter transform divides by 9, 45 and
// 90 and is done once, in double (winograd_f63_pack).
#include "winograd_f43.h"  // SD_WINO_INLINE

namespace scratchdet {

// One row/column of B^T d.
template <typename T>
SD_WINO_INLINE void winograd_f63_input_1d(const T d0, const T d1, const T d2, const T d3, const T d4, const T d5,
                                          const T d6, const T d7, T* r, int stride) {
  r[0 * stride] = d0 - d6 + 5.25f * (d4 - d2);
  r[7 * stride] = d7 - d1 + 5.25f * (d3 - d5);
  const T a1 = d2 + d6 - 4.25f * d4, b1 = d1 + d5 - 4.25f * d3;
  r[1 * stride] = a1 + b1;
  r[2 * stride] = a1 - b1;
  const T a2 = d6 + 4.0f * d2 - 5.0f * d4, b2 = 2.0f * d1 - 2.5f * d3 + 0.5f * d5;
  r[3 * stride] = a2 + b2;
  r[4 * stride] = a2 - b2;
  const T a3 = d6 + 0.25f * d2 - 1.25f * d4, b3 = 0.5f * d1 - 2.5f * d3 + 2.0f * d5;
  r[5 * stride] = a3 + b3;
  r[6 * stride] = a3 - b3;
}

// One row/column of A^T m.
template <typename T>
SD_WINO_INLINE void winograd_f63_output_1d(const T m0, const T m1, const T m2, const T m3, const T m4, const T m5,
                                           const T m6, const T m7, T* o, int stride) {
  const T a1 = m1 + m2, b1 = m1 - m2, a2 = m3 + m4, b2 = m3 - m4, a3 = m5 + m6, b3 = m5 - m6;
  o[0 * stride] = m0 + a1 + a2 + a3;
  o[1 * stride] = b1 + 0.5f * b2 + 2.0f * b3;
  o[2 * stride] = a1 + 0.25f * a2 + 4.0f * a3;
  o[3 * stride] = b1 + 0.125f * b2 + 8.0f * b3;
  o[4 * stride] = a1 + 0.0625f * a2 + 16.0f * a3;
  o[5 * stride] = b1 + 0.03125f * b2 + 32.0f * b3 + m7;
}

// One row/column of G g.
template <typename T>
SD_WINO_INLINE void winograd_f63_filter_1d(const T g0, const T g1, const T g2, T* u, int stride) {
  u[0 * stride] = g0;
  u[1 * stride] = -T(2) * (g0 + g1 + g2) / T(9);
  u[2 * stride] = -T(2) * (g0 - g1 + g2) / T(9);
  u[3 * stride] = (T(32) * g0 + T(16) * g1 + T(8) * g2) / T(45);
  u[4 * stride] = (T(32) * g0 - T(16) * g1 + T(8) * g2) / T(45);
  u[5 * stride] = (g0 + T(2) * g1 + T(4) * g2) / T(90);
  u[6 * stride] = (g0 - T(2) * g1 + T(4) * g2) / T(90);
  u[7 * stride] = g2;
}

}  // namespace scratchdet
