// CPU kernels of batch_norm_relu and batch_norm_relu_backward (float32, float64).
//
// Work in channels_last: the tensor is R = N*H*W rows of C channels, so every pass walks memory
// once, row by row, vectorised over the channels. Forward: one pass for the statistics, one that
// writes relu?(x * scale + shift + residual?). Backward: one pass for sum(g) and
// sum(g * (x - mean)) with g the ReLU-masked gradient, one that writes dx (and g for the residual).
// The stock path (BatchNorm, add, ReLU and their backwards as separate ATen ops) reads and writes
// the activations about twice as often.
//
// Determinism: the rows are cut into blocks of a fixed size (kBlockRows), each block sums in the
// value type (shifted by the channel's first value, so the squares do not cancel), and the blocks
// are added in order in double, so the result does not depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../batch_norm_relu.h"
#include "../common/bn_relu_math.h"

// x86-64 Linux: the row loops compiled twice (AVX2+FMA and baseline), one picked at load time, as
// the Winograd kernel does; elsewhere the build's own target.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define SD_CPU_CLONES __attribute__((target_clones("arch=haswell", "default")))
#else
#define SD_CPU_CLONES
#endif
#define SD_ALWAYS_INLINE inline __attribute__((always_inline))

namespace scratchdet {
namespace {

// Rows per statistics block: short enough that the block's sums in float32 lose ~1e-6 at most
// (the blocks then add in double).
constexpr int64_t kBlockRows = 256;

// ---- the row loops -----------------------------------------------------------------------------
// Plain loops over the channels, which the compiler vectorises (the AVX2+FMA clone in 8-float
// registers); the entry points below pass the common channel counts as compile-time constants,
// so those loops unroll and their sums stay in registers.
template <typename T>
SD_ALWAYS_INLINE void stats_any(const T* x, const T* shift, int64_t C, int64_t r0, int64_t r1, T* s1, T* s2) {
  for (int64_t c = 0; c < C; ++c) s1[c] = T(0), s2[c] = T(0);
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const T d = xr[c] - shift[c];
      s1[c] += d;
      s2[c] += d * d;
    }
  }
}

// out = relu?(x * scale + shift + residual?) over rows [r0, r1)
template <typename T>
SD_ALWAYS_INLINE void out_any(const T* x, const T* res, const T* scale, const T* shift, int64_t C, int64_t r0,
                              int64_t r1, T* out, bool relu) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t o = r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c)
      out[o + c] = math::bn_relu_out(x[o + c], scale[c], shift[c], res ? res[o + c] : T(0), relu);
  }
}

// sg = sum(g), sgx = sum(g * (x - mean)), g the ReLU-masked gradient, over rows [r0, r1)
template <typename T>
SD_ALWAYS_INLINE void grad_sums_any(const T* dy, const T* y, const T* x, const T* mean, int64_t C, int64_t r0,
                                    int64_t r1, T* sg, T* sgx, bool relu) {
  for (int64_t c = 0; c < C; ++c) sg[c] = T(0), sgx[c] = T(0);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t o = r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const T g = math::relu_grad(dy[o + c], y[o + c], relu);
      sg[c] += g;
      sgx[c] += g * (x[o + c] - mean[c]);
    }
  }
}

// dx = s * g + c1 * (x - mean) + c0 (and g for the residual) over rows [r0, r1)
template <typename T>
SD_ALWAYS_INLINE void grad_input_any(const T* dy, const T* y, const T* x, const T* mean, const T* s, const T* c1,
                                     const T* c0, int64_t C, int64_t r0, int64_t r1, T* dx, T* dres, bool relu) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t o = r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const T g = math::relu_grad(dy[o + c], y[o + c], relu);
      dx[o + c] = math::bn_relu_grad_input(g, x[o + c] - mean[c], math::BnGradConstants<T>{s[c], c1[c], c0[c]});
      if (dres) dres[o + c] = g;
    }
  }
}

