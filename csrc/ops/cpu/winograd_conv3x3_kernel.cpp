// CPU Winograd F(4x4, 3x3) and F(6x6, 3x3) convolution with the conv_bn_act epilogue fused into the
// output transform; the packed weight says which (36 or 64 transform positions). Works on NHWC
// (channels innermost), so every transform is the same arithmetic on 16 or 8 contiguous channels
// at a time.
//
// Tiles (m x m outputs from a t x t input patch, t = m + 2, P = t * t positions) are processed in
// chunks small enough that a chunk's transformed input V [P][tiles][C_in] and products
// M [P][tiles][C_out] stay in cache:
//   1. input transform   d (t x t patch) -> V = B^T d B
//   2. P GEMMs           M[p] = V[p] @ U[p]      (U = winograd_f{43,63}_pack(weight): [P][C_in][C_out])
//   3. output transform  y = A^T M A, then + bias (+ residual) (ReLU), stored in place.
// With many chunks each thread runs whole chunks on its own buffers; with few (small maps,
// wide layers) the threads share one chunk phase by phase.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#pragma GCC diagnostic ignored "-Wpsabi"  // vec8/vec16 never cross a non-inlined ABI boundary
#include <torch/library.h>

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "../winograd_conv3x3.h"
#include "small_gemm.h"

// x86-64 Linux: compile the transforms three times (AVX-512, AVX2+FMA, baseline) and pick one at
// load time (ifunc), so the wheel still runs on CPUs without AVX2. Elsewhere: the build's own target.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define SD_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=haswell", "default")))
#else
#define SD_CPU_CLONES
#endif

namespace scratchdet {
namespace {

// GCC/Clang vectors of 8 and 16 floats: one AVX / AVX-512 register where the clone targets it,
// several narrower ones otherwise. Loads and stores go through memcpy, so they may be unaligned.
// 16 lanes only on AVX-512 CPUs (avx512_enabled(), cpu_isa.h): elsewhere a tile's 36 or 64 vec16
// values spill out of the registers.
typedef float vec8 __attribute__((vector_size(32)));
typedef float vec16 __attribute__((vector_size(64)));
constexpr int kLanes = 8;

// The two tile sizes: their geometry and 1-D transforms (a row or column of B^T d, A^T m and G g, d
// and m given as kTile values, g as 3). The tiles below run the 2-D transforms as two 1-D passes
// themselves, loading the first pass straight from the image / products and storing the second pass
// straight to V / the output, so a tile goes through the stack once (t), not four times (d, t, v,
// and the copies out).
struct F43 {
  static constexpr int kTile = 6, kOut = 4, kPos = 36;
  template <typename T>
  static SD_WINO_INLINE void input_1d(const T* d, T* r, int stride) {
    winograd_f43_input_1d(d[0], d[1], d[2], d[3], d[4], d[5], r, stride);
  }
  template <typename T>
  static SD_WINO_INLINE void output_1d(const T* m, T* o, int stride) {
    winograd_f43_output_1d(m[0], m[1], m[2], m[3], m[4], m[5], o, stride);
  }
  static void filter_1d(const double* g, double* u, int stride) {
    winograd_f43_filter_1d(g[0], g[1], g[2], u, stride);
  }
};
struct F63 {
  static constexpr int kTile = 8, kOut = 6, kPos = 64;
  template <typename T>
  static SD_WINO_INLINE void input_1d(const T* d, T* r, int stride) {
    winograd_f63_input_1d(d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], r, stride);
  }
  template <typename T>
  static SD_WINO_INLINE void output_1d(const T* m, T* o, int stride) {
    winograd_f63_output_1d(m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], o, stride);
  }
  static void filter_1d(const double* g, double* u, int stride) {
    winograd_f63_filter_1d(g[0], g[1], g[2], u, stride);
  }
};

