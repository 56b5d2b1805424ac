// CPU: oneDNN convolution (bias fused inside it) through at::convolution, then one in-place
// vectorised pass for residual add and ReLU. Output and residual share strides (NCHW or
// channels_last), so the pass is flat over memory and needs no channel index.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "../conv_bn_act.h"

namespace scratchdet {
namespace {

// Elements per task: big enough that thread hand-off costs little against memory time.
constexpr int64_t kGrain = 32768;

template <typename scalar_t, bool kResidual, bool kRelu>
void epilogue(scalar_t* out, const scalar_t* residual, int64_t n) {
  using Vec = at::vec::Vectorized<scalar_t>;
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    const Vec zero(scalar_t(0));
    for (int64_t i = begin; i < end; i += Vec::size()) {
      const int64_t count = std::min<int64_t>(Vec::size(), end - i);
      Vec v = Vec::loadu(out + i, count);
      // Reduced-precision Vecs add in float and round once, as eager `a + b` does.
      if constexpr (kResidual) v = v + Vec::loadu(residual + i, count);
      if constexpr (kRelu) v = at::vec::maximum(v, zero);  // NaN stays NaN, like torch.relu
      v.store(out + i, count);
    }
  });
}

at::Tensor conv_bn_act_cpu(const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                           int64_t groups, bool relu) {
  check_conv_bn_act_args(input, weight, bias, residual, stride, padding, dilation, groups);
  check_device(input, c10::kCPU, "conv_bn_act", "input");
  auto out = conv_bn_act_convolution(input, weight, bias, stride, padding, dilation, groups);
  if (!residual.has_value() && !relu) return out;
  const auto res = residual.has_value() ? residual_like(*residual, out) : at::Tensor();
  const int64_t n = out.numel();
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "conv_bn_act_cpu", [&] {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    if (res.defined()) {
      const scalar_t* r = res.const_data_ptr<scalar_t>();
      relu ? epilogue<scalar_t, true, true>(o, r, n) : epilogue<scalar_t, true, false>(o, r, n);
    } else {
      epilogue<scalar_t, false, true>(o, nullptr, n);
    }
  });
  return out;
}

}  // namespace
}  // namespace scratchdet

TORCH_LIBRARY_IMPL(scratchdet, CPU, m) {
  m.impl("conv_bn_act", &scratchdet::conv_bn_act_cpu);
}
