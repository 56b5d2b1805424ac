// Row-major C[m, n] = A[m, k] @ B[k, n] for the many small GEMMs of the Winograd convolution
// (m = tiles per chunk, often 25-113; k = C_in, n = C_out), single-threaded.
//
// BLAS sgemm is tuned for large m and packs both operands at every call; at these sizes
// register-blocked kernels that read A and B where they lie (no packing) do better
// (benchmarks/RESULTS.md, "CPU runtimes": 1.33x MKL per layer on Zen 4, 1.2x on Zen 2). Blocks of
// 6 rows x 64 columns: 24 accumulators + 4 rows of B + 1 broadcast of A fit the 32 zmm registers;
// the last column block is masked, so any n works. Built for AVX-512F only through function
// target attributes: callers check avx512_enabled() (cpu_isa.h) first.
#pragma once

#include <cstdint>

#include "cpu_isa.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SD_SMALL_GEMM_AVX512 1
#endif

namespace scratchdet {

#ifdef SD_SMALL_GEMM_AVX512

// One kMR x (16 * kNV) block of C; the kNV-th vector of each row holds only its first tail columns.
template <int kMR, int kNV>
__attribute__((target("avx512f"))) inline void small_gemm_block(const float* a, int64_t lda, const float* b,
                                                                int64_t ldb, float* c, int64_t ldc, int64_t k,
                                                                int tail) {
  const __mmask16 last = static_cast<__mmask16>(tail == 16 ? 0xFFFF : (1u << tail) - 1);
  __m512 acc[kMR][kNV];
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < kNV; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < k; ++p) {
    const float* brow = b + p * ldb;
    __m512 bv[kNV];
#pragma GCC unroll 4
    for (int j = 0; j < kNV; ++j)
      bv[j] = j + 1 < kNV ? _mm512_loadu_ps(brow + 16 * j) : _mm512_maskz_loadu_ps(last, brow + 16 * j);
#pragma GCC unroll 6
    for (int i = 0; i < kMR; ++i) {
      const __m512 av = _mm512_set1_ps(a[i * lda + p]);
#pragma GCC unroll 4
      for (int j = 0; j < kNV; ++j) acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < kNV; ++j) {
      if (j + 1 < kNV) {
        _mm512_storeu_ps(c + i * ldc + 16 * j, acc[i][j]);
      } else {
        _mm512_mask_storeu_ps(c + i * ldc + 16 * j, last, acc[i][j]);
      }
    }
}

// One block of C: (a, lda, b, ldb, c, ldc, k, columns in the block's last vector). Both ISAs' kernels.
using SmallGemmBlockFn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, int64_t, int);

// C[m, n] = A[m, k] @ B[k, n], lda = k, ldb = ldc = n, in blocks of kMR rows x kNC columns of kW-lane
// vectors; table[rows - 1][vectors - 1] is the block kernel for a (partial) block. Column blocks
// outside, so a k x kNC panel of B stays in cache while every row block of A passes over it.
template <int64_t kMR, int64_t kNC, int64_t kW>
inline void small_gemm_blocked(const SmallGemmBlockFn* const* table, int64_t m, int64_t n, int64_t k, const float* a,
                               const float* b, float* c) {
  for (int64_t j0 = 0; j0 < n; j0 += kNC) {
    const int64_t cols = n - j0 < kNC ? n - j0 : kNC;
    const int nv = static_cast<int>((cols + kW - 1) / kW);
    const int tail = static_cast<int>(cols - kW * (nv - 1));  // 1..kW columns in the last vector
    for (int64_t i0 = 0; i0 < m; i0 += kMR) {
      const int rows = static_cast<int>(m - i0 < kMR ? m - i0 : kMR);
      table[rows - 1][nv - 1](a + i0 * k, k, b + j0, n, c + i0 * n + j0, n, k, tail);
    }
  }
}

template <int kMR>
constexpr SmallGemmBlockFn small_gemm_row_fns[4] = {small_gemm_block<kMR, 1>, small_gemm_block<kMR, 2>,
                                                    small_gemm_block<kMR, 3>, small_gemm_block<kMR, 4>};

inline constexpr const SmallGemmBlockFn* small_gemm_table[6] = {
    small_gemm_row_fns<1>, small_gemm_row_fns<2>, small_gemm_row_fns<3>,
    small_gemm_row_fns<4>, small_gemm_row_fns<5>, small_gemm_row_fns<6>};

inline void small_gemm_avx512(int64_t m, int64_t n, int64_t k, const float* a, const float* b, float* c) {
  small_gemm_blocked</*kMR=*/6, /*kNC=*/64, /*kW=*/16>(small_gemm_table, m, n, k, a, b, c);
}

