#pragma once
// box_iou(boxes1 [N, 4], boxes2 [M, 4]) -> [N, M]: pairwise IoU of (x1, y1, x2, y2) boxes.
#include <ATen/core/Tensor.h>

#include "common/checks.h"

namespace scratchdet {
namespace ops {

// Through the dispatcher (CPU / CUDA kernel, autocast): the op as torch.ops.scratchdet.box_iou.
at::Tensor box_iou(const at::Tensor& boxes1, const at::Tensor& boxes2);

}  // namespace ops

// The checks of reference.check_box_iou_args, in its order and wording.
inline void check_box_iou_args(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  constexpr const char* op = "box_iou";
  check_shape(boxes1, 2, 4, op, "boxes1", "[N, 4]");
  check_shape(boxes2, 2, 4, op, "boxes2", "[M, 4]");
  check_floating(boxes1, op, "boxes1");
  check_same_dtype(boxes1, boxes2, op, "boxes1", "boxes2");
  check_same_device(boxes1, boxes2, op, "boxes1", "boxes2");
}

}  // namespace scratchdet
