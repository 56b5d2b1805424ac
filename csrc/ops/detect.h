#pragma once
// detect(loc [B, P, 4], logits [B, P, C], priors [P, 4], variances, score_threshold, nms_threshold,
//        top_k, keep_top_k, clip) -> (boxes [B, K, 4], scores [B, K], labels [B, K], num_detections [B]):
// SSD detection output, see scratchdet/ops/reference.py. The argument checks and the ATen
// preamble shared by the CPU and CUDA kernels.
#include <ATen/ATen.h>

#include <tuple>

#include "common/checks.h"

namespace scratchdet {
namespace ops {

// Through the dispatcher (CPU / CUDA kernel, autocast): the op as torch.ops.scratchdet.detect.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> detect(
    const at::Tensor& loc, const at::Tensor& logits, const at::Tensor& priors,
    c10::ArrayRef<double> variances = {0.1, 0.2}, double score_threshold = 0.01, double nms_threshold = 0.45,
    int64_t top_k = 400, int64_t keep_top_k = 200, bool clip = true);

}  // namespace ops

// The checks of reference.check_detect_args, in its order and wording (any score_threshold is fine).
inline void check_detect_args(const at::Tensor& loc, const at::Tensor& logits, const at::Tensor& priors,
                              c10::ArrayRef<double> variances, double nms_threshold, int64_t top_k,
                              int64_t keep_top_k) {
  constexpr const char* op = "detect";
  check_shape(loc, 3, 4, op, "loc", "[B, P, 4]");
  check_shape(logits, 3, kAnySize, op, "logits", "[B, P, C]");
  check_shape(priors, 2, 4, op, "priors", "[P, 4]");
  for (const auto& [t, name] : {std::pair{&loc, "loc"}, {&logits, "logits"}, {&priors, "priors"}}) {
    check_floating(*t, op, name);
  }
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
                                   c10::ArrayRef<double> variances) {
  const auto dtype = at::promote_types(at::promote_types(loc.scalar_type(), priors.scalar_type()), at::kFloat);
  const auto l = loc.to(dtype);
  auto scores = at::softmax(logits.to(dtype), -1);
  auto exp_wh = at::exp(l.slice(-1, 2, 4) * variances[1]);
  return {scores.contiguous(), l.contiguous(), priors.to(dtype).contiguous(), exp_wh.contiguous()};
}

}  // namespace scratchdet
