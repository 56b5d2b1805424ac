#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "../box_iou.h"
#include "../common/box_math.h"

namespace scratchdet {
namespace {

constexpr int kTile = 32;
constexpr int kRows = 8;              // blockDim.y
constexpr int64_t kMaxGridY = 65535;  // CUDA's limit on gridDim.y

// A block stages a tile of kTile boxes2 in shared memory, then its threads walk the rows of
// boxes1 (i, grid-stride over gridDim.y * kRows: any N, where one row per thread would stop at
// 65535 * 8 rows), one (i, j) each per step.
template <typename scalar_t>
__global__ void box_iou_kernel(const scalar_t* __restrict__ b1, const scalar_t* __restrict__ b2,
                               scalar_t* __restrict__ out, int64_t n, int64_t m) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t tile[kTile][5];
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kTile + threadIdx.x;
  if (threadIdx.y == 0 && j < m) {
    const acc_t x1 = b2[j * 4], y1 = b2[j * 4 + 1], x2 = b2[j * 4 + 2], y2 = b2[j * 4 + 3];
    tile[threadIdx.x][0] = x1;
    tile[threadIdx.x][1] = y1;
    tile[threadIdx.x][2] = x2;
    tile[threadIdx.x][3] = y2;
    tile[threadIdx.x][4] = math::box_area(x1, y1, x2, y2);
  }
  __syncthreads();  // the only barrier: threads may leave below
  if (j >= m) return;
  const acc_t* t = tile[threadIdx.x];
  const int64_t row_step = static_cast<int64_t>(gridDim.y) * blockDim.y;
  for (int64_t i = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; i < n; i += row_step) {
    const acc_t ax1 = b1[i * 4], ay1 = b1[i * 4 + 1], ax2 = b1[i * 4 + 2], ay2 = b1[i * 4 + 3];
    out[i * m + j] = static_cast<scalar_t>(math::iou_xyxy(
        ax1, ay1, ax2, ay2, math::box_area(ax1, ay1, ax2, ay2), t[0], t[1], t[2], t[3], t[4]));
  }
}

at::Tensor box_iou_cuda(const at::Tensor& boxes1_in, const at::Tensor& boxes2_in) {
  check_box_iou_args(boxes1_in, boxes2_in);
  check_device(boxes1_in, c10::kCUDA, "box_iou", "boxes1");
  const c10::cuda::CUDAGuard guard(boxes1_in.device());
  const auto boxes1 = boxes1_in.contiguous();
  const auto boxes2 = boxes2_in.contiguous();
  const int64_t n = boxes1.size(0), m = boxes2.size(0);
  auto out = at::empty({n, m}, boxes1.options());
  if (n == 0 || m == 0) return out;
  // gridDim.x (columns) may go to 2^31 - 1 blocks: M up to ~6.9e10, past any [N, M] output that fits.
  const dim3 block(kTile, kRows);
  const dim3 grid(static_cast<unsigned>((m + kTile - 1) / kTile),
                  static_cast<unsigned>(std::min<int64_t>((n + kRows - 1) / kRows, kMaxGridY)));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "box_iou_cuda", [&] {
    box_iou_kernel<scalar_t><<<grid, block, 0, stream>>>(
        boxes1.const_data_ptr<scalar_t>(), boxes2.const_data_ptr<scalar_t>(),
        out.mutable_data_ptr<scalar_t>(), n, m);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace scratchdet

TORCH_LIBRARY_IMPL(scratchdet, CUDA, m) {
  m.impl("box_iou", &scratchdet::box_iou_cuda);
}
