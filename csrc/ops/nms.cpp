// batched_nms(boxes [N,4], scores [N], idxs [N], iou_threshold) -> keep [K] int64
//   torchvision.ops.batched_nms, same indices in the same order.
// detect(loc [B,P,4], logits [B,P,C], priors [P,4], ...) -> (boxes [B,K,4], scores [B,K], labels [B,K],
//   num_detections [B]): SSD detection output, see scratchdet/ops/reference.py.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

namespace scratchdet {
namespace {

using DetectOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// NMS is decided by "IoU > threshold": half precision moves that decision, so
// autocast runs both ops in float32, as torchvision does for nms.
at::Tensor batched_nms_autocast(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                                double iou_threshold, c10::DispatchKey key, c10::DeviceType device) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("scratchdet::batched_nms", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>();
  return op.call(at::autocast::cached_cast(at::kFloat, boxes, device),
                 at::autocast::cached_cast(at::kFloat, scores, device), idxs, iou_threshold);
}

DetectOut detect_autocast(const at::Tensor& loc, const at::Tensor& logits, const at::Tensor& priors,
                          at::ArrayRef<double> variances, double score_threshold, double nms_threshold,
                          int64_t top_k, int64_t keep_top_k, bool clip, c10::DispatchKey key,
                          c10::DeviceType device) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("scratchdet::detect", "")
                       .typed<DetectOut(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        at::ArrayRef<double>, double, double, int64_t, int64_t, bool)>();
  return op.call(at::autocast::cached_cast(at::kFloat, loc, device),
                 at::autocast::cached_cast(at::kFloat, logits, device),
                 at::autocast::cached_cast(at::kFloat, priors, device), variances, score_threshold,
                 nms_threshold, top_k, keep_top_k, clip);
}

template <c10::DispatchKey key, c10::DeviceType device>
at::Tensor batched_nms_autocast_impl(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                                     double iou_threshold) {
  return batched_nms_autocast(boxes, scores, idxs, iou_threshold, key, device);
}

template <c10::DispatchKey key, c10::DeviceType device>
DetectOut detect_autocast_impl(const at::Tensor& loc, const at::Tensor& logits, const at::Tensor& priors,
                               at::ArrayRef<double> variances, double score_threshold, double nms_threshold,
                               int64_t top_k, int64_t keep_top_k, bool clip) {
  return detect_autocast(loc, logits, priors, variances, score_threshold, nms_threshold, top_k, keep_top_k,
                         clip, key, device);
}

}  // namespace
}  // namespace scratchdet

TORCH_LIBRARY_FRAGMENT(scratchdet, m) {
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  m.def("detect(Tensor loc, Tensor logits, Tensor priors, float[] variances=[0.1, 0.2], "
        "float score_threshold=0.01, float nms_threshold=0.45, int top_k=400, int keep_top_k=200, "
        "bool clip=True) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(scratchdet, AutocastCPU, m) {
  using namespace scratchdet;
  m.impl("batched_nms", &batched_nms_autocast_impl<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
  m.impl("detect", &detect_autocast_impl<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(scratchdet, AutocastCUDA, m) {
  using namespace scratchdet;
  m.impl("batched_nms", &batched_nms_autocast_impl<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
  m.impl("detect", &detect_autocast_impl<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
}
