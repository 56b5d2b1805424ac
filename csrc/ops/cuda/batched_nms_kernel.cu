// batched_nms on CUDA: sort by score (and by class above kTorchvisionVanillaNumelCUDA, where
// torchvision switches to a per-class loop), then greedy_nms_kernel with one block per segment.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>

#include "../batched_nms.h"
#include "greedy_nms.cuh"

namespace scratchdet {
namespace {

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
  // std::optional<bool> spelled out: sort(true, 0) binds to sort(int64_t dim, bool descending).
  const std::optional<bool> stable = true;
  auto order = std::get<1>(scores.sort(stable, /*dim=*/0, /*descending=*/true));
  at::Tensor seg_begin, seg_len;
  int64_t num_seg = 1;
  if (!shifted) {  // group by class, keeping score order inside each class
    order = order.index_select(0, std::get<1>(idxs.index_select(0, order).sort(stable, /*dim=*/0, /*descending=*/false)));
    seg_len = std::get<2>(at::unique_consecutive(idxs.index_select(0, order), false, true));
    seg_begin = seg_len.cumsum(0) - seg_len;
    num_seg = seg_len.size(0);
  }
  const auto sorted_boxes = boxes.index_select(0, order).contiguous();
  auto kept_pos = at::empty({n}, order.options());
  auto flags = at::zeros({n}, order.options().dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kHalf, boxes.scalar_type(), "batched_nms_cuda", [&] {
    greedy_nms_kernel<scalar_t><<<num_seg, kNmsChunk, 0, stream>>>(
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
}