// The float32 entry points, one clone per ISA; 8, 16 and 32 channels as constants.
#define SD_DISPATCH_VECS(C, CALL_CONST, CALL_ANY) \
  switch (C) {                                    \
    case 8: CALL_CONST(8); break;                 \
    case 16: CALL_CONST(16); break;               \
    case 32: CALL_CONST(32); break;               \
    default: CALL_ANY; break;                     \
  }

SD_CPU_CLONES void stats_rows(const float* x, const float* shift, int64_t C, int64_t r0, int64_t r1, float* s1,
                              float* s2) {
#define SD_VEC(CC) stats_any<float>(x, shift, CC, r0, r1, s1, s2)
  SD_DISPATCH_VECS(C, SD_VEC, stats_any(x, shift, C, r0, r1, s1, s2))
#undef SD_VEC
}

SD_CPU_CLONES void out_rows(const float* x, const float* res, const float* scale, const float* shift, int64_t C,
                            int64_t r0, int64_t r1, float* out, bool relu) {
#define SD_VEC(CC) out_any<float>(x, res, scale, shift, CC, r0, r1, out, relu)
  SD_DISPATCH_VECS(C, SD_VEC, out_any(x, res, scale, shift, C, r0, r1, out, relu))
#undef SD_VEC
}

SD_CPU_CLONES void grad_sums_rows(const float* dy, const float* y, const float* x, const float* mean, int64_t C,
                                  int64_t r0, int64_t r1, float* sg, float* sgx, bool relu) {
#define SD_VEC(CC) grad_sums_any<float>(dy, y, x, mean, CC, r0, r1, sg, sgx, relu)
  SD_DISPATCH_VECS(C, SD_VEC, grad_sums_any(dy, y, x, mean, C, r0, r1, sg, sgx, relu))
#undef SD_VEC
}

SD_CPU_CLONES void grad_input_rows(const float* dy, const float* y, const float* x, const float* mean, const float* s,
                                   const float* c1, const float* c0, int64_t C, int64_t r0, int64_t r1, float* dx,
                                   float* dres, bool relu) {
#define SD_VEC(CC) grad_input_any<float>(dy, y, x, mean, s, c1, c0, CC, r0, r1, dx, dres, relu)
  SD_DISPATCH_VECS(C, SD_VEC, grad_input_any(dy, y, x, mean, s, c1, c0, C, r0, r1, dx, dres, relu))
#undef SD_VEC
}

// float64: the plain loops.
void stats_rows(const double* x, const double* shift, int64_t C, int64_t r0, int64_t r1, double* s1, double* s2) {
  stats_any(x, shift, C, r0, r1, s1, s2);
}
void out_rows(const double* x, const double* res, const double* scale, const double* shift, int64_t C, int64_t r0,
              int64_t r1, double* out, bool relu) {
  out_any(x, res, scale, shift, C, r0, r1, out, relu);
}
void grad_sums_rows(const double* dy, const double* y, const double* x, const double* mean, int64_t C, int64_t r0,
                    int64_t r1, double* sg, double* sgx, bool relu) {
  grad_sums_any(dy, y, x, mean, C, r0, r1, sg, sgx, relu);
}
void grad_input_rows(const double* dy, const double* y, const double* x, const double* mean, const double* s,
                     const double* c1, const double* c0, int64_t C, int64_t r0, int64_t r1, double* dx, double* dres,
                     bool relu) {
  grad_input_any(dy, y, x, mean, s, c1, c0, C, r0, r1, dx, dres, relu);
}

// ---- the passes --------------------------------------------------------------------------------
// Per-channel sums over all rows, block by block: sum_block(r0, r1, s1, s2) writes one block's
// two sums (value type, length C); returns the totals in double, blocks added in order.
template <typename T, typename BlockFn>
void blocked_channel_sums(int64_t rows, int64_t C, BlockFn sum_block, std::vector<double>& sum1,
                          std::vector<double>& sum2) {
  const int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
  std::vector<double> partial(static_cast<size_t>(blocks) * 2 * C);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> acc(2 * C);
    for (int64_t b = b0; b < b1; ++b) {
      sum_block(b * kBlockRows, std::min(rows, (b + 1) * kBlockRows), acc.data(), acc.data() + C);
      double* out = partial.data() + b * 2 * C;
      for (int64_t c = 0; c < 2 * C; ++c) out[c] = static_cast<double>(acc[c]);
    }
  });
  sum1.assign(C, 0.0);
  sum2.assign(C, 0.0);
  for (int64_t b = 0; b < blocks; ++b) {  // in order: the same bits on any thread count
    const double* p = partial.data() + b * 2 * C;
    for (int64_t c = 0; c < C; ++c) sum1[c] += p[c], sum2[c] += p[C + c];
  }
}

