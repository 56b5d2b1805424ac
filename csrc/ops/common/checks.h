#pragma once
// Argument checks shared by every op's dispatch file. Messages name the
// argument, what was expected and what was given.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace scratchdet {

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": expected ", name,
              " to be a floating-point tensor (float16, bfloat16, float32 or float64), got ",
              t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* op, const char* name,
                      const char* shape) {
  TORCH_CHECK(t.dim() == dim, op, ": expected ", name, " of shape ", shape, ", got shape ",
              t.sizes());
}

inline void check_last_dim(const at::Tensor& t, int64_t size, const char* op, const char* name,
                           const char* shape) {
  TORCH_CHECK(t.dim() >= 1 && t.size(-1) == size, op, ": expected ", name, " of shape ", shape,
              ", got shape ", t.sizes());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op,
                              const char* name_a, const char* name_b) {
  TORCH_CHECK(a.device() == b.device(), op, ": expected ", name_a, " and ", name_b,
              " on the same device, got ", a.device(), " and ", b.device());
}

inline void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* op,
                             const char* name_a, const char* name_b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": expected ", name_a, " and ", name_b,
              " to have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
}

inline void check_device(const at::Tensor& t, c10::DeviceType type, const char* op,
                         const char* name) {
  TORCH_CHECK(t.device().type() == type, op, ": expected ", name, " on ", type, ", got ",
              t.device());
}

}  // namespace scratchdet
