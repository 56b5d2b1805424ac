// match_priors on the CPU: IoU, best GT per prior, best prior per GT and the
// encoding fused, parallel over (image, chunk of priors); the [B, G, P] IoU
// tensor is never materialised.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <tuple>
#include <vector>

#include "../common/box_math.h"
#include "../match_priors.h"

namespace scratchdet {
namespace {

// Priors per task: the working set (prior boxes, best IoU, best GT, one IoU
// row) stays in L1/L2. A fixed size, so results never depend on the thread count.
constexpr int64_t kChunk = 1024;

// The priors as (x1, y1, x2, y2, area) columns, computed once per call and
// shared by every image; columns keep the inner loop vectorisable.
template <typename T>
struct PriorColumns {
  std::vector<T> x1, y1, x2, y2, area;
  explicit PriorColumns(const T* priors, int64_t P) : x1(P), y1(P), x2(P), y2(P), area(P) {
    for (int64_t p = 0; p < P; ++p) {
      T b[4];
      math::cxcywh_to_xyxy(priors + p * 4, b);
      x1[p] = b[0], y1[p] = b[1], x2[p] = b[2], y2[p] = b[3];
      area[p] = math::box_area(b[0], b[1], b[2], b[3]);
    }
  }
};

// Max of n >= 1 values that are all >= +0 (IoUs). For float the bits are
// compared as integers, which orders such values the same and vectorises.
inline float max_of_nonnegative(const float* v, int64_t n) {
  int32_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t bits = std::bit_cast<int32_t>(v[i]);
    m = bits > m ? bits : m;
  }
  return std::bit_cast<float>(m);
}

inline double max_of_nonnegative(const double* v, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

// One scan of the inputs for the data checks; also lists each image's valid GTs
// (label > 0) in increasing index order.
template <typename T>
MatchPriorsDataSummary scan_inputs(const T* priors, const T* gt, const int64_t* labels, int64_t P,
                                   int64_t B, int64_t G, std::vector<int32_t>& valid_gt,
                                   std::vector<int32_t>& num_valid) {
  MatchPriorsDataSummary s;
  for (int64_t p = 0; p < P && !s.priors_invalid; ++p) s.priors_invalid = !math::is_valid_prior(priors + p * 4);
  for (int64_t b = 0; b < B; ++b) {
    int32_t n = 0;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t label = labels[b * G + g];
      s.max_label = std::max(s.max_label, label);
      if (label <= 0) continue;
      if (s.first_invalid_gt < 0 && !math::is_valid_gt_box(gt + (b * G + g) * 4)) s.first_invalid_gt = b * G + g;
      valid_gt[b * G + n++] = static_cast<int32_t>(g);
    }
    num_valid[b] = n;
  }
  return s;
}

template <typename T>
void match_priors_cpu_impl(const T* priors, const T* gt, const int64_t* labels, int64_t B, int64_t G,
                           int64_t P, T threshold, T v0, T v1, const PriorColumns<T>& pc,
                           const std::vector<int32_t>& valid_gt, const std::vector<int32_t>& num_valid,
                           T* loc_t, int64_t* conf_t, T* matched_iou) {
  const int64_t num_chunks = (P + kChunk - 1) / kChunk;
  // Best prior of each valid GT within each chunk: [B, num_chunks, G] (compact GT index).
  std::vector<T> chunk_best_iou(std::max<int64_t>(1, B * num_chunks * G));
  std::vector<int32_t> chunk_best_prior(chunk_best_iou.size());

  // Pass 1, per (image, chunk): best GT of each prior (first max wins), best
  // prior of each GT within the chunk, and the outputs as if nothing were forced.
  at::parallel_for(0, B * num_chunks, 1, [&](int64_t begin, int64_t end) {
    T best[kChunk], row[kChunk];
    int32_t best_gt[kChunk];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / num_chunks, chunk = task % num_chunks;
      const int64_t p0 = chunk * kChunk, n = std::min(kChunk, P - p0);
      const int32_t nv = num_valid[b];
      const int32_t* vgt = valid_gt.data() + b * G;
      const T *px1 = pc.x1.data() + p0, *py1 = pc.y1.data() + p0, *px2 = pc.x2.data() + p0,
              *py2 = pc.y2.data() + p0, *parea = pc.area.data() + p0;
      std::fill(best, best + n, T(-1));  // IoU >= 0, so the first GT always replaces it
      std::fill(best_gt, best_gt + n, 0);
      for (int32_t k = 0; k < nv; ++k) {
        const T* g = gt + (b * G + vgt[k]) * 4;
        const T gx1 = g[0], gy1 = g[1], gx2 = g[2], gy2 = g[3];
        const T garea = math::box_area(gx1, gy1, gx2, gy2);
        for (int64_t i = 0; i < n; ++i) {  // branch-free so that it vectorises
          const T iou = math::iou_xyxy(gx1, gy1, gx2, gy2, garea, px1[i], py1[i], px2[i], py2[i], parea[i]);
          row[i] = iou;
          const bool better = iou > best[i];  // strict: the lowest GT index keeps a tie
          best[i] = better ? iou : best[i];
          const int32_t mask = -static_cast<int32_t>(better);  // a select gcc vectorises
          best_gt[i] = (k & mask) | (best_gt[i] & ~mask);
        }
        const T row_max = max_of_nonnegative(row, n);
        int64_t arg = 0;
        while (arg < n - 1 && row[arg] != row_max) ++arg;  // first max: lowest prior index
        const int64_t slot = (b * num_chunks + chunk) * G + k;
        chunk_best_iou[slot] = row_max;
        chunk_best_prior[slot] = static_cast<int32_t>(p0 + arg);
      }
      for (int64_t i = 0; i < n; ++i) {
        const int64_t o = b * P + p0 + i;
        T* loc = loc_t + o * 4;
        if (nv > 0 && best[i] >= threshold) {
          const int64_t g = b * G + vgt[best_gt[i]];
          conf_t[o] = labels[g];
          math::encode(gt + g * 4, priors + (p0 + i) * 4, v0, v1, loc);
        } else {
          conf_t[o] = 0;
          loc[0] = loc[1] = loc[2] = loc[3] = T(0);
        }
        matched_iou[o] = nv > 0 ? best[i] : T(0);
      }
    }
  });