// Rows per task of the elementwise passes: enough work to pay for the hand-off.
int64_t row_grain(int64_t C) { return std::max<int64_t>(1, 32768 / C); }

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_impl(const at::Tensor& x, const at::Tensor& weight,
                                                            const at::Tensor& bias, const at::Tensor& residual,
                                                            double eps, bool relu) {
  const int64_t C = x.size(1), rows = x.numel() / C;
  auto out = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  auto save_mean = at::empty({C}, x.options().memory_format(at::MemoryFormat::Contiguous));
  auto save_invstd = at::empty({C}, save_mean.options());
  const T* xp = x.const_data_ptr<T>();
  const T* rp = residual.defined() ? residual.const_data_ptr<T>() : nullptr;
  T* op = out.mutable_data_ptr<T>();

  // 1. statistics: the variance of x - x[0] (the same variance, without cancellation)
  std::vector<T> first(xp, xp + C);
  std::vector<double> s1, s2;
  blocked_channel_sums<T>(rows, C, [&](int64_t r0, int64_t r1, T* a1, T* a2) {
    stats_rows(xp, first.data(), C, r0, r1, a1, a2);
  }, s1, s2);
  std::vector<T> scale(C), shift(C);
  T* mean_p = save_mean.mutable_data_ptr<T>();
  T* invstd_p = save_invstd.mutable_data_ptr<T>();
  const T* w = weight.defined() ? weight.const_data_ptr<T>() : nullptr;
  const T* b = bias.defined() ? bias.const_data_ptr<T>() : nullptr;
  for (int64_t c = 0; c < C; ++c) {
    const double m1 = s1[c] / rows;
    const double var = std::max(s2[c] / rows - m1 * m1, 0.0);
    const T mean = static_cast<T>(static_cast<double>(first[c]) + m1);
    const T invstd = static_cast<T>(1.0 / std::sqrt(var + eps));
    mean_p[c] = mean, invstd_p[c] = invstd;
    scale[c] = (w ? w[c] : T(1)) * invstd;
    shift[c] = (b ? b[c] : T(0)) - mean * scale[c];
  }

  // 2. out = relu?(x * scale + shift + residual?)
  at::parallel_for(0, rows, row_grain(C), [&](int64_t r0, int64_t r1) {
    out_rows(xp, rp, scale.data(), shift.data(), C, r0, r1, op, relu);
  });
  return {out, save_mean, save_invstd};
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_impl(
    const at::Tensor& dy, const at::Tensor& y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mean_t,
    const at::Tensor& invstd_t, bool relu, bool want_residual) {
  const int64_t C = x.size(1), rows = x.numel() / C;
  const T* dyp = dy.const_data_ptr<T>();
  const T* yp = y.const_data_ptr<T>();
  const T* xp = x.const_data_ptr<T>();
  const T* mean = mean_t.const_data_ptr<T>();
  const T* invstd = invstd_t.const_data_ptr<T>();

  // 1. sum(g) and sum(g * (x - mean)) per channel
  std::vector<double> sum_g, sum_gxc;
  blocked_channel_sums<T>(rows, C, [&](int64_t r0, int64_t r1, T* a1, T* a2) {
    grad_sums_rows(dyp, yp, xp, mean, C, r0, r1, a1, a2, relu);
  }, sum_g, sum_gxc);

  auto grad_weight = at::empty({C}, mean_t.options());
  auto grad_bias = at::empty({C}, mean_t.options());
  std::vector<T> s(C), c1(C), c0(C);
  const T* w = weight.defined() ? weight.const_data_ptr<T>() : nullptr;
  for (int64_t c = 0; c < C; ++c) {
    const auto k = math::bn_relu_grad_constants<double>(w ? static_cast<double>(w[c]) : 1.0, invstd[c], sum_g[c],
                                                        sum_gxc[c], static_cast<double>(rows));
    s[c] = static_cast<T>(k.s), c1[c] = static_cast<T>(k.c1), c0[c] = static_cast<T>(k.c0);
    grad_weight.mutable_data_ptr<T>()[c] = static_cast<T>(sum_gxc[c] * invstd[c]);
    grad_bias.mutable_data_ptr<T>()[c] = static_cast<T>(sum_g[c]);
  }

  // 2. dx = s * g + c1 * (x - mean) + c0, and g itself for the residual
  auto dx = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  auto dres = want_residual ? at::empty_like(x, at::MemoryFormat::ChannelsLast) : at::empty({0}, x.options());
  T* dxp = dx.mutable_data_ptr<T>();
  T* drp = want_residual ? dres.mutable_data_ptr<T>() : nullptr;
  at::parallel_for(0, rows, row_grain(C), [&](int64_t r0, int64_t r1) {
    grad_input_rows(dyp, yp, xp, mean, s.data(), c1.data(), c0.data(), C, r0, r1, dxp, drp, relu);
  });
  return {dx, grad_weight, grad_bias, dres};
}

void check_cpu_dtype(const at::Tensor& input, const char* op) {
  check_device(input, c10::kCPU, op, "input");
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
              ": the CPU kernel takes float32 or float64 input, got ", dtype_name(input.scalar_type()),
              " (scratchdet.models.BNReLU2d runs nn.BatchNorm2d for other dtypes)");
}

