// box_iou: schema, typed API and autocast. Kernels: cpu/box_iou_kernel.cpp, cuda/box_iou_kernel.cu.
#include "box_iou.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/autocast.h"

namespace scratchdet {
namespace ops {

at::Tensor box_iou(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("scratchdet::box_iou", "").typed<decltype(box_iou)>();
  return op.call(boxes1, boxes2);
}

}  // namespace ops
}  // namespace scratchdet

TORCH_LIBRARY_FRAGMENT(scratchdet, m) {
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
}

// Half-precision boxes lose too much in the subtraction: autocast computes in float32.
SCRATCHDET_REGISTER_AUTOCAST(box_iou, kFloat32)