// The AVX2 + FMA counterpart (16 ymm registers): blocks of 6 rows x 16 columns, i.e. 12
// accumulators + 2 vectors of B + 1 broadcast of A (BLIS's shape for Haswell-class cores); a
// 16-column row of B is one cache line. The last vector of a row may be masked (maskload /
// maskstore), so any n works; kMasked is a template argument so full blocks keep plain loads. The
// accumulators must stay in registers: any store path that indexes them at run time makes GCC
// keep them on the stack and reload them every step (half the speed), hence the fully unrolled
// stores. kAccumulate adds to C (the k-blocks after the first). Callers check avx2_fma_supported()
// (cpu_isa.h) first.
template <int kMR, int kNV, bool kMasked, bool kAccumulate>
__attribute__((target("avx2,fma"))) inline void small_gemm_block_avx2(const float* a, int64_t lda, const float* b,
                                                                      int64_t ldb, float* c, int64_t ldc, int64_t k,
                                                                      int tail) {
  const __m256i last = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  __m256 acc[kMR][kNV];
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i)
#pragma GCC unroll 2
    for (int j = 0; j < kNV; ++j) {
      if constexpr (kAccumulate)
        acc[i][j] = (kMasked && j + 1 == kNV) ? _mm256_maskload_ps(c + i * ldc + 8 * j, last)
                                              : _mm256_loadu_ps(c + i * ldc + 8 * j);
      else
        acc[i][j] = _mm256_setzero_ps();
    }
#pragma GCC unroll 2
  for (int64_t p = 0; p < k; ++p) {
    const float* brow = b + p * ldb;
    __m256 bv[kNV];
#pragma GCC unroll 2
    for (int j = 0; j < kNV; ++j)
      bv[j] = (kMasked && j + 1 == kNV) ? _mm256_maskload_ps(brow + 8 * j, last) : _mm256_loadu_ps(brow + 8 * j);
#pragma GCC unroll 6
    for (int i = 0; i < kMR; ++i) {
      const __m256 av = _mm256_broadcast_ss(a + i * lda + p);
#pragma GCC unroll 2
      for (int j = 0; j < kNV; ++j) acc[i][j] = _mm256_fmadd_ps(av, bv[j], acc[i][j]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i)
#pragma GCC unroll 2
    for (int j = 0; j < kNV; ++j) {
      if (kMasked && j + 1 == kNV) {
        _mm256_maskstore_ps(c + i * ldc + 8 * j, last, acc[i][j]);
      } else {
        _mm256_storeu_ps(c + i * ldc + 8 * j, acc[i][j]);
      }
    }
}

template <int kMR, bool kMasked, bool kAcc>
constexpr SmallGemmBlockFn small_gemm_avx2_row_fns[2] = {small_gemm_block_avx2<kMR, 1, kMasked, kAcc>,
                                                         small_gemm_block_avx2<kMR, 2, kMasked, kAcc>};

template <bool kMasked, bool kAcc>
inline constexpr const SmallGemmBlockFn* small_gemm_avx2_rows[6] = {
    small_gemm_avx2_row_fns<1, kMasked, kAcc>, small_gemm_avx2_row_fns<2, kMasked, kAcc>,
    small_gemm_avx2_row_fns<3, kMasked, kAcc>, small_gemm_avx2_row_fns<4, kMasked, kAcc>,
    small_gemm_avx2_row_fns<5, kMasked, kAcc>, small_gemm_avx2_row_fns<6, kMasked, kAcc>};

// [accumulate][masked][rows - 1][vectors - 1]
inline constexpr const SmallGemmBlockFn* const* small_gemm_avx2_table[2][2] = {
    {small_gemm_avx2_rows<false, false>, small_gemm_avx2_rows<true, false>},
    {small_gemm_avx2_rows<false, true>, small_gemm_avx2_rows<true, true>}};

// Row-major C[m, n] = A[m, k] @ B[k, n], lda = k, ldb = ldc = n.
//
// k is cut into blocks of kc rows (C accumulates over them), so the kc x 16 panel of B that all row
// blocks of A pass over stays in L1. With few rows (m <= 16: the deep layers at B = 1, whose weights
// stream from memory once per call) kc is 16, so B is read in 16-row bands of whole rows, a few KB
// of contiguous memory at a time, which the prefetchers follow; otherwise 128. Per layer on Zen 2
// (benchmarks/RESULTS.md): 512->512 @10x10 B=1 3.4 ms at kc 16 against 5.3 unblocked and 3.9 for
// MKL; 512->512 @19x19 4.8 at kc 128 against 6.7 unblocked.
inline void small_gemm_avx2(int64_t m, int64_t n, int64_t k, const float* a, const float* b, float* c) {
  constexpr int64_t kMR = 6, kNC = 16, kW = 8;
  const int64_t kc_max = m <= 16 ? 16 : 128;
  for (int64_t p0 = 0; p0 < k; p0 += kc_max) {
    const int64_t kc = k - p0 < kc_max ? k - p0 : kc_max;
    for (int64_t j0 = 0; j0 < n; j0 += kNC) {
      const int64_t cols = n - j0 < kNC ? n - j0 : kNC;
      const int nv = static_cast<int>((cols + kW - 1) / kW);
      const int tail = static_cast<int>(cols - kW * (nv - 1));  // 1..8 columns in the last vector
      const SmallGemmBlockFn* const* table = small_gemm_avx2_table[p0 > 0 ? 1 : 0][tail == kW ? 0 : 1];
      for (int64_t i0 = 0; i0 < m; i0 += kMR) {
        const int rows = static_cast<int>(m - i0 < kMR ? m - i0 : kMR);
        table[rows - 1][nv - 1](a + i0 * k + p0, k, b + p0 * n + j0, n, c + i0 * n + j0, n, kc, tail);
      }
    }
  }
}

#else

inline void small_gemm_avx512(int64_t, int64_t, int64_t, const float*, const float*, float*) {}
inline void small_gemm_avx2(int64_t, int64_t, int64_t, const float*, const float*, float*) {}

#endif

}  // namespace scratchdet
