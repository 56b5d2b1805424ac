// batch_norm_relu and batch_norm_relu_backward: schemas and typed API. Kernels:
// cpu/batch_norm_relu_kernel.cpp (channels_last passes, float32 / float64),
// cuda/batch_norm_relu_kernel.cu (ATen's batch norm plus the shared epilogue).
// The autograd formula joining the two is registered in scratchdet/ops/_registrations.py.
// No autocast kernel: BatchNorm keeps the dtype it is given (float32 parameters with a
// reduced-precision input under mixed precision), so autocast passes the arguments through.
#include "batch_norm_relu.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace scratchdet {
namespace ops {

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_relu(const at::Tensor& input,
                                                               const std::optional<at::Tensor>& weight,
                                                               const std::optional<at::Tensor>& bias,
                                                               const std::optional<at::Tensor>& residual,
                                                               double eps, bool relu) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("scratchdet::batch_norm_relu", "")
                       .typed<decltype(batch_norm_relu)>();
  return op.call(input, weight, bias, residual, eps, relu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_relu_backward(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const at::Tensor& save_mean, const at::Tensor& save_invstd, bool relu, bool residual) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("scratchdet::batch_norm_relu_backward", "")
                       .typed<decltype(batch_norm_relu_backward)>();
  return op.call(grad_out, out, input, weight, save_mean, save_invstd, relu, residual);
}

}  // namespace ops
}  // namespace scratchdet

TORCH_LIBRARY_FRAGMENT(scratchdet, m) {
  m.def("batch_norm_relu(Tensor input, Tensor? weight, Tensor? bias, Tensor? residual, float eps, bool relu) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("batch_norm_relu_backward(Tensor grad_out, Tensor out, Tensor input, Tensor? weight, Tensor save_mean, "
        "Tensor save_invstd, bool relu, bool residual) -> (Tensor, Tensor, Tensor, Tensor)");
}
