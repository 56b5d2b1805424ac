#pragma once
// winograd_conv3x3: argument checks shared by the schema file and the CPU kernel.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <optional>
#include <vector>

#include "common/checks.h"
#include "common/winograd_f43.h"

namespace scratchdet {

// Validates every argument of winograd_conv3x3 (3x3, stride 1, padding 1, dilation 1, groups 1).
inline void check_winograd_conv3x3_args(const at::Tensor& input, const at::Tensor& packed_weight,
                                        const std::optional<at::Tensor>& bias,
                                        const std::optional<at::Tensor>& residual) {
  constexpr const char* op = "winograd_conv3x3";
  check_dim(input, 4, op, "input", "[N, C_in, H, W]");
  check_dim(packed_weight, 3, op, "packed_weight", "[36, C_in, C_out] (from winograd_f43_pack)");
  TORCH_CHECK(input.scalar_type() == at::kFloat, op, ": expected input of dtype float32, got ",
              input.scalar_type(), " (the Winograd path is float32-only; use conv_bn_act for other dtypes)");
  check_same_dtype(input, packed_weight, op, "input", "packed_weight");
  check_same_device(input, packed_weight, op, "input", "packed_weight");
  TORCH_CHECK(packed_weight.size(0) == kWinoTile * kWinoTile && packed_weight.size(1) == input.size(1), op,
              ": expected packed_weight of shape [36, C_in, C_out] with C_in = ", input.size(1),
              " (from winograd_f43_pack), got shape ", packed_weight.sizes());
  const std::vector<int64_t> out_shape{input.size(0), packed_weight.size(2), input.size(2), input.size(3)};
  check_bias_and_residual(input, bias, residual, out_shape, op);
}

inline void check_winograd_f43_pack_args(const at::Tensor& weight) {
  constexpr const char* op = "winograd_f43_pack";
  check_dim(weight, 4, op, "weight", "[C_out, C_in, 3, 3]");
  TORCH_CHECK(weight.size(2) == 3 && weight.size(3) == 3, op, ": expected a 3x3 weight [C_out, C_in, 3, 3], got shape ",
              weight.sizes());
  TORCH_CHECK(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble, op,
              ": expected weight of dtype float32 or float64, got ", weight.scalar_type());
}

}  // namespace scratchdet
