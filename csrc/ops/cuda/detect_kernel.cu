// detect on CUDA for the whole batch: decode_kernel, per-class top_k by ATen sorts, one global
// candidate order per image, then greedy_nms_kernel (one block per image, class-aware) and
// gather_detections_kernel. It never synchronises with the host: every size is known up front
// and the sorts, gathers and kernels are all queued on the current stream.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../common/box_math.h"
#include "../detect.h"
#include "greedy_nms.cuh"

namespace scratchdet {
namespace {

// Decoded (optionally clipped) boxes and the per-prior "usable" mask: logits
// and box all finite. exp_wh comes from ATen, as in the reference.
template <typename T>
__global__ void decode_kernel(const T* __restrict__ loc, const T* __restrict__ priors, const T* __restrict__ exp_wh,
                              const bool* __restrict__ logits_finite, int64_t B, int64_t P, T v0, bool clip,
                              T* __restrict__ boxes, bool* __restrict__ finite) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < B * P;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = i % P;
    T* b = boxes + i * 4;
    math::decode_given_exp(loc + i * 4, priors + p * 4, v0, exp_wh[i * 2], exp_wh[i * 2 + 1], b);
    bool ok = logits_finite[i];
    for (int k = 0; k < 4; ++k) {
      if (clip) b[k] = math::clamp01(b[k]);
      ok = ok && isfinite(b[k]);
    }
    finite[i] = ok;
  }
}

