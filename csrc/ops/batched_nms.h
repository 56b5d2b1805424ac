#pragma once
// batched_nms(boxes [N, 4], scores [N], idxs [N], iou_threshold) -> keep [K] int64:
// torchvision.ops.batched_nms, the same indices in the same order.
#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdint>

#include "common/checks.h"

namespace scratchdet {
namespace ops {

// Through the dispatcher (CPU / CUDA kernel, autocast): the op as torch.ops.scratchdet.batched_nms.
at::Tensor batched_nms(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                       double iou_threshold);

}  // namespace ops

// torchvision switches from one NMS over class-offset boxes to a per-class loop
// above these sizes (boxes.numel()); the offsets change IoU rounding, so to
// return exactly what torchvision returns we follow the same switch.
constexpr int64_t kTorchvisionVanillaNumelCPU = 4000;
constexpr int64_t kTorchvisionVanillaNumelCUDA = 100000;

// The checks of reference.check_batched_nms_args, in its order and wording.
inline void check_batched_nms_args(const at::Tensor& boxes, const at::Tensor& scores,
                                   const at::Tensor& idxs, double iou_threshold) {
  constexpr const char* op = "batched_nms";
  check_shape(boxes, 2, 4, op, "boxes", "[N, 4]");
  check_shape(scores, 1, kAnySize, op, "scores", "[N]");
  check_shape(idxs, 1, kAnySize, op, "idxs", "[N]");
  const auto t = boxes.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf, op,
              ": expected boxes to be float16, float32 or float64, got ", dtype_name(t));
  check_same_dtype(boxes, scores, op, "boxes", "scores");
  TORCH_CHECK(at::isIntegralType(idxs.scalar_type(), /*includeBool=*/false), op,
              ": expected idxs to be an integer tensor, got ", dtype_name(idxs.scalar_type()));
  TORCH_CHECK(scores.size(0) == boxes.size(0) && idxs.size(0) == boxes.size(0), op,
              ": expected boxes [N, 4], scores [N] and idxs [N] to agree on N, got ", boxes.sizes(),
              ", ", scores.sizes(), " and ", idxs.sizes());
  check_same_device(boxes, scores, op, "boxes", "scores");
  check_same_device(boxes, idxs, op, "boxes", "idxs");
  TORCH_CHECK(!std::isnan(iou_threshold), op, ": expected a number as iou_threshold, got NaN");
}

}  // namespace scratchdet
