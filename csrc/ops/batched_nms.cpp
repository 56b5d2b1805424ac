// batched_nms: schema, typed API and autocast. Kernels: cpu/batched_nms_kernel.cpp,
// cuda/batched_nms_kernel.cu.
#include "batched_nms.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/autocast.h"

namespace scratchdet {
namespace ops {

at::Tensor batched_nms(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                       double iou_threshold) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("scratchdet::batched_nms", "")
                       .typed<decltype(batched_nms)>();
  return op.call(boxes, scores, idxs, iou_threshold);
}

}  // namespace ops
}  // namespace scratchdet

TORCH_LIBRARY_FRAGMENT(scratchdet, m) {
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
}

// NMS is decided by "IoU > threshold": half precision moves that decision, so autocast runs it
// in float32, as torchvision does for nms (idxs stays an integer tensor).
SCRATCHDET_REGISTER_AUTOCAST(batched_nms, kFloat32)