// The transforms run on 16 or 8 channels at a time (vec16, vec8) and on the channel tail one at a
// time (float): the same code for every lane type.
template <typename T>
inline T load_lanes(const float* p);
template <>
inline vec8 load_lanes<vec8>(const float* p) {
  vec8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <>
inline vec16 load_lanes<vec16>(const float* p) {
  vec16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <>
inline float load_lanes<float>(const float* p) { return *p; }
inline void store_lanes(float* p, vec16 v) { std::memcpy(p, &v, sizeof(v)); }
inline void store_lanes(float* p, vec8 v) { std::memcpy(p, &v, sizeof(v)); }
inline void store_lanes(float* p, float v) { *p = v; }

#define SD_ALWAYS_INLINE inline __attribute__((always_inline))

// ---- GEMM ------------------------------------------------------------------------------------
// The GEMMs are small (tiles-per-chunk x C_in x C_out) and many (36 or 64 per chunk). Ways to run them:
// our AVX-512 kernel (small_gemm.h) where avx512_enabled(); our AVX2 kernel; the BLAS sgemm that
// torch itself links (MKL on x86 wheels) when it exports one; at::mm_out (same result, more
// overhead per call). SCRATCHDET_WINOGRAD_GEMM, read at the first call:
//   auto (default)  our kernel: AVX-512 where enabled, else AVX2 + FMA where the CPU has it, else BLAS
//   native          the same
//   blas | aten     those
// An unavailable choice falls to the next, so tests can force and compare each. Our kernels read
// B (the packed weight) where it lies, in panels of 16 (AVX2) or 64 (AVX-512) columns; MKL packs
// both operands at every call, which at these sizes is an eighth of the network's time. On Zen 2
// the AVX2 kernel (6 x 16 blocks, 90-98 % of the FMA peak on the 64- and 128-channel GEMMs, k-blocked)
// made the Winograd layers 1.2x faster than MKL and ScratchDet300 1.56x ONNX Runtime at B=1
// (benchmarks/RESULTS.md).
using SgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*,
                         const float*, const int*, const float*, const int*, const float*, float*, const int*);

SgemmFn find_sgemm() {
  for (const char* lib : {"libtorch_cpu.so", "libtorch_cpu.dylib"}) {
    if (void* handle = dlopen(lib, RTLD_LAZY | RTLD_NOLOAD)) {
      if (void* fn = dlsym(handle, "sgemm_")) return reinterpret_cast<SgemmFn>(fn);
    }
  }
  return nullptr;
}

enum class GemmPath { kNative, kNativeAvx2, kBlas, kAten };

struct GemmChoice {
  GemmPath path;
  SgemmFn sgemm;
};

GemmChoice choose_gemm() {
  const char* env = std::getenv("SCRATCHDET_WINOGRAD_GEMM");
  const std::string want = env ? env : "auto";
  TORCH_CHECK(want == "auto" || want == "native" || want == "blas" || want == "aten",
              "winograd_conv3x3: SCRATCHDET_WINOGRAD_GEMM must be auto, native, blas or aten, got '", want, "'");
  const SgemmFn sgemm = want == "aten" ? nullptr : find_sgemm();
  if ((want == "auto" || want == "native") && avx512_enabled()) return {GemmPath::kNative, nullptr};
  if ((want == "auto" || want == "native") && avx2_fma_supported()) return {GemmPath::kNativeAvx2, nullptr};
  if (sgemm != nullptr) return {GemmPath::kBlas, sgemm};
  return {GemmPath::kAten, nullptr};
}

const GemmChoice& gemm_choice() {
  static const GemmChoice choice = choose_gemm();
  return choice;
}

// Row-major C[m, n] = A[m, k] @ B[k, n] (lda = k, ldb = ldc = n), single-threaded: callers run
// it inside their own parallel region.
void gemm_row_major(int64_t m, int64_t n, int64_t k, const float* a, const float* b, float* c) {
  const GemmChoice& gemm = gemm_choice();
  switch (gemm.path) {
    case GemmPath::kNative:
      small_gemm_avx512(m, n, k, a, b, c);
      return;
    case GemmPath::kNativeAvx2:
      small_gemm_avx2(m, n, k, a, b, c);
      return;
    case GemmPath::kBlas: {
      // column-major view: C^T[n, m] = B^T[n, k] @ A^T[k, m]
      const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
      const float one = 1.0f, zero = 0.0f;
      gemm.sgemm("N", "N", &ni, &mi, &ki, &one, b, &ni, a, &ki, &zero, c, &ni);
      return;
    }
    case GemmPath::kAten: {
      const auto opts = at::TensorOptions().dtype(at::kFloat);
      auto ct = at::from_blob(c, {m, n}, opts);
      at::mm_out(ct, at::from_blob(const_cast<float*>(a), {m, k}, opts),
                 at::from_blob(const_cast<float*>(b), {k, n}, opts));
      return;
    }
  }
}

// ---- geometry --------------------------------------------------------------------------------
struct Geometry {
  int64_t batch, height, width, c_in, c_out;
  int64_t tiles_h, tiles_w, tiles;  // output tiles per row / column / in all
};

// Tile t -> image n and top-left output pixel (oy, ox).
template <class W>
inline void tile_origin(const Geometry& g, int64_t t, int64_t& n, int64_t& oy, int64_t& ox) {
  const int64_t per_image = g.tiles_h * g.tiles_w;
  n = t / per_image;
  const int64_t r = t - n * per_image;
  oy = (r / g.tiles_w) * W::kOut;
  ox = (r % g.tiles_w) * W::kOut;
}

// ---- phase 1: input transform ----------------------------------------------------------------
// One tile's channels [c, c + lanes): the t x t patch (zeros past the edges) through B^T d B, stored
// to the P position rows of v. Columns first (t = B^T d, loaded from the image), then rows.
template <class W, typename T>
SD_ALWAYS_INLINE void input_tile(const Geometry& g, const float* img, int64_t y0, int64_t x0, bool interior,
                                 int64_t c, float* dst, int64_t pos_stride) {
  constexpr int kT = W::kTile;
  T t[W::kPos];
  for (int j = 0; j < kT; ++j) {
    const int64_t xx = x0 + j;
    T col[kT];
    for (int i = 0; i < kT; ++i) {
      const int64_t yy = y0 + i;
      const bool inside = interior || (yy >= 0 && yy < g.height && xx >= 0 && xx < g.width);
      col[i] = inside ? load_lanes<T>(img + (yy * g.width + xx) * g.c_in + c) : T{};
    }
    W::input_1d(col, t + j, kT);
  }
  for (int i = 0; i < kT; ++i) {
    T row[kT];
    W::input_1d(t + i * kT, row, 1);
    for (int j = 0; j < kT; ++j) store_lanes(dst + (i * kT + j) * pos_stride + c, row[j]);
  }
}

// Tiles [t_begin, t_end) of the chunk starting at chunk_begin; v is [P][chunk_len][C_in].
template <class W>
SD_CPU_CLONES
void input_transform(const Geometry& g, const float* x, float* v, int64_t chunk_begin, int64_t chunk_len,
                     int64_t t_begin, int64_t t_end) {
  const int64_t C = g.c_in, pos_stride = chunk_len * C;
  const bool wide = avx512_enabled();
  for (int64_t t = t_begin; t < t_end; ++t) {
    int64_t n, oy, ox;
    tile_origin<W>(g, t, n, oy, ox);
    const int64_t y0 = oy - 1, x0 = ox - 1;  // padding 1
    const bool interior = y0 >= 0 && x0 >= 0 && y0 + W::kTile <= g.height && x0 + W::kTile <= g.width;
    const float* img = x + n * g.height * g.width * C;
    float* dst = v + (t - chunk_begin) * C;
    int64_t c = 0;
    for (; wide && c + 2 * kLanes <= C; c += 2 * kLanes)
      input_tile<W, vec16>(g, img, y0, x0, interior, c, dst, pos_stride);
    for (; c + kLanes <= C; c += kLanes) input_tile<W, vec8>(g, img, y0, x0, interior, c, dst, pos_stride);
    for (; c < C; ++c) input_tile<W, float>(g, img, y0, x0, interior, c, dst, pos_stride);
  }
}

// ---- phase 3: output transform + epilogue ----------------------------------------------------
// One tile's channels [c, c + lanes): its P products through A^T m A (columns first, loaded from
// src), + bias (and residual), ReLU, stored for the part of the m x m tile inside the image (rows x
// cols from pixel base).
template <class W, typename T, bool kResidual, bool kRelu, bool kBias>
SD_ALWAYS_INLINE void output_tile(const Geometry& g, const float* src, int64_t pos_stride, const float* bias,
                                  const float* residual, float* out, int64_t base, int rows, int cols, int64_t c) {
  constexpr int kT = W::kTile;
  T t[W::kOut * kT];  // A^T m: kOut rows x kT columns
  for (int j = 0; j < kT; ++j) {
    T col[kT];
    for (int i = 0; i < kT; ++i) col[i] = load_lanes<T>(src + (i * kT + j) * pos_stride + c);
    W::output_1d(col, t + j, kT);
  }
  T b{};
  if constexpr (kBias) b = load_lanes<T>(bias + c);
  for (int i = 0; i < rows; ++i) {
    T y[W::kOut];
    W::output_1d(t + i * kT, y, 1);
    for (int j = 0; j < cols; ++j) {
      const int64_t o = base + (i * g.width + j) * g.c_out + c;
      T v = y[j];
      if constexpr (kBias) v += b;
      if constexpr (kResidual) v += load_lanes<T>(residual + o);
      if constexpr (kRelu) v = (v < T{}) ? T{} : v;  // NaN compares false: stays NaN, like torch.relu
      store_lanes(out + o, v);
    }
  }
}

template <class W, bool kResidual, bool kRelu, bool kBias>
SD_CPU_CLONES
void output_transform(const Geometry& g, const float* m, const float* bias, const float* residual, float* out,
                      int64_t chunk_begin, int64_t chunk_len, int64_t t_begin, int64_t t_end) {
  const int64_t C = g.c_out, pos_stride = chunk_len * C;
  const bool wide = avx512_enabled();
  for (int64_t t = t_begin; t < t_end; ++t) {
    int64_t n, oy, ox;
    tile_origin<W>(g, t, n, oy, ox);
    const int rows = static_cast<int>(std::min<int64_t>(W::kOut, g.height - oy));
    const int cols = static_cast<int>(std::min<int64_t>(W::kOut, g.width - ox));
    const int64_t base = (n * g.height * g.width + oy * g.width + ox) * C;
    const float* src = m + (t - chunk_begin) * C;
    int64_t c = 0;
    for (; wide && c + 2 * kLanes <= C; c += 2 * kLanes)
      output_tile<W, vec16, kResidual, kRelu, kBias>(g, src, pos_stride, bias, residual, out, base, rows, cols, c);
    for (; c + kLanes <= C; c += kLanes)
      output_tile<W, vec8, kResidual, kRelu, kBias>(g, src, pos_stride, bias, residual, out, base, rows, cols, c);
    for (; c < C; ++c)
      output_tile<W, float, kResidual, kRelu, kBias>(g, src, pos_stride, bias, residual, out, base, rows, cols, c);
  }
}

using OutputFn = void (*)(const Geometry&, const float*, const float*, const float*, float*, int64_t, int64_t,
                          int64_t, int64_t);

template <class W>
OutputFn pick_output(bool residual, bool relu, bool bias) {
  static const OutputFn table[8] = {
      output_transform<W, false, false, false>, output_transform<W, false, false, true>,
      output_transform<W, false, true, false>,  output_transform<W, false, true, true>,
      output_transform<W, true, false, false>,  output_transform<W, true, false, true>,
      output_transform<W, true, true, false>,   output_transform<W, true, true, true>};
  return table[(residual ? 4 : 0) + (relu ? 2 : 0) + (bias ? 1 : 0)];
}

// ---- driver ----------------------------------------------------------------------------------
// Bytes of V + M per chunk, and the fewest tiles per chunk (fewer starve the GEMMs of wide layers).
// Picked by timing a grid of chunk sizes and tile counts (benchmarks/RESULTS.md). At most all tiles.
constexpr int64_t kChunkBytes = 2048 * 1024;
constexpr int64_t kMinChunkTiles = 64;

// Fills out (channels_last, [N, C_out, H, W]) with the conv of x by tiles W.
template <class W>
void run_winograd(const at::Tensor& x, const at::Tensor& u, const at::Tensor& b, const at::Tensor& r, bool relu,
                  at::Tensor& out) {
  Geometry g{};
  g.batch = x.size(0), g.c_in = x.size(1), g.height = x.size(2), g.width = x.size(3);
  g.c_out = u.size(2);
  g.tiles_h = (g.height + W::kOut - 1) / W::kOut, g.tiles_w = (g.width + W::kOut - 1) / W::kOut;
  g.tiles = g.batch * g.tiles_h * g.tiles_w;

  const float* xp = x.const_data_ptr<float>();
  const float* up = u.const_data_ptr<float>();
  const float* bp = b.defined() ? b.const_data_ptr<float>() : nullptr;
  const float* rp = r.defined() ? r.const_data_ptr<float>() : nullptr;
  float* op = out.mutable_data_ptr<float>();
  const OutputFn output = pick_output<W>(rp != nullptr, relu, bp != nullptr);

  const int64_t bytes_per_tile = W::kPos * (g.c_in + g.c_out) * static_cast<int64_t>(sizeof(float));
  const int64_t chunk = std::clamp<int64_t>(kChunkBytes / bytes_per_tile, kMinChunkTiles, g.tiles);
  const int64_t n_chunks = (g.tiles + chunk - 1) / chunk;
  const int64_t threads = at::get_num_threads();
  const int64_t v_size = W::kPos * chunk * g.c_in, m_size = W::kPos * chunk * g.c_out;

  // The three phases of one chunk [begin, begin + len); run_phase(count, fn) runs fn over [0, count).
  auto run_chunk = [&](int64_t begin, int64_t len, float* vbuf, float* mbuf, auto&& run_phase) {
    run_phase(len, [&](int64_t lo, int64_t hi) {
      input_transform<W>(g, xp, vbuf, begin, len, begin + lo, begin + hi);
    });
    run_phase(W::kPos, [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p)
        gemm_row_major(len, g.c_out, g.c_in, vbuf + p * len * g.c_in, up + p * g.c_in * g.c_out,
                       mbuf + p * len * g.c_out);
    });
    run_phase(len, [&](int64_t lo, int64_t hi) { output(g, mbuf, bp, rp, op, begin, len, begin + lo, begin + hi); });
  };
  auto serial = [](int64_t count, auto&& fn) { fn(0, count); };
  auto parallel = [](int64_t count, auto&& fn) { at::parallel_for(0, count, 1, fn); };

  if (n_chunks >= 2 * threads) {
    // enough chunks: each thread runs whole chunks on its own buffers
    at::parallel_for(0, n_chunks, 1, [&](int64_t lo, int64_t hi) {
      std::unique_ptr<float[]> vbuf(new float[v_size]), mbuf(new float[m_size]);
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t begin = i * chunk;
        run_chunk(begin, std::min(chunk, g.tiles - begin), vbuf.get(), mbuf.get(), serial);
      }
    });
  } else {
    // few chunks: the threads share each chunk, phase by phase
    std::unique_ptr<float[]> vbuf(new float[v_size]), mbuf(new float[m_size]);
    for (int64_t i = 0; i < n_chunks; ++i) {
      const int64_t begin = i * chunk;
      run_chunk(begin, std::min(chunk, g.tiles - begin), vbuf.get(), mbuf.get(), parallel);
    }
  }
}

