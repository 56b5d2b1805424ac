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
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../batch_norm_relu.h"
#include "../common/bn_relu_math.h"

namespace scratchdet {
namespace {

// Rows per statistics block: short enough that the block's sums in float32 lose ~1e-6 at most
// (the blocks then add in double).
constexpr int64_t kBlockRows = 256;

// Per-channel sums over the rows, block by block: fn(row, acc1, acc2) adds one row into the
// block's accumulators (value type, length C); returns the two sums per channel in double.
template <typename T, typename RowFn>
void blocked_channel_sums(int64_t rows, int64_t C, RowFn fn, std::vector<double>& sum1, std::vector<double>& sum2) {
  const int64_t per_block = kBlockRows;
  const int64_t blocks = (rows + per_block - 1) / per_block;
  std::vector<double> partial(static_cast<size_t>(blocks) * 2 * C);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> acc(2 * C);
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(acc.begin(), acc.end(), T(0));
      const int64_t end = std::min(rows, (b + 1) * per_block);
      for (int64_t r = b * per_block; r < end; ++r) fn(r, acc.data(), acc.data() + C);
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

// acc[c] += a[c] (and acc2[c] += a[c] * b[c]) over one row, vectorised over the channels.
template <typename T>
inline void add_row_shifted(const T* x, const T* shift, T* s1, T* s2, int64_t C) {
  using Vec = at::vec::Vectorized<T>;
  int64_t c = 0;
  for (; c + Vec::size() <= C; c += Vec::size()) {
    const Vec d = Vec::loadu(x + c) - Vec::loadu(shift + c);
    (Vec::loadu(s1 + c) + d).store(s1 + c);
    at::vec::fmadd(d, d, Vec::loadu(s2 + c)).store(s2 + c);
  }
  for (; c < C; ++c) {
    const T d = x[c] - shift[c];
    s1[c] += d;
    s2[c] += d * d;
  }
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_impl(const at::Tensor& x, const at::Tensor& weight,
                                                            const at::Tensor& bias, const at::Tensor& residual,
                                                            double eps, bool relu) {
  using Vec = at::vec::Vectorized<T>;
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
  blocked_channel_sums<T>(rows, C, [&](int64_t r, T* a1, T* a2) { add_row_shifted(xp + r * C, first.data(), a1, a2, C); },
                          s1, s2);
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
  const int64_t grain = std::max<int64_t>(1, 32768 / C);
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    const Vec zero(T(0));
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = xp + r * C;
      T* orow = op + r * C;
      int64_t c = 0;
      for (; c + Vec::size() <= C; c += Vec::size()) {
        Vec v = at::vec::fmadd(Vec::loadu(xr + c), Vec::loadu(scale.data() + c), Vec::loadu(shift.data() + c));
        if (rp) v = v + Vec::loadu(rp + r * C + c);
        if (relu) v = at::vec::maximum(v, zero);
        v.store(orow + c);
      }
      for (; c < C; ++c)
        orow[c] = math::bn_relu_out(xr[c], scale[c], shift[c], rp ? rp[r * C + c] : T(0), relu);
    }
  });
  return {out, save_mean, save_invstd};
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_impl(
    const at::Tensor& dy, const at::Tensor& y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mean_t,
    const at::Tensor& invstd_t, bool relu, bool want_residual) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t C = x.size(1), rows = x.numel() / C;
  const T* dyp = dy.const_data_ptr<T>();
  const T* yp = y.const_data_ptr<T>();
  const T* xp = x.const_data_ptr<T>();
  const T* mean = mean_t.const_data_ptr<T>();
  const T* invstd = invstd_t.const_data_ptr<T>();
  auto grad_masked = [&](const Vec& d, const Vec& v) {
    return relu ? Vec::blendv(Vec(T(0)), d, v > Vec(T(0))) : d;
  };

  // 1. sum(g) and sum(g * (x - mean)) per channel
  std::vector<double> sum_g, sum_gxc;
  blocked_channel_sums<T>(rows, C, [&](int64_t r, T* a1, T* a2) {
    const T *dr = dyp + r * C, *yr = yp + r * C, *xr = xp + r * C;
    int64_t c = 0;
    for (; c + Vec::size() <= C; c += Vec::size()) {
      const Vec g = grad_masked(Vec::loadu(dr + c), Vec::loadu(yr + c));
      (Vec::loadu(a1 + c) + g).store(a1 + c);
      at::vec::fmadd(g, Vec::loadu(xr + c) - Vec::loadu(mean + c), Vec::loadu(a2 + c)).store(a2 + c);
    }
    for (; c < C; ++c) {
      const T g = math::relu_grad(dr[c], yr[c], relu);
      a1[c] += g;
      a2[c] += g * (xr[c] - mean[c]);
    }
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
  const int64_t grain = std::max<int64_t>(1, 32768 / C);
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t o = r * C;
      int64_t c = 0;
      for (; c + Vec::size() <= C; c += Vec::size()) {
        const Vec g = grad_masked(Vec::loadu(dyp + o + c), Vec::loadu(yp + o + c));
        const Vec xc = Vec::loadu(xp + o + c) - Vec::loadu(mean + c);
        at::vec::fmadd(Vec::loadu(s.data() + c), g,
                       at::vec::fmadd(Vec::loadu(c1.data() + c), xc, Vec::loadu(c0.data() + c)))
            .store(dxp + o + c);
        if (drp) g.store(drp + o + c);
      }
      for (; c < C; ++c) {
        const T g = math::relu_grad(dyp[o + c], yp[o + c], relu);
        dxp[o + c] = math::bn_relu_grad_input(g, xp[o + c] - mean[c], math::BnGradConstants<T>{s[c], c1[c], c0[c]});
        if (drp) drp[o + c] = g;
      }
    }
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
