// match_priors: schema, typed API and autocast. Kernels: cpu/match_priors_kernel.cpp,
// cuda/match_priors_kernel.cu.
#include "match_priors.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/autocast.h"

namespace scratchdet {
namespace ops {

std::tuple<at::Tensor, at::Tensor, at::Tensor> match_priors(const at::Tensor& priors, const at::Tensor& gt_boxes,
                                                            const at::Tensor& gt_labels, double iou_threshold,
                                                            c10::ArrayRef<double> variances) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("scratchdet::match_priors", "")
                       .typed<decltype(match_priors)>();
  return op.call(priors, gt_boxes, gt_labels, iou_threshold, variances);
}

}  // namespace ops
}  // namespace scratchdet

TORCH_LIBRARY_FRAGMENT(scratchdet, m) {
  m.def("match_priors(Tensor priors, Tensor gt_boxes, Tensor gt_labels, float iou_threshold=0.5, "
        "float[] variances=[0.1, 0.2]) -> (Tensor, Tensor, Tensor)");
}

// Matching compares IoUs for ties and against the threshold: half precision would change which
// prior wins. Autocast computes in float32, as the reference does (gt_labels stays int64).
SCRATCHDET_REGISTER_AUTOCAST(match_priors, kFloat32)
