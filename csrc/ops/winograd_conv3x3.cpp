// winograd_conv3x3, winograd_f43_pack and winograd_f63_pack: schemas, typed API and the CUDA refusal. Kernels:
// cpu/winograd_conv3x3_kernel.cpp (the CPU path of the fused network for its 3x3 stride-1 convs).
//
// CPU only. On CUDA, conv_bn_act goes through cuDNN, which has its own Winograd kernels and picks
// them itself; a CUDA tensor here gets a clear error, not a silent copy. No autocast kernel: the
// ops are float32-only, so autocast passes their arguments through uncast.
#include "winograd_conv3x3.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace scratchdet {
namespace ops {

at::Tensor winograd_conv3x3(const at::Tensor& input, const at::Tensor& packed_weight,
                            const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                            bool relu) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("scratchdet::winograd_conv3x3", "")
                       .typed<decltype(winograd_conv3x3)>();
  return op.call(input, packed_weight, bias, residual, relu);
}

at::Tensor winograd_f43_pack(const at::Tensor& weight) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("scratchdet::winograd_f43_pack", "")
                       .typed<decltype(winograd_f43_pack)>();
  return op.call(weight);
}

at::Tensor winograd_f63_pack(const at::Tensor& weight) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("scratchdet::winograd_f63_pack", "")
                       .typed<decltype(winograd_f63_pack)>();
  return op.call(weight);
}

}  // namespace ops

namespace {

[[noreturn]] void winograd_not_on_cuda(const char* op) {
  TORCH_CHECK(false, op, ": CPU only (on CUDA, conv_bn_act runs through cuDNN, which picks its own "
              "Winograd kernels); move the tensors to the CPU or use scratchdet.ops.conv_bn_act");
}

}  // namespace
}  // namespace scratchdet

TORCH_LIBRARY_FRAGMENT(scratchdet, m) {
  m.def("winograd_conv3x3(Tensor input, Tensor packed_weight, Tensor? bias, Tensor? residual, bool relu) -> Tensor");
  m.def("winograd_f43_pack(Tensor weight) -> Tensor");
  m.def("winograd_f63_pack(Tensor weight) -> Tensor");
}

TORCH_LIBRARY_IMPL(scratchdet, CUDA, m) {
  m.impl("winograd_conv3x3", [](const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                const std::optional<at::Tensor>&, bool) -> at::Tensor {
    scratchdet::winograd_not_on_cuda("winograd_conv3x3");
  });
  m.impl("winograd_f43_pack", [](const at::Tensor&) -> at::Tensor {
    scratchdet::winograd_not_on_cuda("winograd_f43_pack");
  });
  m.impl("winograd_f63_pack", [](const at::Tensor&) -> at::Tensor {
    scratchdet::winograd_not_on_cuda("winograd_f63_pack");
  });
}
