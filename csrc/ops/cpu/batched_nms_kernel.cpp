// batched_nms on the CPU: torchvision's greedy NMS over box columns (branch-free inner loop), one
// NMS over class-offset boxes for small inputs and one per class, in parallel, above
// kTorchvisionVanillaNumelCPU, exactly as torchvision switches.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <type_traits>
#include <vector>

#include "../batched_nms.h"
#include "../common/box_math.h"
#include "../common/nms_math.h"

namespace scratchdet {
namespace {

// For float IoUs, "iou > double threshold" equals "iou > t" with t the largest
// float <= threshold; that keeps the inner loop in float (vectorisable).
inline float float_threshold(double thr) {
  float t = static_cast<float>(thr);
  if (static_cast<double>(t) > thr) t = std::nextafter(t, -INFINITY);
  return t;
}

// Greedy NMS (torchvision's loop) over boxes given in processing order as
// columns. Appends the kept positions to `kept`. Suppressed boxes are still
// tested (harmless for the result): that keeps the loop branch-free.
template <typename T>
void greedy_nms(const T* x1, const T* y1, const T* x2, const T* y2, const T* area, int64_t n, double thr,
                std::vector<int32_t>& suppressed, std::vector<int64_t>& kept) {
  suppressed.assign(n, 0);
  int32_t* sup = suppressed.data();
  for (int64_t i = 0; i < n; ++i) {
    if (sup[i]) continue;
    kept.push_back(i);
    const T ix1 = x1[i], iy1 = y1[i], ix2 = x2[i], iy2 = y2[i], ia = area[i];
    if constexpr (std::is_same_v<T, at::Half>) {
      for (int64_t j = i + 1; j < n; ++j) {
        if (sup[j]) continue;
        if (math::nms_suppresses(math::nms_overlap(ix1, iy1, ix2, iy2, ia, x1[j], y1[j], x2[j], y2[j], area[j]),
                                 thr))
          sup[j] = 1;
      }
    } else {
      const T t = std::is_same_v<T, float> ? static_cast<T>(float_threshold(thr)) : static_cast<T>(thr);
#pragma omp simd
      for (int64_t j = i + 1; j < n; ++j) {
        const T ov = math::nms_overlap(ix1, iy1, ix2, iy2, ia, x1[j], y1[j], x2[j], y2[j], area[j]);
        sup[j] |= static_cast<int32_t>(ov > t);
      }
    }
  }
}

// Box columns of a subset of boxes, in the given order.
template <typename T>
struct BoxColumns {
  std::vector<T> x1, y1, x2, y2, area;
  void gather(const T* boxes, const int64_t* order, int64_t n) {
    x1.resize(n), y1.resize(n), x2.resize(n), y2.resize(n), area.resize(n);
    for (int64_t k = 0; k < n; ++k) {
      const T* b = boxes + order[k] * 4;
      x1[k] = b[0], y1[k] = b[1], x2[k] = b[2], y2[k] = b[3];
      area[k] = math::box_area(b[0], b[1], b[2], b[3]);
    }
  }
  void run(int64_t n, double thr, std::vector<int32_t>& sup, std::vector<int64_t>& kept) {
    greedy_nms(x1.data(), y1.data(), x2.data(), y2.data(), area.data(), n, thr, sup, kept);
  }
};

at::Tensor batched_nms_cpu(const at::Tensor& boxes_in, const at::Tensor& scores_in, const at::Tensor& idxs_in,
                           double iou_threshold) {
  check_batched_nms_args(boxes_in, scores_in, idxs_in, iou_threshold);
  check_device(boxes_in, c10::kCPU, "batched_nms", "boxes");
  const int64_t n = boxes_in.size(0);
  if (n == 0) return at::empty({0}, boxes_in.options().dtype(at::kLong));
  // Small inputs: torchvision runs one NMS over boxes shifted by class; the
  // shift rounds the coordinates, so do it with the same tensor ops.
  const bool shifted = boxes_in.numel() <= kTorchvisionVanillaNumelCPU;
  at::Tensor boxes = boxes_in;
  if (shifted) {
    const auto offsets = idxs_in.to(boxes_in.scalar_type()) * (boxes_in.max() + at::ones({}, boxes_in.options()));
    boxes = boxes_in + offsets.unsqueeze(1);
  }
  boxes = boxes.contiguous();
  const auto scores = scores_in.contiguous();
  const auto idxs = idxs_in.to(at::kLong).contiguous();
  auto keep = at::empty({n}, boxes_in.options().dtype(at::kLong));
  int64_t num_keep = 0;

  AT_DISPATCH_FLOATING_TYPES_AND(at::kHalf, boxes.scalar_type(), "batched_nms_cpu", [&] {
    const scalar_t* bx = boxes.const_data_ptr<scalar_t>();
    const scalar_t* sc = scores.const_data_ptr<scalar_t>();
    const int64_t* cls = idxs.const_data_ptr<int64_t>();
    int64_t* out = keep.mutable_data_ptr<int64_t>();
    auto by_score = [&](int64_t a, int64_t b) { return math::nms_score_before(sc[a], sc[b]); };
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);

    if (shifted) {  // one class-agnostic NMS; its keep order is the answer
      std::stable_sort(order.begin(), order.end(), by_score);
      BoxColumns<scalar_t> cols;
      std::vector<int32_t> sup;
      std::vector<int64_t> kept;
      cols.gather(bx, order.data(), n);
      cols.run(n, iou_threshold, sup, kept);
      for (int64_t k : kept) out[num_keep++] = order[k];
      return;
    }
    // Per class: bucket by class (score order, then index, inside) and NMS
    // each class in parallel; the kept indices, ascending, are sorted below.
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      if (cls[a] != cls[b]) return cls[a] < cls[b];
      if (math::nms_score_before(sc[a], sc[b])) return true;
      if (math::nms_score_before(sc[b], sc[a])) return false;
      return a < b;
    });
    std::vector<int64_t> seg_begin;
    for (int64_t k = 0; k < n; ++k)
      if (k == 0 || cls[order[k]] != cls[order[k - 1]]) seg_begin.push_back(k);
    seg_begin.push_back(n);
    const int64_t num_seg = static_cast<int64_t>(seg_begin.size()) - 1;
    std::vector<uint8_t> kept_flag(n, 0);
    at::parallel_for(0, num_seg, 1, [&](int64_t s0, int64_t s1) {
      BoxColumns<scalar_t> cols;
      std::vector<int32_t> sup;
      std::vector<int64_t> kept;
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t* seg = order.data() + seg_begin[s];
        const int64_t len = seg_begin[s + 1] - seg_begin[s];
        kept.clear();
        cols.gather(bx, seg, len);
        cols.run(len, iou_threshold, sup, kept);
        for (int64_t k : kept) kept_flag[seg[k]] = 1;
      }
    });
    for (int64_t i = 0; i < n; ++i)
      if (kept_flag[i]) out[num_keep++] = i;
  });
  if (shifted) return keep.slice(0, 0, num_keep).clone();
  // torchvision orders the kept indices with an unstable sort (ties in
  // whatever order it leaves them): make the same call on the same input.
  const auto kept = keep.slice(0, 0, num_keep);
  const auto by_score = std::get<1>(scores_in.index_select(0, kept).sort(/*dim=*/0, /*descending=*/true));
  return kept.index_select(0, by_score);
}

}  // namespace
}  // namespace scratchdet

TORCH_LIBRARY_IMPL(scratchdet, CPU, m) {
  m.impl("batched_nms", &scratchdet::batched_nms_cpu);
}
