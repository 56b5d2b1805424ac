// match_priors(priors [P,4], gt_boxes [B,G,4], gt_labels [B,G], iou_threshold, variances)
//   -> (loc_t [B,P,4], conf_t [B,P] int64, matched_iou [B,P]): SSD prior matching.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include <tuple>

namespace scratchdet {
namespace {

using MatchOut = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// Matching compares IoUs for ties and against the threshold: half precision
// would change which prior wins. Compute in float32, as the reference does.
MatchOut match_priors_autocast(const at::Tensor& priors, const at::Tensor& gt_boxes,
                               const at::Tensor& gt_labels, double iou_threshold,
                               c10::ArrayRef<double> variances, c10::DispatchKey key,
                               c10::DeviceType device) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("scratchdet::match_priors", "")
                       .typed<MatchOut(const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                                       c10::ArrayRef<double>)>();
  return op.call(at::autocast::cached_cast(at::kFloat, priors, device),
                 at::autocast::cached_cast(at::kFloat, gt_boxes, device), gt_labels, iou_threshold,
                 variances);
}

}  // namespace
}  // namespace scratchdet

TORCH_LIBRARY_FRAGMENT(scratchdet, m) {
  m.def(
      "match_priors(Tensor priors, Tensor gt_boxes, Tensor gt_labels, float iou_threshold=0.5, "
      "float[] variances=[0.1, 0.2]) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(scratchdet, AutocastCPU, m) {
  m.impl("match_priors", [](const at::Tensor& p, const at::Tensor& g, const at::Tensor& l, double t,
                            c10::ArrayRef<double> v) {
    return scratchdet::match_priors_autocast(p, g, l, t, v, c10::DispatchKey::AutocastCPU,
                                             c10::DeviceType::CPU);
  });
}

TORCH_LIBRARY_IMPL(scratchdet, AutocastCUDA, m) {
  m.impl("match_priors", [](const at::Tensor& p, const at::Tensor& g, const at::Tensor& l, double t,
                            c10::ArrayRef<double> v) {
    return scratchdet::match_priors_autocast(p, g, l, t, v, c10::DispatchKey::AutocastCUDA,
                                             c10::DeviceType::CUDA);
  });
}
