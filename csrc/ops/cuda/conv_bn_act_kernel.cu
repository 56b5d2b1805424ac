// CUDA: cuDNN convolution without bias (ATen would add it in a separate pass), then one fused
// epilogue kernel: + per-channel bias + residual, ReLU, in place, vectorised to 16-byte accesses
// (with a scalar tail for sizes that are not a multiple of the vector width).
// No host synchronisation, so the op can be captured in a CUDA graph.
//
// cuDNN's own fused conv-bias-add-ReLU (at::cudnn_convolution_add_relu) was not adopted: it
// could not be timed against this path here (no GPU); see benchmarks/RESULTS.md.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "../conv_bn_act.h"

namespace scratchdet {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, int kVec>
struct alignas(sizeof(scalar_t) * kVec) Pack {
  scalar_t v[kVec];
};

// One element of the epilogue in acc_t: + bias (rounded to scalar_t after it, as the unfused
// conv with bias would), + residual, ReLU (NaN stays NaN, like torch.relu).
template <typename scalar_t, bool kBias, bool kResidual, bool kRelu, typename acc_t = at::opmath_type<scalar_t>>
__device__ __forceinline__ scalar_t epilogue_one(scalar_t v, const scalar_t* bias, int64_t c, scalar_t r) {
  acc_t x = static_cast<acc_t>(v);
  if constexpr (kBias) x = static_cast<acc_t>(static_cast<scalar_t>(x + static_cast<acc_t>(bias[c])));
  if constexpr (kResidual) x += static_cast<acc_t>(r);
  if constexpr (kRelu) x = x < acc_t(0) ? acc_t(0) : x;
  return static_cast<scalar_t>(x);
}

// Element i's channel: (i / inner) % channels, with inner = H*W for NCHW and 1 for
// channels_last. The body takes kVec consecutive elements per step (16-byte accesses; packs may
// straddle channels, so the channel is tracked per element); the n % kVec elements after the
// last full pack are the scalar tail, one per thread.
template <typename scalar_t, int kVec, bool kBias, bool kResidual, bool kRelu>
__global__ void conv_bn_act_epilogue_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ bias,
                                            const scalar_t* __restrict__ residual, int64_t n, int64_t channels,
                                            int64_t inner) {
  using P = Pack<scalar_t, kVec>;
  const int64_t n_packs = n / kVec;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = tid; p < n_packs; p += step) {
    P o = reinterpret_cast<P*>(out)[p];
    P r;
    if constexpr (kResidual) r = reinterpret_cast<const P*>(residual)[p];
    int64_t c = 0, pos = 0;
    if constexpr (kBias) {
      const int64_t first = p * kVec;
      c = (first / inner) % channels;
      pos = first % inner;
    }
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      o.v[k] = epilogue_one<scalar_t, kBias, kResidual, kRelu>(o.v[k], bias, c, kResidual ? r.v[k] : scalar_t(0));
      if constexpr (kBias) {
        if (++pos == inner) {
          pos = 0;
          if (++c == channels) c = 0;
        }
      }
    }
    reinterpret_cast<P*>(out)[p] = o;
  }
  for (int64_t i = n_packs * kVec + tid; i < n; i += step) {  // the tail (empty when kVec == 1 or n % kVec == 0)
    const int64_t c = kBias ? (i / inner) % channels : 0;
    out[i] = epilogue_one<scalar_t, kBias, kResidual, kRelu>(out[i], bias, c, kResidual ? residual[i] : scalar_t(0));
  }
}

template <typename scalar_t, int kVec, bool kBias, bool kResidual, bool kRelu>
void launch(scalar_t* out, const scalar_t* bias, const scalar_t* residual, int64_t n, int64_t channels,
            int64_t inner, cudaStream_t stream) {
  if (n == 0) return;
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t work = std::max<int64_t>(n / kVec, 1);  // packs (the tail needs at most kVec - 1 threads)
  const int64_t blocks = std::min<int64_t>((work + kThreads - 1) / kThreads, int64_t(sms) * 8);
  conv_bn_act_epilogue_kernel<scalar_t, kVec, kBias, kResidual, kRelu>
      <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(out, bias, residual, n, channels, inner);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, bool kBias, bool kResidual, bool kRelu>
void run_epilogue(scalar_t* out, const scalar_t* bias, const scalar_t* residual, int64_t n,
                  int64_t channels, int64_t inner, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(scalar_t) > 0 ? 16 / sizeof(scalar_t) : 1;
  const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  // The packs need 16-byte aligned out and residual; any n works (vector body + scalar tail).
  if (aligned(out) && (!kResidual || aligned(residual))) {
    launch<scalar_t, kVec, kBias, kResidual, kRelu>(out, bias, residual, n, channels, inner, stream);
  } else {
    launch<scalar_t, 1, kBias, kResidual, kRelu>(out, bias, residual, n, channels, inner, stream);
  }
}

at::Tensor conv_bn_act_cuda(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                            int64_t groups, bool relu) {
  check_conv_bn_act_args(input, weight, bias, residual, stride, padding, dilation, groups);
  check_device(input, c10::kCUDA, "conv_bn_act", "input");
  const c10::cuda::CUDAGuard guard(input.device());
  auto out = conv_bn_act_convolution(input, weight, std::nullopt, stride, padding, dilation, groups);
  const bool has_bias = bias.has_value(), has_res = residual.has_value();
  if (!has_bias && !has_res && !relu) return out;
  const int64_t n = out.numel();
  if (n == 0) return out;
  const auto b = has_bias ? bias->contiguous() : at::Tensor();
  const auto res = has_res ? residual_like(*residual, out) : at::Tensor();
  const int64_t channels = out.size(1);
  const int64_t inner = out.suggest_memory_format() == at::MemoryFormat::ChannelsLast
                            ? 1 : out.size(2) * out.size(3);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "conv_bn_act_cuda", [&] {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const scalar_t* bp = has_bias ? b.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* rp = has_res ? res.const_data_ptr<scalar_t>() : nullptr;
    // 8 variants of (bias, residual, relu); the all-false one returned above.
    if (has_bias) {
      if (has_res) {
        relu ? run_epilogue<scalar_t, true, true, true>(o, bp, rp, n, channels, inner, stream)
             : run_epilogue<scalar_t, true, true, false>(o, bp, rp, n, channels, inner, stream);
      } else {
        relu ? run_epilogue<scalar_t, true, false, true>(o, bp, rp, n, channels, inner, stream)
             : run_epilogue<scalar_t, true, false, false>(o, bp, rp, n, channels, inner, stream);
      }
    } else {
      if (has_res) {
        relu ? run_epilogue<scalar_t, false, true, true>(o, bp, rp, n, channels, inner, stream)
             : run_epilogue<scalar_t, false, true, false>(o, bp, rp, n, channels, inner, stream);
      } else {
        run_epilogue<scalar_t, false, false, true>(o, bp, rp, n, channels, inner, stream);
      }
    }
  });
  return out;
}

}  // namespace
}  // namespace scratchdet

TORCH_LIBRARY_IMPL(scratchdet, CUDA, m) {
  m.impl("conv_bn_act", &scratchdet::conv_bn_act_cuda);
}
