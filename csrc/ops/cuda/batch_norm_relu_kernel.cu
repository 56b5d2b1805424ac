// CUDA kernels of batch_norm_relu and batch_norm_relu_backward: ATen's training-mode batch norm
// (cuDNN or its native kernels, whichever ATen picks) for the statistics and the normalisation,
// with the residual add + ReLU (forward) and the ReLU mask (backward) as one elementwise pass each,
// the per-element math of common/bn_relu_math.h. A kernel of our own for the whole thing waits
// for a GPU run that shows it is faster (benchmarks/bench_batch_norm_relu.py has the CUDA case).
// No host synchronisation.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../batch_norm_relu.h"
#include "../common/bn_relu_math.h"

namespace scratchdet {
namespace {

constexpr int kThreads = 256;

// out = relu?(out + residual?), in place; the tensors share their strides, so the walk is flat.
template <typename scalar_t>
__global__ void add_relu_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ residual, int64_t n,
                                bool relu) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const acc_t r = residual ? static_cast<acc_t>(residual[i]) : acc_t(0);
    out[i] = static_cast<scalar_t>(math::bn_relu_out(static_cast<acc_t>(out[i]), acc_t(1), acc_t(0), r, relu));
  }
}

// g = the ReLU-masked gradient.
template <typename scalar_t>
__global__ void relu_grad_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ y,
                                 scalar_t* __restrict__ g, int64_t n, bool relu) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    g[i] = math::relu_grad(dy[i], y[i], relu);
  }
}

int64_t blocks_for(int64_t n) {
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(sms) * 8));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_relu_cuda(const at::Tensor& input,
                                                                    const std::optional<at::Tensor>& weight,
                                                                    const std::optional<at::Tensor>& bias,
                                                                    const std::optional<at::Tensor>& residual,
                                                                    double eps, bool relu) {
  check_batch_norm_relu_args(input, weight, bias, residual, eps);
  check_device(input, c10::kCUDA, "batch_norm_relu", "input");
  const c10::cuda::CUDAGuard guard(input.device());
  auto [out, save_mean, save_invstd] =
      at::native_batch_norm(input, weight, bias, std::nullopt, std::nullopt, /*training=*/true, 0.0, eps);
  out = out.contiguous(input.suggest_memory_format());
  if (residual.has_value() || relu) {
    const auto res = residual.has_value() ? residual->contiguous(input.suggest_memory_format()) : at::Tensor();
    const int64_t n = out.numel();
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "batch_norm_relu_cuda", [&] {
      add_relu_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
          out.mutable_data_ptr<scalar_t>(), res.defined() ? res.const_data_ptr<scalar_t>() : nullptr, n, relu);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {out, save_mean, save_invstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_relu_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const at::Tensor& save_mean, const at::Tensor& save_invstd, bool relu, bool residual) {
  check_batch_norm_relu_backward_args(grad_out, out, input, weight, save_mean, save_invstd);
  check_device(input, c10::kCUDA, "batch_norm_relu_backward", "input");
  const c10::cuda::CUDAGuard guard(input.device());
  const auto format = input.suggest_memory_format();
  const auto dy = grad_out.contiguous(format);
  const auto y = out.contiguous(format);
  auto g = relu ? at::empty_like(dy, format) : dy;
  if (relu) {
    const int64_t n = g.numel();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "batch_norm_relu_backward_cuda", [&] {
      relu_grad_kernel<scalar_t><<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          dy.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), g.mutable_data_ptr<scalar_t>(), n, true);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  // Without an affine weight the gradients are those of weight 1 (grad_weight is still returned).
  const auto w = weight.has_value() ? *weight : at::ones({input.size(1)}, save_mean.options());
  // Training mode: the saved statistics are used and eps is not (any positive value will do).
  auto [dx, dw, db] = at::native_batch_norm_backward(g, input, w, std::nullopt, std::nullopt, save_mean, save_invstd,
                                                     /*train=*/true, 1e-5, {true, true, true});
  // grad_residual is g, a tensor of its own (an op's output must not alias its grad_out)
  const auto dres = !residual ? at::empty({0}, input.options()) : relu ? g : dy.clone();
  return {dx, dw, db, dres};
}

}  // namespace
}  // namespace scratchdet

TORCH_LIBRARY_IMPL(scratchdet, CUDA, m) {
  m.impl("batch_norm_relu", &scratchdet::batch_norm_relu_cuda);
  m.impl("batch_norm_relu_backward", &scratchdet::batch_norm_relu_backward_cuda);
}
