#pragma once
// The autocast kernels of the ops: one template, not a wrapper per op. Under autocast the kernel
// casts each floating-point Tensor / optional<Tensor> argument by the op's policy
// (at::autocast::cached_cast leaves integer and float64 tensors alone), passes every other
// argument through, and calls the op's typed API with autocast excluded, so the call reaches the
// CPU or CUDA kernel. An op registers its AutocastCPU and AutocastCUDA kernels in its <op>.cpp:
//
//   SCRATCHDET_REGISTER_AUTOCAST(box_iou, kFloat32)
//
// (a macro, as ATen's autocast_mode.cpp registers its own ops with KERNEL_CPU / KERNEL_CUDA).
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

namespace scratchdet {
namespace autocast {

enum class CastPolicy {
  kFloat32,         // results hang on comparisons (IoU ties, thresholds) that half precision moves
  kLowerPrecision,  // the autocast dtype (float16 / bfloat16), as aten::conv2d
};

template <c10::DeviceType kDevice, CastPolicy kPolicy, auto kFn>
struct Kernel;

// kFn is the op's typed API, Ret(Args...): the kernel has the op's own signature.
template <c10::DeviceType kDevice, CastPolicy kPolicy, class Ret, class... Args, Ret (*kFn)(Args...)>
struct Kernel<kDevice, kPolicy, kFn> {
  static Ret call(Args... args) {
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(
        at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
    const at::ScalarType dtype = kPolicy == CastPolicy::kFloat32
                                     ? at::kFloat
                                     : at::autocast::get_lower_precision_fp_from_device_type(kDevice);
    return kFn(at::autocast::cached_cast(dtype, args, kDevice)...);
  }
};

}  // namespace autocast
}  // namespace scratchdet

// The AutocastCPU and AutocastCUDA kernels of scratchdet::<op>: Kernel<device, policy, &ops::<op>>.
#define SCRATCHDET_REGISTER_AUTOCAST(op, policy)               \
  TORCH_LIBRARY_IMPL(scratchdet, AutocastCPU, m) {             \
    m.impl(#op, SCRATCHDET_AUTOCAST_KERNEL(CPU, op, policy));  \
  }                                                            \
  TORCH_LIBRARY_IMPL(scratchdet, AutocastCUDA, m) {            \
    m.impl(#op, SCRATCHDET_AUTOCAST_KERNEL(CUDA, op, policy)); \
  }

#define SCRATCHDET_AUTOCAST_KERNEL(device, op, policy)                                                  \
  &::scratchdet::autocast::Kernel<c10::DeviceType::device, ::scratchdet::autocast::CastPolicy::policy, \
                                  &::scratchdet::ops::op>::call
