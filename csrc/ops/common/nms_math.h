#pragma once
// torchvision's NMS, op for op, shared by batched_nms and detect (CPU and CUDA):
// the overlap of two boxes, the "IoU > threshold" test and the order boxes are
// visited in. Following torchvision exactly (not box_math.h's iou_xyxy) is what
// makes both ops return torchvision's answer bit for bit, ties and NaN included.
#include <cmath>

#include "macros.h"

namespace scratchdet {
namespace math {

// std::max and std::min as torchvision calls them (argument order included, so NaN
// coordinates behave the same).
template <typename T>
SD_HOST_DEVICE T tv_max(T a, T b) { return a < b ? b : a; }
template <typename T>
SD_HOST_DEVICE T tv_min(T a, T b) { return b < a ? b : a; }

// Overlap of box a, the kept (higher-scoring) one, with box b, given their areas. T may be
// c10::Half, whose operators round every step to half as torchvision's CPU kernel does.
template <typename T>
SD_HOST_DEVICE T nms_overlap(T ax1, T ay1, T ax2, T ay2, T area_a,
                             T bx1, T by1, T bx2, T by2, T area_b) {
  const T xx1 = tv_max(ax1, bx1);
  const T yy1 = tv_max(ay1, by1);
  const T xx2 = tv_min(ax2, bx2);
  const T yy2 = tv_min(ay2, by2);
  const T w = tv_max(static_cast<T>(0), static_cast<T>(xx2 - xx1));
  const T h = tv_max(static_cast<T>(0), static_cast<T>(yy2 - yy1));
  const T inter = w * h;
  return inter / static_cast<T>(static_cast<T>(area_a + area_b) - inter);
}

// "IoU > threshold" as torchvision compares it: the IoU widened to double.
template <typename T>
SD_HOST_DEVICE bool nms_suppresses(T overlap, double threshold) {
  return static_cast<double>(static_cast<float>(overlap)) > threshold;
}
SD_HOST_DEVICE bool nms_suppresses(double overlap, double threshold) { return overlap > threshold; }

// The order NMS visits boxes in, torch.sort(descending=True, stable=True)'s: NaN scores first,
// then larger (equal scores keep their index order under a stable sort). Host only: the CUDA
// kernels get this order from at::sort itself.
template <typename T>
inline bool nms_score_before(T a, T b) {
  const bool a_nan = std::isnan(static_cast<double>(a)), b_nan = std::isnan(static_cast<double>(b));
  if (a_nan || b_nan) return a_nan && !b_nan;
  return a > b;
}

}  // namespace math
}  // namespace scratchdet