// Every operand in channels_last (a no-op for the layout the training path uses).
at::Tensor nhwc(const at::Tensor& t) { return t.contiguous(at::MemoryFormat::ChannelsLast); }
at::Tensor param(const std::optional<at::Tensor>& p) { return p.has_value() ? p->contiguous() : at::Tensor(); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_relu_cpu(const at::Tensor& input,
                                                                   const std::optional<at::Tensor>& weight,
                                                                   const std::optional<at::Tensor>& bias,
                                                                   const std::optional<at::Tensor>& residual,
                                                                   double eps, bool relu) {
  check_batch_norm_relu_args(input, weight, bias, residual, eps);
  check_cpu_dtype(input, "batch_norm_relu");
  const auto format = input.suggest_memory_format();
  std::tuple<at::Tensor, at::Tensor, at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "batch_norm_relu_cpu", [&] {
    result = forward_impl<scalar_t>(nhwc(input), param(weight), param(bias),
                                    residual.has_value() ? nhwc(*residual) : at::Tensor(), eps, relu);
  });
  auto& out = std::get<0>(result);
  if (format != at::MemoryFormat::ChannelsLast) out = out.contiguous(format);  // the input's layout
  return result;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_relu_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const at::Tensor& save_mean, const at::Tensor& save_invstd, bool relu, bool residual) {
  check_batch_norm_relu_backward_args(grad_out, out, input, weight, save_mean, save_invstd);
  check_cpu_dtype(input, "batch_norm_relu_backward");
  const auto format = input.suggest_memory_format();
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "batch_norm_relu_backward_cpu", [&] {
    result = backward_impl<scalar_t>(nhwc(grad_out), nhwc(out), nhwc(input), param(weight),
                                     save_mean.to(input.scalar_type()).contiguous(),
                                     save_invstd.to(input.scalar_type()).contiguous(), relu, residual);
  });
  if (format != at::MemoryFormat::ChannelsLast) {
    std::get<0>(result) = std::get<0>(result).contiguous(format);
    if (residual) std::get<3>(result) = std::get<3>(result).contiguous(format);
  }
  return result;
}

}  // namespace
}  // namespace scratchdet

TORCH_LIBRARY_IMPL(scratchdet, CPU, m) {
  m.impl("batch_norm_relu", &scratchdet::batch_norm_relu_cpu);
  m.impl("batch_norm_relu_backward", &scratchdet::batch_norm_relu_backward_cpu);
}
