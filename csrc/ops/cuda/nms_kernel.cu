// CUDA kernels of batched_nms and detect.
//
// Both run greedy NMS with one block per segment (an image for detect, a class
// for batched_nms): candidates come in processing order, a chunk of 256 at a
// time; each thread tests its candidate against the boxes kept so far, then
// builds its row of the chunk's suppression bitmask, and one thread walks the
// chunk in order. The result is exactly the sequential greedy NMS.
// detect never synchronises with the host: every size is known up front and
// the sorts, gathers and kernels are all queued on the current stream.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../common/box_math.h"
#include "../nms.h"

namespace scratchdet {
namespace {

constexpr int kChunk = 256;
constexpr int kWords = kChunk / 32;

// Segment s holds candidates [begin, begin + len) of `boxes`, in processing
// order. labels (optional): NMS only between equal labels, and a negative
// label ends the segment (detect's padding). Kept positions go to
// kept_pos[kept_base + k]; flags (optional) marks kept positions.
template <typename T>
__global__ void greedy_nms_kernel(const T* __restrict__ boxes, const int64_t* __restrict__ labels,
                                  const int64_t* __restrict__ seg_begin, const int64_t* __restrict__ seg_len,
                                  int64_t fixed_len, int64_t kept_stride, int64_t max_keep, double threshold,
                                  int64_t* __restrict__ kept_pos, int64_t* __restrict__ num_kept,
                                  uint8_t* __restrict__ flags) {
  __shared__ T chunk_box[kChunk][4];
  __shared__ T chunk_area[kChunk];
  __shared__ int64_t chunk_label[kChunk];
  __shared__ bool alive[kChunk];
  __shared__ uint32_t mask[kChunk][kWords];
  __shared__ int64_t s_kept;
  __shared__ bool s_done;

  const int64_t s = blockIdx.x;
  const int tid = threadIdx.x;
  const int64_t begin = seg_begin ? seg_begin[s] : s * fixed_len;
  const int64_t len = seg_len ? seg_len[s] : fixed_len;
  const int64_t kept_base = seg_begin ? begin : s * kept_stride;
  if (tid == 0) {
    s_kept = 0;
    s_done = len == 0 || max_keep <= 0;
  }
  __syncthreads();

  for (int64_t start = 0; start < len && !s_done; start += kChunk) {
    const int64_t nk = s_kept;
    const int64_t i = start + tid;
    bool live = i < len;
    int64_t label = 0;
    T b[4] = {T(0), T(0), T(0), T(0)};
    T area = T(0);
    if (live) {
      const T* p = boxes + (begin + i) * 4;
      b[0] = p[0], b[1] = p[1], b[2] = p[2], b[3] = p[3];
      area = math::box_area(b[0], b[1], b[2], b[3]);
      label = labels ? labels[begin + i] : 0;
      live = label >= 0;
    }
    // against the boxes kept in earlier chunks
    for (int64_t k = 0; live && k < nk; ++k) {
      const int64_t q = kept_pos[kept_base + k];
      if (labels && labels[q] != label) continue;
      const T* kb = boxes + q * 4;
      const T ov = math::nms_overlap(kb[0], kb[1], kb[2], kb[3], math::box_area(kb[0], kb[1], kb[2], kb[3]),
                                     b[0], b[1], b[2], b[3], area);
      if (math::nms_suppresses(ov, threshold)) live = false;
    }
    for (int c = 0; c < 4; ++c) chunk_box[tid][c] = b[c];
    chunk_area[tid] = area;
    chunk_label[tid] = i < len ? label : -1;
    alive[tid] = live;
    __syncthreads();
    // row tid of the chunk's mask: later candidates this one would suppress
    for (int w = 0; w < kWords; ++w) {
      uint32_t word = 0;
      if (alive[tid]) {
        for (int bit = 0; bit < 32; ++bit) {
          const int j = w * 32 + bit;
          if (j <= tid || !alive[j] || chunk_label[j] != label) continue;
          const T ov = math::nms_overlap(b[0], b[1], b[2], b[3], area, chunk_box[j][0], chunk_box[j][1],
                                         chunk_box[j][2], chunk_box[j][3], chunk_area[j]);
          if (math::nms_suppresses(ov, threshold)) word |= 1u << bit;
        }
      }
      mask[tid][w] = word;
    }
    __syncthreads();
    if (tid == 0) {
      uint32_t removed[kWords];
      for (int w = 0; w < kWords; ++w) removed[w] = 0;
      int64_t kept = s_kept;
      bool done = false;
      const int64_t n = len - start < kChunk ? len - start : kChunk;
      for (int t = 0; t < n; ++t) {
        if (chunk_label[t] < 0) {  // padding: the segment ends here
          done = true;
          break;
        }
        if (!alive[t] || (removed[t / 32] >> (t % 32)) & 1u) continue;
        const int64_t pos = begin + start + t;
        kept_pos[kept_base + kept] = pos;
        if (flags) flags[pos] = 1;
        if (++kept >= max_keep) {
          done = true;
          break;
        }
        for (int w = 0; w < kWords; ++w) removed[w] |= mask[t][w];
      }
      s_kept = kept;
      s_done = done;
    }
    __syncthreads();
  }
  if (tid == 0 && num_kept) num_kept[s] = s_kept;
}

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
    greedy_nms_kernel<scalar_t><<<B, kChunk, 0, stream>>>(
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

// The kept list's length depends on the data: this op synchronises (once the
// class segments are counted, and to size the result), as torchvision's does.
at::Tensor batched_nms_cuda(const at::Tensor& boxes_in, const at::Tensor& scores, const at::Tensor& idxs_in,
                            double iou_threshold) {
  check_batched_nms_args(boxes_in, scores, idxs_in, iou_threshold);
  check_device(boxes_in, c10::kCUDA, "batched_nms", "boxes");
  const c10::cuda::CUDAGuard guard(boxes_in.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t n = boxes_in.size(0);
  if (n == 0) return at::empty({0}, boxes_in.options().dtype(at::kLong));
  const bool shifted = boxes_in.numel() <= kTorchvisionVanillaNumelCUDA;
  at::Tensor boxes = boxes_in;
  if (shifted) {  // torchvision's class offsets, with the same tensor ops
    const auto offsets = idxs_in.to(boxes_in.scalar_type()) * (boxes_in.max() + at::ones({}, boxes_in.options()));
    boxes = boxes_in + offsets.unsqueeze(1);
  }
  const auto idxs = idxs_in.to(at::kLong);
  auto order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  at::Tensor seg_begin, seg_len;
  int64_t num_seg = 1;
  if (!shifted) {  // group by class, keeping score order inside each class
    order = order.index_select(0, std::get<1>(idxs.index_select(0, order).sort(/*stable=*/true, /*dim=*/0)));
    seg_len = std::get<2>(at::unique_consecutive(idxs.index_select(0, order), false, true));
    seg_begin = seg_len.cumsum(0) - seg_len;
    num_seg = seg_len.size(0);
  }
  const auto sorted_boxes = boxes.index_select(0, order).contiguous();
  auto kept_pos = at::empty({n}, order.options());
  auto flags = at::zeros({n}, order.options().dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kHalf, boxes.scalar_type(), "batched_nms_cuda", [&] {
    greedy_nms_kernel<scalar_t><<<num_seg, kChunk, 0, stream>>>(
        sorted_boxes.const_data_ptr<scalar_t>(), nullptr,
        shifted ? nullptr : seg_begin.const_data_ptr<int64_t>(), shifted ? nullptr : seg_len.const_data_ptr<int64_t>(),
        n, n, n, iou_threshold, kept_pos.mutable_data_ptr<int64_t>(), nullptr, flags.mutable_data_ptr<uint8_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const auto kept_sorted = flags.to(at::kBool);
  if (shifted) return order.masked_select(kept_sorted);
  // As torchvision: kept indices ascending, then an (unstable) sort by score.
  auto keep_mask = at::zeros({n}, kept_sorted.options());
  keep_mask.index_put_({order}, kept_sorted);
  const auto kept = at::nonzero(keep_mask).squeeze(1);
  return kept.index_select(0, std::get<1>(scores.index_select(0, kept).sort(/*dim=*/0, /*descending=*/true)));
}

}  // namespace
}  // namespace scratchdet

TORCH_LIBRARY_IMPL(scratchdet, CUDA, m) {
  m.impl("batched_nms", &scratchdet::batched_nms_cuda);
  m.impl("detect", &scratchdet::detect_cuda);
}
