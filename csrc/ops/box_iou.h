#pragma once
#include <ATen/core/Tensor.h>

#include "common/checks.h"

namespace scratchdet {

inline void check_box_iou_args(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_dim(boxes1, 2, "box_iou", "boxes1", "[N, 4]");
  check_last_dim(boxes1, 4, "box_iou", "boxes1", "[N, 4]");
  check_dim(boxes2, 2, "box_iou", "boxes2", "[M, 4]");
  check_last_dim(boxes2, 4, "box_iou", "boxes2", "[M, 4]");
  check_floating(boxes1, "box_iou", "boxes1");
  check_same_dtype(boxes1, boxes2, "box_iou", "boxes1", "boxes2");
  check_same_device(boxes1, boxes2, "box_iou", "boxes1", "boxes2");
}

}  // namespace scratchdet
