// box_iou(boxes1 [N,4], boxes2 [M,4]) -> [N,M]: pairwise IoU of (x1,y1,x2,y2) boxes.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/library.h>

namespace scratchdet {
namespace {

// Half-precision boxes lose too much in the subtraction: compute in float32.
at::Tensor box_iou_autocast(const at::Tensor& boxes1, const at::Tensor& boxes2,
                            c10::DispatchKey key, c10::DeviceType device) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("scratchdet::box_iou", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(at::autocast::cached_cast(at::kFloat, boxes1, device),
                 at::autocast::cached_cast(at::kFloat, boxes2, device));
}

}  // namespace
}  // namespace scratchdet

TORCH_LIBRARY_FRAGMENT(scratchdet, m) {
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
}

TORCH_LIBRARY_IMPL(scratchdet, AutocastCPU, m) {
  m.impl("box_iou", [](const at::Tensor& a, const at::Tensor& b) {
    return scratchdet::box_iou_autocast(a, b, c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU);
  });
}

TORCH_LIBRARY_IMPL(scratchdet, AutocastCUDA, m) {
  m.impl("box_iou", [](const at::Tensor& a, const at::Tensor& b) {
    return scratchdet::box_iou_autocast(a, b, c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA);
  });
}
