#pragma once
// match_priors(priors [P, 4], gt_boxes [B, G, 4], gt_labels [B, G], iou_threshold, variances)
//   -> (loc_t [B, P, 4], conf_t [B, P] int64, matched_iou [B, P]): SSD prior matching.
// The argument checks (shapes, dtypes, devices, scalars: check_match_priors_args) and the data
// checks (check_match_priors_data) are those of scratchdet.ops.reference, in its order and
// wording; the rest is the preamble the CPU and CUDA kernels share.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <limits>
#include <tuple>

#include "common/checks.h"

namespace scratchdet {
namespace ops {

// Through the dispatcher (CPU / CUDA kernel, autocast): the op as torch.ops.scratchdet.match_priors.
std::tuple<at::Tensor, at::Tensor, at::Tensor> match_priors(const at::Tensor& priors, const at::Tensor& gt_boxes,
                                                            const at::Tensor& gt_labels, double iou_threshold = 0.5,
                                                            c10::ArrayRef<double> variances = {0.1, 0.2});

}  // namespace ops

constexpr int64_t kMaxMatchLabel = (int64_t{1} << 31) - 1;

// What a kernel learns about its data before matching: filled by one scan on
// the CPU, by one small kernel (and one device->host copy) on CUDA.
struct MatchPriorsDataSummary {
  bool priors_invalid = false;       // a prior not finite, or with w <= 0 or h <= 0
  int64_t max_label = std::numeric_limits<int64_t>::min();
  int64_t first_invalid_gt = -1;     // flat index b * G + g of the first invalid valid GT, or -1
};

// The shape, dtype, device and scalar checks; no data is read.
inline void check_match_priors_args(const at::Tensor& priors, const at::Tensor& gt_boxes,
                                    const at::Tensor& gt_labels, double iou_threshold,
                                    c10::ArrayRef<double> variances) {
  constexpr const char* op = "match_priors";
  check_shape(priors, 2, 4, op, "priors", "[P, 4]");
  check_shape(gt_boxes, 3, 4, op, "gt_boxes", "[B, G, 4]");
  check_shape(gt_labels, 2, kAnySize, op, "gt_labels", "[B, G]");
  check_floating(priors, op, "priors");
  check_floating(gt_boxes, op, "gt_boxes");
  TORCH_CHECK(gt_labels.scalar_type() == at::kLong, op, ": expected gt_labels to be int64, got ",
              dtype_name(gt_labels.scalar_type()));
  TORCH_CHECK(gt_labels.size(0) == gt_boxes.size(0) && gt_labels.size(1) == gt_boxes.size(1), op,
              ": expected gt_labels of shape [B, G] = [", gt_boxes.size(0), ", ", gt_boxes.size(1),
              "] to match gt_boxes, got shape ", gt_labels.sizes());
  check_same_device(priors, gt_boxes, op, "priors", "gt_boxes");
  check_same_device(gt_boxes, gt_labels, op, "gt_boxes", "gt_labels");
  TORCH_CHECK(iou_threshold >= 0.0 && iou_threshold <= 1.0, op,
              ": expected iou_threshold in [0, 1], got ", iou_threshold);
  TORCH_CHECK(variances.size() == 2 && variances[0] > 0.0 && variances[1] > 0.0, op,
              ": expected two positive variances, got ", variances);
  // The kernels index priors and GTs with 32-bit integers (the reference checks it too, so that
  // every layer refuses the same input).
  TORCH_CHECK(priors.size(0) <= kMaxMatchLabel && gt_boxes.size(1) <= kMaxMatchLabel, op,
              ": expected fewer than 2^31 priors and GTs per image, got P = ", priors.size(0),
              " and G = ", gt_boxes.size(1));
}

// The dtype every output and every computation uses: float32 for half inputs,
// float64 if either box tensor is float64 (as the reference).
inline at::ScalarType match_priors_compute_type(const at::Tensor& priors, const at::Tensor& gt_boxes) {
  return c10::promoteTypes(c10::promoteTypes(priors.scalar_type(), gt_boxes.scalar_type()), at::kFloat);
}

// Raise the first data error the summary records, in the order and wording of
// reference.check_match_priors_data.
// gt_boxes is the caller's tensor (any device), read only on the error path.
inline void check_match_priors_data(const MatchPriorsDataSummary& s, const at::Tensor& gt_boxes) {
  constexpr const char* op = "match_priors";
  TORCH_CHECK(!s.priors_invalid, op, ": priors must be finite with positive width and height");
  TORCH_CHECK(s.max_label <= kMaxMatchLabel, op, ": gt_labels must be < 2^31, got ", s.max_label);
  if (s.first_invalid_gt >= 0) {
    const int64_t G = gt_boxes.size(1);
    const int64_t b = s.first_invalid_gt / G, g = s.first_invalid_gt % G;
    const at::Tensor box = gt_boxes.select(0, b).select(0, g).to(at::kCPU, at::kDouble);
    const double* v = box.const_data_ptr<double>();
    TORCH_CHECK(false, op, ": invalid ground-truth box [", v[0], ", ", v[1], ", ", v[2], ", ", v[3],
                "] at image ", b, ", box ", g,
                ": coordinates must be finite with x2 > x1 and y2 > y1");
  }
}

// The kernels' inputs, cast to the compute type and made contiguous, and their outputs,
// allocated like the inputs (so on the device a caller's guard has made current).
struct MatchPriorsTensors {
  at::ScalarType dtype;
  at::Tensor priors, gt_boxes, gt_labels;   // [P, 4], [B, G, 4], [B, G]
  at::Tensor loc_t, conf_t, matched_iou;    // [B, P, 4], [B, P], [B, P]
  int64_t B, G, P;
};

inline MatchPriorsTensors prepare_match_priors(const at::Tensor& priors_in, const at::Tensor& gt_boxes_in,
                                               const at::Tensor& gt_labels_in) {
  MatchPriorsTensors t;
  t.dtype = match_priors_compute_type(priors_in, gt_boxes_in);
  // Widening casts only (half/float -> float/double): the values, and so the checks, are unchanged.
  t.priors = priors_in.to(t.dtype).contiguous();
  t.gt_boxes = gt_boxes_in.to(t.dtype).contiguous();
  t.gt_labels = gt_labels_in.contiguous();
  t.B = t.gt_boxes.size(0), t.G = t.gt_boxes.size(1), t.P = t.priors.size(0);
  t.loc_t = at::empty({t.B, t.P, 4}, t.priors.options());
  t.conf_t = at::empty({t.B, t.P}, t.gt_labels.options());
  t.matched_iou = at::empty({t.B, t.P}, t.priors.options());
  return t;
}

}  // namespace scratchdet
