// detect on the CPU, per image in parallel: decode, per-class candidates (score threshold, top_k),
// then one lazy merge of the classes in global order with class-aware greedy NMS, stopped at
// keep_top_k. The softmax and exp come from ATen (detect_prepare), as in the reference.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <queue>
#include <vector>

#include "../common/box_math.h"
#include "../common/nms_math.h"
#include "../detect.h"

namespace scratchdet {
namespace {

template <typename T>
struct Candidate {
  T score;
  int32_t prior;
};

// Order inside a class: score descending, then lower prior (scores are finite here).
template <typename T>
inline bool candidate_before(const Candidate<T>& a, const Candidate<T>& b) {
  return a.score > b.score || (a.score == b.score && a.prior < b.prior);
}

// Decoded (optionally clipped) boxes of one image and whether each prior is
// usable: all its logits finite and its box finite.
template <typename T, typename L>
void decode_image(const T* loc, const T* priors, const T* exp_wh, const L* logits, int64_t P, int64_t C, T v0,
                  bool clip, T* boxes, uint8_t* finite) {
  for (int64_t p = 0; p < P; ++p) {
    T* b = boxes + p * 4;
    math::decode_given_exp(loc + p * 4, priors + p * 4, v0, exp_wh[p * 2], exp_wh[p * 2 + 1], b);
    bool ok = true;
    for (int k = 0; k < 4; ++k) {
      if (clip) b[k] = math::clamp01(b[k]);
      ok = ok && std::isfinite(b[k]);
    }
    const L* row = logits + p * C;
    for (int64_t c = 0; c < C && ok; ++c) ok = std::isfinite(static_cast<double>(row[c]));
    finite[p] = ok;
  }
}

template <typename T>
void detect_image(const T* scores, const uint8_t* finite, const T* boxes, int64_t P, int64_t C, T score_threshold,
                  double nms_threshold, int64_t top_k, int64_t K, std::vector<std::vector<Candidate<T>>>& buckets,
                  std::vector<std::vector<int32_t>>& kept_by_class, T* out_boxes, T* out_scores,
                  int64_t* out_labels, int64_t* num_detections) {
  for (auto& v : buckets) v.clear();
  for (auto& v : kept_by_class) v.clear();
  // 1. candidates of each class c >= 1: finite prior, score > threshold
  for (int64_t p = 0; p < P; ++p) {
    if (!finite[p]) continue;
    const T* row = scores + p * C;
    for (int64_t c = 1; c < C; ++c)
      if (row[c] > score_threshold) buckets[c].push_back({row[c], static_cast<int32_t>(p)});
  }
  // 2. the top_k best of each class, sorted
  for (int64_t c = 1; c < C; ++c) {
    auto& v = buckets[c];
    if (static_cast<int64_t>(v.size()) > top_k) {
      std::nth_element(v.begin(), v.begin() + top_k, v.end(), candidate_before<T>);
      v.resize(top_k);
    }
    std::sort(v.begin(), v.end(), candidate_before<T>);
  }
  // 3. merge the classes lazily in global order (score, prior, class) and run
  //    class-aware greedy NMS; a box is only suppressed by earlier boxes of its
  //    class, so the first K kept are exactly the per-class NMS's best K.
  std::vector<int64_t> pos(C, 0);
  auto worse = [&](int64_t a, int64_t b) {  // heap order: true when class a's head comes after b's
    const auto& ca = buckets[a][pos[a]];
    const auto& cb = buckets[b][pos[b]];
    if (ca.score != cb.score) return ca.score < cb.score;
    if (ca.prior != cb.prior) return ca.prior > cb.prior;
    return a > b;
  };
  std::priority_queue<int64_t, std::vector<int64_t>, decltype(worse)> heads(worse);
  for (int64_t c = 1; c < C; ++c)
    if (!buckets[c].empty()) heads.push(c);
  int64_t kept = 0;
  while (!heads.empty() && kept < K) {
    const int64_t c = heads.top();
    heads.pop();
    const Candidate<T> cand = buckets[c][pos[c]++];
    if (pos[c] < static_cast<int64_t>(buckets[c].size())) heads.push(c);
    const T* b = boxes + static_cast<int64_t>(cand.prior) * 4;
    const T area = math::box_area(b[0], b[1], b[2], b[3]);
    bool suppressed = false;
    for (int32_t k : kept_by_class[c]) {
      const T* kb = out_boxes + static_cast<int64_t>(k) * 4;
      const T ov = math::nms_overlap(kb[0], kb[1], kb[2], kb[3], math::box_area(kb[0], kb[1], kb[2], kb[3]),
                                     b[0], b[1], b[2], b[3], area);
      if (math::nms_suppresses(ov, nms_threshold)) {
        suppressed = true;
        break;
      }
    }
    if (suppressed) continue;
    std::copy(b, b + 4, out_boxes + kept * 4);
    out_scores[kept] = cand.score;
    out_labels[kept] = c;
    kept_by_class[c].push_back(static_cast<int32_t>(kept));
    ++kept;
  }
  *num_detections = kept;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> detect_cpu(
    const at::Tensor& loc, const at::Tensor& logits_in, const at::Tensor& priors, at::ArrayRef<double> variances,
    double score_threshold, double nms_threshold, int64_t top_k, int64_t keep_top_k, bool clip) {
  check_detect_args(loc, logits_in, priors, variances, nms_threshold, top_k, keep_top_k);
  check_device(loc, c10::kCPU, "detect", "loc");
  // This kernel's own limit (its candidates hold 32-bit prior indices), not an argument check.
  TORCH_CHECK(loc.size(1) < (int64_t{1} << 31), "detect: expected fewer than 2^31 priors, got ", loc.size(1));
  // Three ATen ops for the whole batch; everything else per image, in parallel.
  const auto in = detect_prepare(loc, logits_in, priors, variances);
  const auto logits = logits_in.contiguous();
  const int64_t B = logits.size(0), P = logits.size(1), C = logits.size(2), K = keep_top_k;
  const auto opts = in.scores.options();
  auto out_boxes = at::zeros({B, K, 4}, opts);
  auto out_scores = at::zeros({B, K}, opts);
  auto out_labels = at::full({B, K}, -1, opts.dtype(at::kLong));
  auto num = at::zeros({B}, opts.dtype(at::kLong));
  const int64_t kc = std::min(top_k, P);

  AT_DISPATCH_FLOATING_TYPES(in.scores.scalar_type(), "detect_cpu", [&] {
    using T = scalar_t;
    // As the reference's "scores > score_threshold": the threshold in the scores' dtype.
    const auto thr = static_cast<T>(score_threshold);
    const auto v0 = static_cast<T>(variances[0]);
    const T* sc = in.scores.const_data_ptr<T>();
    const T* lc = in.loc.const_data_ptr<T>();
    const T* pr = in.priors.const_data_ptr<T>();
    const T* ex = in.exp_wh.const_data_ptr<T>();
    T* ob = out_boxes.mutable_data_ptr<T>();
    T* os = out_scores.mutable_data_ptr<T>();
    int64_t* ol = out_labels.mutable_data_ptr<int64_t>();
    int64_t* on = num.mutable_data_ptr<int64_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "detect_cpu_logits", [&] {
      const scalar_t* lg = logits.const_data_ptr<scalar_t>();
      at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
        std::vector<std::vector<Candidate<T>>> buckets(C);
        std::vector<std::vector<int32_t>> kept_by_class(C);
        std::vector<T> boxes(P * 4);
        std::vector<uint8_t> finite(P);
        for (int64_t b = b0; b < b1; ++b) {
          decode_image(lc + b * P * 4, pr, ex + b * P * 2, lg + b * P * C, P, C, v0, clip, boxes.data(),
                       finite.data());
          detect_image(sc + b * P * C, finite.data(), boxes.data(), P, C, thr, nms_threshold, kc, K, buckets,
                       kept_by_class, ob + b * K * 4, os + b * K, ol + b * K, on + b);
        }
      });
    });
  });
  return {out_boxes, out_scores, out_labels, num};
}

}  // namespace
}  // namespace scratchdet

TORCH_LIBRARY_IMPL(scratchdet, CPU, m) {
  m.impl("detect", &scratchdet::detect_cpu);
}
