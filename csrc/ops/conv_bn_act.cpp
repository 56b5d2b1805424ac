// conv_bn_act(input, weight, bias?, residual?, stride, padding, dilation, groups, relu) -> Tensor:
// relu?(conv2d(input, weight, bias) + residual?), the inference form of Conv-BN(-add)(-ReLU)
// once BatchNorm is folded into weight and bias.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/library.h>

namespace scratchdet {
namespace {

using ConvBnActFn = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                               const std::optional<at::Tensor>&, at::IntArrayRef, at::IntArrayRef,
                               at::IntArrayRef, int64_t, bool);

// Like aten::conv2d under autocast: everything runs in the autocast dtype.
at::Tensor conv_bn_act_autocast(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias,
                                const std::optional<at::Tensor>& residual, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                bool relu, c10::DispatchKey key, c10::DeviceType device) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("scratchdet::conv_bn_act", "")
                       .typed<ConvBnActFn>();
  const auto dtype = at::autocast::get_lower_precision_fp_from_device_type(device);
  return op.call(at::autocast::cached_cast(dtype, input, device),
                 at::autocast::cached_cast(dtype, weight, device),
                 at::autocast::cached_cast(dtype, bias, device),
                 at::autocast::cached_cast(dtype, residual, device), stride, padding, dilation, groups,
                 relu);
}

}  // namespace
}  // namespace scratchdet

TORCH_LIBRARY_FRAGMENT(scratchdet, m) {
  m.def(
      "conv_bn_act(Tensor input, Tensor weight, Tensor? bias, Tensor? residual, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups, bool relu) -> Tensor");
}

TORCH_LIBRARY_IMPL(scratchdet, AutocastCPU, m) {
  m.impl("conv_bn_act", [](const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                           const std::optional<at::Tensor>& r, at::IntArrayRef s, at::IntArrayRef p,
                           at::IntArrayRef d, int64_t g, bool relu) {
    return scratchdet::conv_bn_act_autocast(x, w, b, r, s, p, d, g, relu, c10::DispatchKey::AutocastCPU,
                                            c10::DeviceType::CPU);
  });
}

TORCH_LIBRARY_IMPL(scratchdet, AutocastCUDA, m) {
  m.impl("conv_bn_act", [](const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                           const std::optional<at::Tensor>& r, at::IntArrayRef s, at::IntArrayRef p,
                           at::IntArrayRef d, int64_t g, bool relu) {
    return scratchdet::conv_bn_act_autocast(x, w, b, r, s, p, d, g, relu, c10::DispatchKey::AutocastCUDA,
                                            c10::DeviceType::CUDA);
  });
}
