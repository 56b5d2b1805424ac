#pragma once
// batched_nms and detect: argument checks and the ATen preamble shared by the
// CPU and CUDA kernels.
#include <ATen/ATen.h>

#include <tuple>

#include "common/checks.h"

namespace scratchdet {

// torchvision switches from one NMS over class-offset boxes to a per-class loop
// above these sizes (boxes.numel()); the offsets change IoU rounding, so to
// return exactly what torchvision returns we follow the same switch.
constexpr int64_t kTorchvisionVanillaNumelCPU = 4000;
constexpr int64_t kTorchvisionVanillaNumelCUDA = 100000;

inline void check_batched_nms_args(const at::Tensor& boxes, const at::Tensor& scores,
                                   const at::Tensor& idxs, double iou_threshold) {
  const char* op = "batched_nms";
  check_dim(boxes, 2, op, "boxes", "[N, 4]");
  check_last_dim(boxes, 4, op, "boxes", "[N, 4]");
  check_dim(scores, 1, op, "scores", "[N]");
  check_dim(idxs, 1, op, "idxs", "[N]");
  const auto t = boxes.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf, op,
              ": expected boxes to be float16, float32 or float64, got ", t);
  check_same_dtype(boxes, scores, op, "boxes", "scores");
  TORCH_CHECK(at::isIntegralType(idxs.scalar_type(), /*includeBool=*/false), op,
              ": expected idxs to be an integer tensor, got ", idxs.scalar_type());
  TORCH_CHECK(scores.size(0) == boxes.size(0) && idxs.size(0) == boxes.size(0), op,
              ": expected boxes [N, 4], scores [N] and idxs [N] to agree on N, got ", boxes.sizes(),
              ", ", scores.sizes(), " and ", idxs.sizes());
  check_same_device(boxes, scores, op, "boxes", "scores");
  check_same_device(boxes, idxs, op, "boxes", "idxs");
  TORCH_CHECK(!std::isnan(iou_threshold), op, ": expected a number as iou_threshold, got NaN");
}

inline void check_detect_args(const at::Tensor& loc, const at::Tensor& logits, const at::Tensor& priors,
                              at::ArrayRef<double> variances, double nms_threshold, int64_t top_k,
                              int64_t keep_top_k) {
  const char* op = "detect";
  check_dim(loc, 3, op, "loc", "[B, P, 4]");
  check_last_dim(loc, 4, op, "loc", "[B, P, 4]");
  check_dim(logits, 3, op, "logits", "[B, P, C]");
  check_dim(priors, 2, op, "priors", "[P, 4]");
  check_last_dim(priors, 4, op, "priors", "[P, 4]");
  check_floating(loc, op, "loc");
  check_floating(logits, op, "logits");
  check_floating(priors, op, "priors");
  TORCH_CHECK(loc.size(0) == logits.size(0) && loc.size(1) == logits.size(1) && loc.size(1) == priors.size(0),
              op, ": expected loc [B, P, 4], logits [B, P, C] and priors [P, 4] to agree on B and P, got ",
              loc.sizes(), ", ", logits.sizes(), " and ", priors.sizes());
  TORCH_CHECK(logits.size(2) >= 2, op, ": expected logits with C >= 2 classes (0 = background), got C = ",
              logits.size(2));
  check_same_device(loc, logits, op, "loc", "logits");
  check_same_device(loc, priors, op, "loc", "priors");
  TORCH_CHECK(variances.size() == 2 && variances[0] > 0 && variances[1] > 0, op,
              ": expected two positive variances, got ", variances);
  TORCH_CHECK(nms_threshold >= 0.0 && nms_threshold <= 1.0, op, ": expected nms_threshold in [0, 1], got ",
              nms_threshold);
  TORCH_CHECK(top_k >= 1 && keep_top_k >= 1, op, ": expected top_k >= 1 and keep_top_k >= 1, got ", top_k,
              " and ", keep_top_k);
}

// What detect takes from ATen, with exactly the ops of reference.detect, so
// the kernels see bit-identical numbers (a hand-written softmax or exp can
// differ by an ulp and flip a tie): the softmax scores [B,P,C] and
// exp(loc[..., 2:] * v1) [B,P,2]. The rest of the decode (+, -, *, / are
// correctly rounded everywhere) is box_math.h's decode_given_exp.
struct DetectInputs {
  at::Tensor scores, loc, priors, exp_wh;
};

inline DetectInputs detect_prepare(const at::Tensor& loc, const at::Tensor& logits, const at::Tensor& priors,
                                   at::ArrayRef<double> variances) {
  const auto dtype = at::promote_types(at::promote_types(loc.scalar_type(), priors.scalar_type()), at::kFloat);
  const auto l = loc.to(dtype);
  auto scores = at::softmax(logits.to(dtype), -1);
  auto exp_wh = at::exp(l.slice(-1, 2, 4) * variances[1]);
  return {scores.contiguous(), l.contiguous(), priors.to(dtype).contiguous(), exp_wh.contiguous()};
}

}  // namespace scratchdet