// Rows of the padded output from the kept candidates.
template <typename T>
__global__ void gather_detections_kernel(const T* __restrict__ cand_boxes, const T* __restrict__ cand_scores,
                                         const int64_t* __restrict__ cand_labels,
                                         const int64_t* __restrict__ kept_pos, const int64_t* __restrict__ num,
                                         int64_t K, T* __restrict__ out_boxes, T* __restrict__ out_scores,
                                         int64_t* __restrict__ out_labels) {
  const int64_t b = blockIdx.x;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const int64_t o = b * K + k;
    if (k < num[b]) {
      const int64_t pos = kept_pos[o];
      for (int c = 0; c < 4; ++c) out_boxes[o * 4 + c] = cand_boxes[pos * 4 + c];
      out_scores[o] = cand_scores[pos];
      out_labels[o] = cand_labels[pos];
    } else {
      for (int c = 0; c < 4; ++c) out_boxes[o * 4 + c] = T(0);
      out_scores[o] = T(0);
      out_labels[o] = -1;
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> detect_cuda(
    const at::Tensor& loc, const at::Tensor& logits, const at::Tensor& priors, at::ArrayRef<double> variances,
    double score_threshold, double nms_threshold, int64_t top_k, int64_t keep_top_k, bool clip) {
  check_detect_args(loc, logits, priors, variances, nms_threshold, top_k, keep_top_k);
  check_device(loc, c10::kCUDA, "detect", "loc");
  const c10::cuda::CUDAGuard guard(loc.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t B = logits.size(0), P = logits.size(1), C = logits.size(2), K = keep_top_k;
  const auto in = detect_prepare(loc, logits, priors, variances);
  const auto opts = in.scores.options();
  auto out_boxes = at::empty({B, K, 4}, opts);
  auto out_scores = at::empty({B, K}, opts);
  auto out_labels = at::empty({B, K}, opts.dtype(at::kLong));
  auto num = at::zeros({B}, opts.dtype(at::kLong));
  if (B == 0) return {out_boxes, out_scores, out_labels, num};
  if (P == 0) {
    out_boxes.zero_(), out_scores.zero_(), out_labels.fill_(-1);
    return {out_boxes, out_scores, out_labels, num};
  }
  auto boxes = at::empty({B, P, 4}, opts);
  auto finite = at::empty({B, P}, opts.dtype(at::kBool));
  const auto logits_finite = at::isfinite(logits).all(-1).contiguous();
  AT_DISPATCH_FLOATING_TYPES(in.scores.scalar_type(), "detect_cuda_decode", [&] {
    const int threads = 256;
    const int64_t blocks = std::min<int64_t>((B * P + threads - 1) / threads, 65535);
    decode_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        in.loc.const_data_ptr<scalar_t>(), in.priors.const_data_ptr<scalar_t>(),
        in.exp_wh.const_data_ptr<scalar_t>(), logits_finite.const_data_ptr<bool>(), B, P,
        static_cast<scalar_t>(variances[0]), clip, boxes.mutable_data_ptr<scalar_t>(),
        finite.mutable_data_ptr<bool>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });

  // Per class: score > threshold on usable priors, the top_k best (stable
  // sort: equal scores keep the lower prior). Rejected entries become -inf.
  const auto s = in.scores.slice(2, 1, C);
  const auto ok = finite.unsqueeze(-1).logical_and(s > score_threshold);
  const auto masked = at::where(ok, s, -std::numeric_limits<double>::infinity()).transpose(1, 2);  // [B,C-1,P]
  const int64_t kc = std::min(top_k, P);
  const auto by_class = at::sort(masked, /*stable=*/true, /*dim=*/2, /*descending=*/true);
  const auto vals = std::get<0>(by_class).slice(2, 0, kc);
  const auto prior = std::get<1>(by_class).slice(2, 0, kc);
  const int64_t N = (C - 1) * kc;
  // Global order per image: score descending, then prior, then class, i.e. a
  // stable sort by score of the candidates ordered by flat index prior*C+class.
  const auto valid = vals.isfinite();
  auto flat = prior * C + at::arange(1, C, prior.options()).view({1, C - 1, 1});
  flat = at::where(valid, flat, std::numeric_limits<int64_t>::max()).reshape({B, N});
  const auto by_flat = at::sort(flat, /*stable=*/false, /*dim=*/1, /*descending=*/false);
  const auto vals_by_flat = vals.reshape({B, N}).gather(1, std::get<1>(by_flat));
  const auto by_score = at::sort(vals_by_flat, /*stable=*/true, /*dim=*/1, /*descending=*/true);
  const auto cand_flat = std::get<0>(by_flat).gather(1, std::get<1>(by_score));
  const auto cand_scores = std::get<0>(by_score).contiguous();
  const auto cand_valid = cand_scores.isfinite();
  const auto cand_labels = at::where(cand_valid, cand_flat.remainder(C), -1).contiguous();
  const auto cand_prior = at::where(cand_valid, cand_flat.div(C, "floor"), 0);
  const auto cand_boxes = boxes.gather(1, cand_prior.unsqueeze(-1).expand({B, N, 4})).contiguous();

  auto kept_pos = at::zeros({B, K}, opts.dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(in.scores.scalar_type(), "detect_cuda_nms", [&] {
    greedy_nms_kernel<scalar_t><<<B, kNmsChunk, 0, stream>>>(
        cand_boxes.const_data_ptr<scalar_t>(), cand_labels.const_data_ptr<int64_t>(), nullptr, nullptr, N, K, K,
        nms_threshold, kept_pos.mutable_data_ptr<int64_t>(), num.mutable_data_ptr<int64_t>(), nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    gather_detections_kernel<scalar_t><<<B, 256, 0, stream>>>(
        cand_boxes.const_data_ptr<scalar_t>(), cand_scores.const_data_ptr<scalar_t>(),
        cand_labels.const_data_ptr<int64_t>(), kept_pos.const_data_ptr<int64_t>(), num.const_data_ptr<int64_t>(),
        K, out_boxes.mutable_data_ptr<scalar_t>(), out_scores.mutable_data_ptr<scalar_t>(),
        out_labels.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out_boxes, out_scores, out_labels, num};
}

}  // namespace
}  // namespace scratchdet

TORCH_LIBRARY_IMPL(scratchdet, CUDA, m) {
  m.impl("detect", &scratchdet::detect_cuda);
}
