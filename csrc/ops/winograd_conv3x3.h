#pragma once
// winograd_conv3x3(input, packed_weight, bias?, residual?, relu) -> Tensor:
//   relu?(conv2d(input, weight, bias, stride 1, padding 1) + residual?) by Winograd F(4x4, 3x3)
//   with packed_weight = winograd_f43_pack(weight), or F(6x6, 3x3) with winograd_f63_pack(weight),
//   packed once.
// winograd_f43_pack(weight [C_out, C_in, 3, 3]) -> [36, C_in, C_out] float32 and
// winograd_f63_pack(weight) -> [64, C_in, C_out]: G g G^T of every filter, computed in double.
// The argument checks, those of reference.check_winograd_conv3x3_args and
// reference.check_winograd_f43_pack_args / check_winograd_f63_pack_args, in their order and wording.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <limits>
#include <optional>
#include <vector>

#include "common/checks.h"
#include "common/winograd_f43.h"
#include "common/winograd_f63.h"

namespace scratchdet {
namespace ops {

// Through the dispatcher: the ops as torch.ops.scratchdet.winograd_conv3x3 / winograd_f43_pack /
// winograd_f63_pack.
at::Tensor winograd_conv3x3(const at::Tensor& input, const at::Tensor& packed_weight,
                            const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                            bool relu);
at::Tensor winograd_f43_pack(const at::Tensor& weight);
at::Tensor winograd_f63_pack(const at::Tensor& weight);

}  // namespace ops

// Validates every argument of winograd_conv3x3 (3x3, stride 1, padding 1, dilation 1, groups 1).
inline void check_winograd_conv3x3_args(const at::Tensor& input, const at::Tensor& packed_weight,
                                        const std::optional<at::Tensor>& bias,
                                        const std::optional<at::Tensor>& residual) {
  constexpr const char* op = "winograd_conv3x3";
  check_shape(input, 4, kAnySize, op, "input", "[N, C_in, H, W]");
  check_shape(packed_weight, 3, kAnySize, op, "packed_weight",
              "[36 or 64, C_in, C_out] (from winograd_f43_pack or winograd_f63_pack)");
  TORCH_CHECK(input.scalar_type() == at::kFloat, op, ": expected input of dtype float32, got ",
              dtype_name(input.scalar_type()),
              " (the Winograd path is float32-only; use conv_bn_act for other dtypes)");
  check_same_dtype(input, packed_weight, op, "input", "packed_weight");
  check_same_device(input, packed_weight, op, "input", "packed_weight");
  TORCH_CHECK((packed_weight.size(0) == 36 || packed_weight.size(0) == 64) && packed_weight.size(1) == input.size(1),
              op, ": expected packed_weight of shape [36 or 64, C_in, C_out] with C_in = ", input.size(1),
              " (from winograd_f43_pack or winograd_f63_pack), got shape ", packed_weight.sizes());
  const std::vector<int64_t> out_shape{input.size(0), packed_weight.size(2), input.size(2), input.size(3)};
  check_bias_and_residual(input, bias, residual, out_shape, op);
  // The CPU kernel (the op's only one) hands the channel counts to BLAS as 32-bit ints.
  constexpr int64_t max_channels = std::numeric_limits<int>::max() / 64;
  TORCH_CHECK(input.size(1) <= max_channels && packed_weight.size(2) <= max_channels, op,
              ": expected fewer than 2^31 / 64 channels (BLAS takes 32-bit sizes), got C_in = ", input.size(1),
              " and C_out = ", packed_weight.size(2));
}

// op: winograd_f43_pack or winograd_f63_pack.
inline void check_winograd_pack_args(const at::Tensor& weight, const char* op) {
  check_shape(weight, 4, kAnySize, op, "weight", "[C_out, C_in, 3, 3]");
  TORCH_CHECK(weight.size(2) == 3 && weight.size(3) == 3, op, ": expected a 3x3 weight [C_out, C_in, 3, 3], got shape ",
              weight.sizes());
  TORCH_CHECK(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble, op,
              ": expected weight of dtype float32 or float64, got ", dtype_name(weight.scalar_type()));
}

}  // namespace scratchdet
