#pragma once
// batch_norm_relu(input, weight?, bias?, residual?, eps, relu) -> (out, save_mean, save_invstd):
//   training-mode BatchNorm2d (batch statistics, biased variance for the normalisation) with the
//   residual add and the ReLU after it in the same pass: out = relu?(bn(input) + residual?).
// batch_norm_relu_backward(grad_out, out, input, weight?, save_mean, save_invstd, relu, residual)
//   -> (grad_input, grad_weight, grad_bias, grad_residual): its gradient (grad_residual is an
//   empty tensor unless `residual`).
// The running statistics are the caller's (scratchdet.models.BNReLU2d updates them from
// save_mean / save_invstd as nn.BatchNorm2d does). The checks below are those of
// reference.check_batch_norm_relu_args / check_batch_norm_relu_backward_args, same order and wording.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <optional>
#include <tuple>

#include "common/checks.h"

namespace scratchdet {
namespace ops {

// Through the dispatcher (CPU / CUDA kernel): the ops as torch.ops.scratchdet.batch_norm_relu(_backward).
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_relu(const at::Tensor& input,
                                                               const std::optional<at::Tensor>& weight,
                                                               const std::optional<at::Tensor>& bias,
                                                               const std::optional<at::Tensor>& residual,
                                                               double eps, bool relu);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_relu_backward(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const at::Tensor& save_mean, const at::Tensor& save_invstd, bool relu, bool residual);

}  // namespace ops

// A per-channel parameter: [C], floating point, on input's device, in input's dtype (or float32
// for a float16 / bfloat16 input, as BatchNorm keeps its parameters under mixed precision).
inline void check_channel_param(const at::Tensor& input, const at::Tensor& p, const char* op, const char* name) {
  const int64_t c = input.size(1);
  TORCH_CHECK(p.dim() == 1 && p.size(0) == c, op, ": expected ", name, " of shape [", c, "], got shape ", p.sizes());
  const bool reduced = input.scalar_type() == at::kHalf || input.scalar_type() == at::kBFloat16;
  TORCH_CHECK(p.scalar_type() == input.scalar_type() || (reduced && p.scalar_type() == at::kFloat), op,
              ": expected ", name, " of dtype ", dtype_name(input.scalar_type()),
              reduced ? " or torch.float32" : "", " (the input's), got ", dtype_name(p.scalar_type()));
  check_same_device(input, p, op, "input", name);
}

inline void check_batch_norm_relu_args(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                                       const std::optional<at::Tensor>& bias,
                                       const std::optional<at::Tensor>& residual, double eps) {
  constexpr const char* op = "batch_norm_relu";
  check_shape(input, 4, kAnySize, op, "input", "[N, C, H, W]");
  check_floating(input, op, "input");
  if (weight.has_value()) check_channel_param(input, *weight, op, "weight");
  if (bias.has_value()) check_channel_param(input, *bias, op, "bias");
  if (residual.has_value()) {
    TORCH_CHECK(residual->sizes() == input.sizes(), op, ": expected residual of the input's shape ", input.sizes(),
                ", got shape ", residual->sizes());
    check_same_dtype(input, *residual, op, "input", "residual");
    check_same_device(input, *residual, op, "input", "residual");
  }
  TORCH_CHECK(eps > 0.0, op, ": expected eps > 0, got ", eps);
  TORCH_CHECK(input.size(1) > 0 && input.numel() / input.size(1) > 1, op,
              ": expected more than 1 value per channel when training, got input of shape ", input.sizes());
}

inline void check_batch_norm_relu_backward_args(const at::Tensor& grad_out, const at::Tensor& out,
                                                const at::Tensor& input, const std::optional<at::Tensor>& weight,
                                                const at::Tensor& save_mean, const at::Tensor& save_invstd) {
  constexpr const char* op = "batch_norm_relu_backward";
  check_shape(input, 4, kAnySize, op, "input", "[N, C, H, W]");
  check_floating(input, op, "input");
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{grad_out, "grad_out"},
                                std::pair<const at::Tensor&, const char*>{out, "out"}}) {
    TORCH_CHECK(t.sizes() == input.sizes(), op, ": expected ", name, " of the input's shape ", input.sizes(),
                ", got shape ", t.sizes());
    check_same_dtype(input, t, op, "input", name);
    check_same_device(input, t, op, "input", name);
  }
  if (weight.has_value()) check_channel_param(input, *weight, op, "weight");
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{save_mean, "save_mean"},
                                std::pair<const at::Tensor&, const char*>{save_invstd, "save_invstd"}}) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == input.size(1), op, ": expected ", name, " of shape [", input.size(1),
                "], got shape ", t.sizes());
    check_same_device(input, t, op, "input", name);
  }
}

}  // namespace scratchdet
