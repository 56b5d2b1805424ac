// winograd_conv3x3(input, packed_weight, bias?, residual?, relu) -> Tensor:
//   relu?(conv2d(input, weight, bias, stride 1, padding 1) + residual?)
// by Winograd F(4x4, 3x3), with packed_weight = winograd_f43_pack(weight) done once.
// The CPU path of the fused network for its 3x3 stride-1 convs, which are ~90 % of its
// time: the GEMM stage does 36 multiplies per 4x4 outputs instead of 144.
//
// winograd_f43_pack(weight [C_out, C_in, 3, 3]) -> Tensor [36, C_in, C_out] (float32):
//   G g G^T for every filter, computed in double.
//
// CPU only. On CUDA, conv_bn_act goes through cuDNN, which has its own Winograd kernels
// and picks them itself; a CUDA tensor here gets a clear error, not a silent copy.
#include <ATen/ATen.h>
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(scratchdet, m) {
  m.def("winograd_conv3x3(Tensor input, Tensor packed_weight, Tensor? bias, Tensor? residual, bool relu) -> Tensor");
  m.def("winograd_f43_pack(Tensor weight) -> Tensor");
}

namespace {

[[noreturn]] void winograd_not_on_cuda(const char* op) {
  TORCH_CHECK(false, op, ": CPU only (on CUDA, conv_bn_act runs through cuDNN, which picks its own "
              "Winograd kernels); move the tensors to the CPU or use scratchdet.ops.conv_bn_act");
}

}  // namespace

TORCH_LIBRARY_IMPL(scratchdet, CUDA, m) {
  m.impl("winograd_conv3x3", [](const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                const std::optional<at::Tensor>&, bool) -> at::Tensor {
    winograd_not_on_cuda("winograd_conv3x3");
  });
  m.impl("winograd_f43_pack", [](const at::Tensor&) -> at::Tensor { winograd_not_on_cuda("winograd_f43_pack"); });
}