  // Pass 2, per image: reduce the chunks in order (first max: lowest prior) and
  // force each GT onto its best prior in increasing order, so a later GT wins.
  at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int32_t k = 0; k < num_valid[b]; ++k) {
        T iou = T(-1);
        int64_t p = 0;
        for (int64_t chunk = 0; chunk < num_chunks; ++chunk) {
          const int64_t slot = (b * num_chunks + chunk) * G + k;
          if (chunk_best_iou[slot] > iou) iou = chunk_best_iou[slot], p = chunk_best_prior[slot];
        }
        const int64_t g = b * G + valid_gt[b * G + k], o = b * P + p;
        conf_t[o] = labels[g];
        math::encode(gt + g * 4, priors + p * 4, v0, v1, loc_t + o * 4);
        matched_iou[o] = iou;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> match_priors_cpu(const at::Tensor& priors_in,
                                                                const at::Tensor& gt_boxes_in,
                                                                const at::Tensor& gt_labels_in,
                                                                double iou_threshold,
                                                                c10::ArrayRef<double> variances) {
  check_match_priors_args(priors_in, gt_boxes_in, gt_labels_in, iou_threshold, variances);
  check_device(priors_in, c10::kCPU, "match_priors", "priors");
  auto [dtype, priors, gt_boxes, gt_labels, loc_t, conf_t, matched_iou, B, G, P] =
      prepare_match_priors(priors_in, gt_boxes_in, gt_labels_in);

  AT_DISPATCH_FLOATING_TYPES(dtype, "match_priors_cpu", [&] {
    const scalar_t* pr = priors.const_data_ptr<scalar_t>();
    const scalar_t* gt = gt_boxes.const_data_ptr<scalar_t>();
    const int64_t* lb = gt_labels.const_data_ptr<int64_t>();
    std::vector<int32_t> valid_gt(B * G), num_valid(B);
    check_match_priors_data(scan_inputs(pr, gt, lb, P, B, G, valid_gt, num_valid), gt_boxes_in);
    if (B == 0 || P == 0) return;
    const PriorColumns<scalar_t> columns(pr, P);
    // The threshold and variances round to the compute type, as the reference's scalars do.
    match_priors_cpu_impl<scalar_t>(pr, gt, lb, B, G, P, static_cast<scalar_t>(iou_threshold),
                                    static_cast<scalar_t>(variances[0]), static_cast<scalar_t>(variances[1]),
                                    columns, valid_gt, num_valid, loc_t.mutable_data_ptr<scalar_t>(),
                                    conf_t.mutable_data_ptr<int64_t>(), matched_iou.mutable_data_ptr<scalar_t>());
  });
  return {loc_t, conf_t, matched_iou};
}

}  // namespace
}  // namespace scratchdet

TORCH_LIBRARY_IMPL(scratchdet, CPU, m) {
  m.impl("match_priors", &scratchdet::match_priors_cpu);
}
