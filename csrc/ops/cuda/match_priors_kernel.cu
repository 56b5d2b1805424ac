// match_priors on CUDA, for the whole batch in three launches:
//   1. scan_inputs_kernel: one block summarises the data checks (finite priors,
//      valid GT boxes, label range); the host reads the 3-number summary back
//      (the only device->host copy; skipped under CUDA graph capture or with
//      SCRATCHDET_SKIP_INPUT_CHECKS=1).
//   2. match_kernel: one thread per (image, prior); GTs are staged in shared
//      memory. Each thread keeps its best GT (first max); each block reduces the
//      best prior of every GT (first max) into a [B, G, blocks] table, and the
//      outputs are written as if nothing were forced.
//   3. force_kernel: one block per image reduces that table in block order and
//      forces each GT onto its best prior; a shared prior goes to the largest GT
//      index through atomicMax, so "a later GT wins" whatever the thread order.
// Every reduction is ordered or order-free, so results do not depend on scheduling.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraphsUtils.cuh>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <tuple>

#include "../common/box_math.h"
#include "../match_priors.h"

namespace scratchdet {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kGtTile = 64;
constexpr unsigned kFullMask = 0xffffffffu;

template <typename T>
__global__ void scan_inputs_kernel(const T* __restrict__ priors, int64_t P, const T* __restrict__ gt,
                                   const int64_t* __restrict__ labels, int64_t BG, int64_t* __restrict__ out) {
  __shared__ int s_priors_invalid;
  __shared__ long long s_max_label, s_first_invalid;
  if (threadIdx.x == 0) s_priors_invalid = 0, s_max_label = LLONG_MIN, s_first_invalid = LLONG_MAX;
  __syncthreads();
  int priors_invalid = 0;
  for (int64_t i = threadIdx.x; i < P; i += blockDim.x) priors_invalid |= !math::is_valid_prior(priors + i * 4);
  long long max_label = LLONG_MIN, first_invalid = LLONG_MAX;
  for (int64_t i = threadIdx.x; i < BG; i += blockDim.x) {
    const long long label = labels[i];
    max_label = label > max_label ? label : max_label;
    if (label > 0 && first_invalid == LLONG_MAX && !math::is_valid_gt_box(gt + i * 4)) first_invalid = i;
  }
  if (priors_invalid) atomicOr(&s_priors_invalid, 1);
  atomicMax(&s_max_label, max_label);
  atomicMin(&s_first_invalid, first_invalid);
  __syncthreads();
  if (threadIdx.x == 0) {
    out[0] = s_priors_invalid;
    out[1] = s_max_label;
    out[2] = s_first_invalid == LLONG_MAX ? -1 : s_first_invalid;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) match_kernel(
    const T* __restrict__ priors, const T* __restrict__ gt, const int64_t* __restrict__ labels, int64_t P,
    int64_t G, int blocks_per_image, T threshold, T v0, T v1, T* __restrict__ block_best_iou,
    int32_t* __restrict__ block_best_prior, int32_t* __restrict__ owner, T* __restrict__ loc_t,
    int64_t* __restrict__ conf_t, T* __restrict__ matched_iou) {
  __shared__ T s_box[kGtTile][5];  // x1, y1, x2, y2, area
  __shared__ bool s_valid[kGtTile];
  __shared__ T s_warp_iou[kGtTile][kWarps];
  __shared__ int32_t s_warp_prior[kGtTile][kWarps];

  const int64_t b = blockIdx.x / blocks_per_image;
  const int blk = blockIdx.x % blocks_per_image;
  const int64_t p = static_cast<int64_t>(blk) * kThreads + threadIdx.x;
  const bool active = p < P;  // inactive threads still join the shuffles and barriers
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  T pb[4] = {T(0), T(0), T(0), T(0)};
  if (active) math::cxcywh_to_xyxy(priors + p * 4, pb);
  const T parea = math::box_area(pb[0], pb[1], pb[2], pb[3]);
  T best = T(-1);  // IoU >= 0, so the first valid GT always replaces it
  int64_t best_g = -1;

  for (int64_t g0 = 0; g0 < G; g0 += kGtTile) {
    const int n = static_cast<int>(G - g0 < kGtTile ? G - g0 : kGtTile);
    __syncthreads();  // the previous tile is consumed
    if (threadIdx.x < n) {
      const int64_t g = b * G + g0 + threadIdx.x;
      const T* box = gt + g * 4;
      s_box[threadIdx.x][0] = box[0];
      s_box[threadIdx.x][1] = box[1];
      s_box[threadIdx.x][2] = box[2];
      s_box[threadIdx.x][3] = box[3];
      s_box[threadIdx.x][4] = math::box_area(box[0], box[1], box[2], box[3]);
      s_valid[threadIdx.x] = labels[g] > 0;
    }
    __syncthreads();
    for (int k = 0; k < n; ++k) {
      if (!s_valid[k]) continue;  // uniform across the block
      const T* s = s_box[k];
      const T iou = active ? math::iou_xyxy(s[0], s[1], s[2], s[3], s[4], pb[0], pb[1], pb[2], pb[3], parea) : T(-1);
      if (iou > best) best = iou, best_g = g0 + k;  // strict: the lowest GT index keeps a tie
      // Warp argmax over priors; a tie goes to the lower prior index.
      T v = iou;
      int32_t idx = static_cast<int32_t>(active ? p : INT_MAX);
      for (int offset = 16; offset > 0; offset >>= 1) {
        const T ov = __shfl_down_sync(kFullMask, v, offset);
        const int32_t oi = __shfl_down_sync(kFullMask, idx, offset);
        if (ov > v || (ov == v && oi < idx)) v = ov, idx = oi;
      }
      if (lane == 0) s_warp_iou[k][warp] = v, s_warp_prior[k][warp] = idx;
    }
    __syncthreads();
    if (threadIdx.x < n && s_valid[threadIdx.x]) {
      const int k = threadIdx.x;
      T v = s_warp_iou[k][0];
      int32_t idx = s_warp_prior[k][0];
      for (int w = 1; w < kWarps; ++w) {  // warps in prior order: strict > keeps the lowest
        if (s_warp_iou[k][w] > v) v = s_warp_iou[k][w], idx = s_warp_prior[k][w];
      }
      const int64_t slot = (b * G + g0 + k) * blocks_per_image + blk;
      block_best_iou[slot] = v;
      block_best_prior[slot] = idx;
    }
  }

  if (!active) return;
  const int64_t o = b * P + p;
  owner[o] = -1;
  T* loc = loc_t + o * 4;
  if (best_g >= 0 && best >= threshold) {
    conf_t[o] = labels[b * G + best_g];
    math::encode(gt + (b * G + best_g) * 4, priors + p * 4, v0, v1, loc);
  } else {
    conf_t[o] = 0;
    loc[0] = loc[1] = loc[2] = loc[3] = T(0);
  }
  matched_iou[o] = best_g >= 0 ? best : T(0);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) force_kernel(
    const T* __restrict__ priors, const T* __restrict__ gt, const int64_t* __restrict__ labels, int64_t P,
    int64_t G, int blocks_per_image, T v0, T v1, const T* __restrict__ block_best_iou,
    const int32_t* __restrict__ block_best_prior, int32_t* __restrict__ gt_best_prior, T* __restrict__ gt_best_iou,
    int32_t* owner, T* __restrict__ loc_t, int64_t* __restrict__ conf_t, T* __restrict__ matched_iou) {
  const int64_t b = blockIdx.x;
  for (int64_t g = threadIdx.x; g < G; g += blockDim.x) {
    if (labels[b * G + g] <= 0) continue;
    const int64_t base = (b * G + g) * blocks_per_image;
    T v = block_best_iou[base];
    int32_t idx = block_best_prior[base];
    for (int blk = 1; blk < blocks_per_image; ++blk) {  // blocks in prior order: strict > keeps the lowest
      if (block_best_iou[base + blk] > v) v = block_best_iou[base + blk], idx = block_best_prior[base + blk];
    }
    gt_best_prior[b * G + g] = idx;
    gt_best_iou[b * G + g] = v;
    atomicMax(owner + b * P + idx, static_cast<int32_t>(g));  // the largest GT index owns a shared prior
  }
  __syncthreads();  // every atomicMax of this image is done and visible
  for (int64_t g = threadIdx.x; g < G; g += blockDim.x) {
    if (labels[b * G + g] <= 0) continue;
    const int64_t p = gt_best_prior[b * G + g], o = b * P + p;
    if (__ldcg(owner + o) != static_cast<int32_t>(g)) continue;
    conf_t[o] = labels[b * G + g];
    math::encode(gt + (b * G + g) * 4, priors + p * 4, v0, v1, loc_t + o * 4);
    matched_iou[o] = gt_best_iou[b * G + g];
  }
}

bool skip_input_checks() {
  if (at::cuda::currentStreamCaptureStatus() != at::cuda::CaptureStatus::None) return true;
  const char* env = std::getenv("SCRATCHDET_SKIP_INPUT_CHECKS");
  return env != nullptr && std::strcmp(env, "1") == 0;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> match_priors_cuda(const at::Tensor& priors_in,
                                                                 const at::Tensor& gt_boxes_in,
                                                                 const at::Tensor& gt_labels_in,
                                                                 double iou_threshold,
                                                                 c10::ArrayRef<double> variances) {
  check_match_priors_args(priors_in, gt_boxes_in, gt_labels_in, iou_threshold, variances);
  check_device(priors_in, c10::kCUDA, "match_priors", "priors");
  const c10::cuda::CUDAGuard guard(priors_in.device());
  auto [dtype, priors, gt_boxes, gt_labels, loc_t, conf_t, matched_iou, B, G, P] =
      prepare_match_priors(priors_in, gt_boxes_in, gt_labels_in);
  auto stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES(dtype, "match_priors_cuda", [&] {
    const scalar_t* pr = priors.const_data_ptr<scalar_t>();
    const scalar_t* gt = gt_boxes.const_data_ptr<scalar_t>();
    const int64_t* lb = gt_labels.const_data_ptr<int64_t>();
    if (!skip_input_checks() && (P > 0 || B * G > 0)) {
      auto summary = at::empty({3}, gt_labels.options());
      scan_inputs_kernel<scalar_t><<<1, 1024, 0, stream>>>(pr, P, gt, lb, B * G, summary.mutable_data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const auto host = summary.cpu();  // the one synchronisation
      const int64_t* h = host.const_data_ptr<int64_t>();
      MatchPriorsDataSummary s;
      s.priors_invalid = h[0] != 0;
      s.max_label = h[1];
      s.first_invalid_gt = h[2];
      check_match_priors_data(s, gt_boxes_in);
    }
    if (B == 0 || P == 0) return;
    const int blocks_per_image = static_cast<int>((P + kThreads - 1) / kThreads);
    TORCH_CHECK(B * blocks_per_image <= INT_MAX, "match_priors: batch too large for one launch (B = ", B,
                ", P = ", P, ")");
    auto block_best_iou = at::empty({B, G, blocks_per_image}, priors.options());
    auto block_best_prior = at::empty({B, G, blocks_per_image}, gt_labels.options().dtype(at::kInt));
    auto owner = at::empty({B, P}, gt_labels.options().dtype(at::kInt));
    const auto thr = static_cast<scalar_t>(iou_threshold);
    const auto v0 = static_cast<scalar_t>(variances[0]), v1 = static_cast<scalar_t>(variances[1]);
    match_kernel<scalar_t><<<static_cast<unsigned>(B * blocks_per_image), kThreads, 0, stream>>>(
        pr, gt, lb, P, G, blocks_per_image, thr, v0, v1, block_best_iou.mutable_data_ptr<scalar_t>(),
        block_best_prior.mutable_data_ptr<int32_t>(), owner.mutable_data_ptr<int32_t>(),
        loc_t.mutable_data_ptr<scalar_t>(), conf_t.mutable_data_ptr<int64_t>(),
        matched_iou.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (G == 0) return;
    TORCH_CHECK(B <= INT_MAX, "match_priors: batch too large for one launch (B = ", B, ")");
    auto gt_best_prior = at::empty({B, G}, gt_labels.options().dtype(at::kInt));
    auto gt_best_iou = at::empty({B, G}, priors.options());
    force_kernel<scalar_t><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
        pr, gt, lb, P, G, blocks_per_image, v0, v1, block_best_iou.const_data_ptr<scalar_t>(),
        block_best_prior.const_data_ptr<int32_t>(), gt_best_prior.mutable_data_ptr<int32_t>(),
        gt_best_iou.mutable_data_ptr<scalar_t>(), owner.mutable_data_ptr<int32_t>(),
        loc_t.mutable_data_ptr<scalar_t>(), conf_t.mutable_data_ptr<int64_t>(),
        matched_iou.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loc_t, conf_t, matched_iou};
}

}  // namespace
}  // namespace scratchdet

TORCH_LIBRARY_IMPL(scratchdet, CUDA, m) {
  m.impl("match_priors", &scratchdet::match_priors_cuda);
}
