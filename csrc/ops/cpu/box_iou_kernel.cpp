#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../box_iou.h"
#include "../common/box_math.h"

namespace scratchdet {
namespace {

at::Tensor box_iou_cpu(const at::Tensor& boxes1_in, const at::Tensor& boxes2_in) {
  check_box_iou_args(boxes1_in, boxes2_in);
  check_device(boxes1_in, c10::kCPU, "box_iou", "boxes1");
  const auto boxes1 = boxes1_in.contiguous();
  const auto boxes2 = boxes2_in.contiguous();
  const int64_t n = boxes1.size(0), m = boxes2.size(0);
  auto out = at::empty({n, m}, boxes1.options());
  if (n == 0 || m == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "box_iou_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* b1 = boxes1.const_data_ptr<scalar_t>();
    const scalar_t* b2 = boxes2.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    // Rows are independent; the grain keeps tiny problems on one thread.
    const int64_t grain = std::max<int64_t>(1, 16384 / m);
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const acc_t ax1 = b1[i * 4], ay1 = b1[i * 4 + 1], ax2 = b1[i * 4 + 2], ay2 = b1[i * 4 + 3];
        const acc_t area_a = math::box_area(ax1, ay1, ax2, ay2);
        for (int64_t j = 0; j < m; ++j) {
          const acc_t bx1 = b2[j * 4], by1 = b2[j * 4 + 1], bx2 = b2[j * 4 + 2], by2 = b2[j * 4 + 3];
          o[i * m + j] = static_cast<scalar_t>(math::iou_xyxy(
              ax1, ay1, ax2, ay2, area_a, bx1, by1, bx2, by2, math::box_area(bx1, by1, bx2, by2)));
        }
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace scratchdet

TORCH_LIBRARY_IMPL(scratchdet, CPU, m) {
  m.impl("box_iou", &scratchdet::box_iou_cpu);
}
