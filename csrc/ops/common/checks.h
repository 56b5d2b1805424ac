#pragma once
// Argument checks shared by every op. Messages name the op and the argument, what was expected and
// what was given, and read exactly like those of scratchdet/ops/_checks.py, which the reference ops
// and the fake kernels raise: dtypes as Python prints them (torch.float32), shapes as [N, 4].
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>

namespace scratchdet {

// A dtype as Python prints it: torch.int64, not Long.
inline std::string dtype_name(at::ScalarType t) {
  return "torch." + std::string(c10::getDtypeNames(t).first);
}

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": expected ", name,
              " to be a floating-point tensor (float16, bfloat16, float32 or float64), got ",
              dtype_name(t.scalar_type()));
}

// check_shape's last_dim when any size is fine.
constexpr int64_t kAnySize = -1;

// t.dim() == dim and, unless last_dim is kAnySize, t.size(-1) == last_dim.
inline void check_shape(const at::Tensor& t, int64_t dim, int64_t last_dim, const char* op, const char* name,
                        const char* shape) {
  TORCH_CHECK(t.dim() == dim && (last_dim == kAnySize || t.size(-1) == last_dim), op, ": expected ", name,
              " of shape ", shape, ", got shape ", t.sizes());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op,
                              const char* name_a, const char* name_b) {
  TORCH_CHECK(a.device() == b.device(), op, ": expected ", name_a, " and ", name_b,
              " on the same device, got ", a.device(), " and ", b.device());
}

inline void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* op,
                             const char* name_a, const char* name_b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": expected ", name_a, " and ", name_b,
              " to have the same dtype, got ", dtype_name(a.scalar_type()), " and ",
              dtype_name(b.scalar_type()));
}

// A kernel's own guard (the dispatcher picked it from the tensors' device); not an argument check,
// so the reference has no counterpart.
inline void check_device(const at::Tensor& t, c10::DeviceType type, const char* op,
                         const char* name) {
  TORCH_CHECK(t.device().type() == type, op, ": expected ", name, " on ", type, ", got ",
              t.device());
}

// The epilogue operands of the conv ops: bias [C_out] and a residual of the output's shape,
// both with the input's dtype and device.
inline void check_bias_and_residual(const at::Tensor& input, const std::optional<at::Tensor>& bias,
                                    const std::optional<at::Tensor>& residual, at::IntArrayRef out_shape,
                                    const char* op) {
  const int64_t c_out = out_shape[1];
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == c_out, op, ": expected bias of shape [", c_out,
                "], got shape ", bias->sizes());
    check_same_dtype(input, *bias, op, "input", "bias");
    check_same_device(input, *bias, op, "input", "bias");
  }
  if (residual.has_value()) {
    TORCH_CHECK(residual->sizes() == out_shape, op, ": expected residual of the output's shape ", out_shape,
                ", got shape ", residual->sizes());
    check_same_dtype(input, *residual, op, "input", "residual");
    check_same_device(input, *residual, op, "input", "residual");
  }
}

}  // namespace scratchdet
