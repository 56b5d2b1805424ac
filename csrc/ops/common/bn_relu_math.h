#pragma once
// Per-element math of batch_norm_relu (training-mode BatchNorm + residual add + ReLU), shared by
// the CPU kernel (its scalar tails) and the CUDA epilogue, so the CPU tests cover what both compute.
//
// Forward:  y = relu?(x * scale + shift + residual?), scale = w * invstd, shift = b - mean * scale.
// Backward: g = relu ? (y > 0 ? dy : 0) : dy (ReLU's gradient, from its output, as torch's
//           threshold_backward), and dx = s * g + c1 * (x - mean) + c0 with the per-channel
//           constants of bn_relu_grad_constants (the BatchNorm gradient in two fused multiply-adds).
#include "macros.h"

namespace scratchdet {
namespace math {

template <typename T>
SD_HOST_DEVICE T bn_relu_out(T x, T scale, T shift, T residual, bool relu) {
  const T v = x * scale + shift + residual;
  return relu && v < T(0) ? T(0) : v;  // NaN stays NaN, like torch.relu
}

template <typename T>
SD_HOST_DEVICE T relu_grad(T dy, T y, bool relu) {
  return relu && !(y > T(0)) ? T(0) : dy;
}

// The constants of dx = s * g + c1 * (x - mean) + c0, from the channel's sums over its n values:
// sum_g = sum(g), sum_gxc = sum(g * (x - mean)). The same formula as
// dx = w * invstd * (g - mean(g) - xhat * mean(g * xhat)), xhat = (x - mean) * invstd.
template <typename T>
struct BnGradConstants {
  T s, c1, c0;
};

template <typename T>
SD_HOST_DEVICE BnGradConstants<T> bn_relu_grad_constants(T weight, T invstd, T sum_g, T sum_gxc, T n) {
  const T s = weight * invstd;
  return {s, -s * invstd * invstd * sum_gxc / n, -s * sum_g / n};
}

template <typename T>
SD_HOST_DEVICE T bn_relu_grad_input(T g, T x_minus_mean, BnGradConstants<T> k) {
  return k.s * g + k.c1 * x_minus_mean + k.c0;
}

}  // namespace math
}  // namespace scratchdet