at::Tensor winograd_conv3x3_cpu(const at::Tensor& input, const at::Tensor& packed_weight,
                                const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                                bool relu) {
  check_winograd_conv3x3_args(input, packed_weight, bias, residual);
  check_device(input, c10::kCPU, "winograd_conv3x3", "input");
  gemm_choice();  // resolved here, outside the parallel regions, so a bad SCRATCHDET_WINOGRAD_GEMM raises cleanly
  const auto format = input.suggest_memory_format();
  const auto x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const auto u = packed_weight.contiguous();
  const auto b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const auto r = residual.has_value() ? residual->contiguous(at::MemoryFormat::ChannelsLast) : at::Tensor();

  auto out = at::empty({x.size(0), u.size(2), x.size(2), x.size(3)},
                       x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out.contiguous(format);
  if (x.size(1) == 0) {  // an empty sum: the output is the epilogue of zero
    out.zero_();
    if (b.defined()) out.add_(b.view({1, -1, 1, 1}));
    if (r.defined()) out.add_(r);
    if (relu) out.relu_();
    return out.contiguous(format);
  }
  if (u.size(0) == F63::kPos)
    run_winograd<F63>(x, u, b, r, relu, out);
  else
    run_winograd<F43>(x, u, b, r, relu, out);
  return out.contiguous(format);
}

// u = G g G^T: a 3x3 filter (row-major) to its t x t transform (row-major), columns then rows.
template <class W>
void filter_transform(const double* g, double* u) {
  double t[W::kTile * 3];  // G g: kTile rows x 3 columns
  for (int c = 0; c < 3; ++c) {
    const double col[3] = {g[c], g[3 + c], g[6 + c]};
    W::filter_1d(col, t + c, 3);
  }
  for (int r = 0; r < W::kTile; ++r) W::filter_1d(t + 3 * r, u + W::kTile * r, 1);
}

// G g G^T of every filter, in double, as [P][C_in][C_out] float.
template <class W>
at::Tensor winograd_pack(const at::Tensor& weight) {
  const auto w = weight.to(at::kDouble).contiguous();
  const int64_t c_out = w.size(0), c_in = w.size(1);
  at::Tensor packed = at::empty({W::kPos, c_in, c_out}, weight.options().dtype(at::kFloat));
  const double* wp = w.const_data_ptr<double>();
  float* pp = packed.mutable_data_ptr<float>();
  // the output channel innermost: each of a filter's P stores lands next to the previous filter's,
  // so the packed weight is written a cache line at a time rather than one line per store
  at::parallel_for(0, c_out * c_in, 256, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t ci = i / c_out, o = i % c_out;
      double t[W::kPos];
      filter_transform<W>(wp + (o * c_in + ci) * 9, t);
      for (int p = 0; p < W::kPos; ++p) pp[(p * c_in + ci) * c_out + o] = static_cast<float>(t[p]);
    }
  });
  return packed;
}

at::Tensor winograd_f43_pack_cpu(const at::Tensor& weight) {
  check_winograd_pack_args(weight, "winograd_f43_pack");
  check_device(weight, c10::kCPU, "winograd_f43_pack", "weight");
  return winograd_pack<F43>(weight);
}

at::Tensor winograd_f63_pack_cpu(const at::Tensor& weight) {
  check_winograd_pack_args(weight, "winograd_f63_pack");
  check_device(weight, c10::kCPU, "winograd_f63_pack", "weight");
  return winograd_pack<F63>(weight);
}

}  // namespace
}  // namespace scratchdet

TORCH_LIBRARY_IMPL(scratchdet, CPU, m) {
  m.impl("winograd_conv3x3", &scratchdet::winograd_conv3x3_cpu);
  m.impl("winograd_f43_pack", &scratchdet::winograd_f43_pack_cpu);
  m.impl("winograd_f63_pack", &scratchdet::winograd_f63_pack_cpu);
}
