// conv_bn_act: schema, typed API and autocast. Kernels: cpu/conv_bn_act_kernel.cpp,
// cuda/conv_bn_act_kernel.cu.
#include "conv_bn_act.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/autocast.h"

namespace scratchdet {
namespace ops {

at::Tensor conv_bn_act(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& residual, at::IntArrayRef stride, at::IntArrayRef padding,
                       at::IntArrayRef dilation, int64_t groups, bool relu) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("scratchdet::conv_bn_act", "")
                       .typed<decltype(conv_bn_act)>();
  return op.call(input, weight, bias, residual, stride, padding, dilation, groups, relu);
}

}  // namespace ops
}  // namespace scratchdet

TORCH_LIBRARY_FRAGMENT(scratchdet, m) {
  m.def("conv_bn_act(Tensor input, Tensor weight, Tensor? bias, Tensor? residual, int[2] stride, "
        "int[2] padding, int[2] dilation, int groups, bool relu) -> Tensor");
}

// Like aten::conv2d under autocast: every floating-point operand in the autocast dtype.
SCRATCHDET_REGISTER_AUTOCAST(conv_bn_act, kLowerPrecision)
