#pragma once
// conv_bn_act(input, weight, bias?, residual?, stride, padding, dilation, groups, relu) -> Tensor:
// relu?(conv2d(input, weight, bias) + residual?), the inference form of Conv-BN(-add)(-ReLU)
// once BatchNorm is folded into weight and bias. The argument checks (those of
// reference.check_conv_bn_act_args, in its order and wording) and the output-shape arithmetic
// and convolution shared by the CPU and CUDA kernels.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <c10/util/irange.h>

#include <optional>
#include <vector>

#include "common/checks.h"

namespace scratchdet {
namespace ops {

// Through the dispatcher (CPU / CUDA kernel, autocast): the op as torch.ops.scratchdet.conv_bn_act.
at::Tensor conv_bn_act(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& residual, at::IntArrayRef stride, at::IntArrayRef padding,
                       at::IntArrayRef dilation, int64_t groups, bool relu);

}  // namespace ops

// stride, padding or dilation: two values (h, w), each >= min_value.
inline void check_conv_pair(at::IntArrayRef v, int64_t min_value, const char* name) {
  TORCH_CHECK(v.size() == 2, "conv_bn_act: expected ", name, " to have 2 values (h, w), got ", v);
  for (const auto x : v) {
    TORCH_CHECK(x >= min_value, "conv_bn_act: expected every ", name, " value >= ", min_value,
                ", got ", v);
  }
}

// Validates every argument and returns the output shape [N, C_out, H_out, W_out].
inline std::vector<int64_t> check_conv_bn_act_args(const at::Tensor& input, const at::Tensor& weight,
                                                   const std::optional<at::Tensor>& bias,
                                                   const std::optional<at::Tensor>& residual,
                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                   at::IntArrayRef dilation, int64_t groups) {
  constexpr const char* op = "conv_bn_act";
  check_shape(input, 4, kAnySize, op, "input", "[N, C_in, H, W]");
  check_shape(weight, 4, kAnySize, op, "weight", "[C_out, C_in / groups, kH, kW]");
  check_floating(input, op, "input");
  check_same_dtype(input, weight, op, "input", "weight");
  check_same_device(input, weight, op, "input", "weight");
  check_conv_pair(stride, 1, "stride");
  check_conv_pair(padding, 0, "padding");
  check_conv_pair(dilation, 1, "dilation");
  TORCH_CHECK(groups >= 1, op, ": expected groups >= 1, got ", groups);
  const int64_t c_in = input.size(1), c_out = weight.size(0);
  TORCH_CHECK(c_in % groups == 0 && c_out % groups == 0 && weight.size(1) * groups == c_in, op,
              ": expected weight of shape [C_out, C_in / groups, kH, kW] with C_in = ", c_in,
              " and groups = ", groups, ", got weight shape ", weight.sizes());
  std::vector<int64_t> out_shape{input.size(0), c_out, 0, 0};
  for (const auto d : c10::irange(2)) {
    const int64_t extent = dilation[d] * (weight.size(2 + d) - 1) + 1;
    const int64_t padded = input.size(2 + d) + 2 * padding[d];
    TORCH_CHECK(padded >= extent, op, ": the kernel (", weight.sizes(), ", dilation ", dilation,
                ") is larger than the padded input (", input.sizes(), ", padding ", padding, ")");
    out_shape[2 + d] = (padded - extent) / stride[d] + 1;
  }
  check_bias_and_residual(input, bias, residual, out_shape, op);
  return out_shape;
}

// The convolution itself (oneDNN on CPU, cuDNN on CUDA, through ATen's dispatch). The output is
// laid out like the input (NCHW or channels_last), whatever the backend picked, so the fake
// kernel can promise its strides.
inline at::Tensor conv_bn_act_convolution(const at::Tensor& input, const at::Tensor& weight,
                                          const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                          at::IntArrayRef padding, at::IntArrayRef dilation,
                                          int64_t groups) {
  const auto format = input.suggest_memory_format();
  auto out = at::convolution(input, weight, bias, stride, padding, dilation, /*transposed=*/false,
                             /*output_padding=*/{0, 0}, groups);
  return out.is_contiguous(format) ? out : out.contiguous(format);
}

// The residual with exactly the output's strides, so the epilogue walks both buffers flat.
inline at::Tensor residual_like(const at::Tensor& residual, const at::Tensor& out) {
  return residual.strides() == out.strides() ? residual
                                             : residual.contiguous(out.suggest_memory_format());
}

}  // namespace scratchdet
