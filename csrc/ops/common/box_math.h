#pragma once
// IoU, box encode and decode, and the box validity tests of match_priors' data
// checks. Every function here is __host__ __device__ and is written in the same
// operation order as scratchdet/ops/reference.py, so CPU, CUDA and the reference
// round identically (CUDA builds use -fmad=false so no fused multiply-add changes
// the last bit and therefore a tie). NMS has its own arithmetic: nms_math.h.
#include <math.h>

#include "macros.h"

namespace scratchdet {
namespace math {

SD_HOST_DEVICE float sd_log(float x) { return logf(x); }
SD_HOST_DEVICE double sd_log(double x) { return log(x); }
SD_HOST_DEVICE float sd_exp(float x) { return expf(x); }
SD_HOST_DEVICE double sd_exp(double x) { return exp(x); }

template <typename T>
SD_HOST_DEVICE T sd_max(T a, T b) { return a > b ? a : b; }
template <typename T>
SD_HOST_DEVICE T sd_min(T a, T b) { return a < b ? a : b; }

// The smallest positive normal number (std::numeric_limits::min, usable on the device).
template <typename T>
SD_HOST_DEVICE T min_normal();
template <>
SD_HOST_DEVICE float min_normal<float>() { return 1.17549435082228750797e-38f; }
template <>
SD_HOST_DEVICE double min_normal<double>() { return 2.22507385850720138309e-308; }

// Area of an (x1, y1, x2, y2) box, with no +1 and no clamping, as torchvision.
template <typename T>
SD_HOST_DEVICE T box_area(T x1, T y1, T x2, T y2) {
  return (x2 - x1) * (y2 - y1);
}

// IoU of two (x1, y1, x2, y2) boxes given their precomputed areas.
// Returns 0 where the union is not positive (torchvision returns NaN there).
template <typename T>
SD_HOST_DEVICE T iou_xyxy(T ax1, T ay1, T ax2, T ay2, T area_a,
                          T bx1, T by1, T bx2, T by2, T area_b) {
  const T w = sd_max(sd_min(ax2, bx2) - sd_max(ax1, bx1), T(0));
  const T h = sd_max(sd_min(ay2, by2) - sd_max(ay1, by1), T(0));
  const T inter = w * h;
  const T uni = area_a + area_b - inter;
  // Branch-free so that loops over boxes vectorise (a division under a branch
  // may not be speculated): where uni <= 0 (or NaN) this is 0 / min_normal = 0.
  // Differs from inter / uni only for 0 < uni < the smallest normal number.
  return (uni > T(0) ? inter : T(0)) / sd_max(uni, min_normal<T>());
}

template <typename T>
SD_HOST_DEVICE T iou_xyxy(const T* a, const T* b) {
  return iou_xyxy(a[0], a[1], a[2], a[3], box_area(a[0], a[1], a[2], a[3]),
                  b[0], b[1], b[2], b[3], box_area(b[0], b[1], b[2], b[3]));
}

// (cx, cy, w, h) -> (x1, y1, x2, y2), as reference.point_form.
template <typename T>
SD_HOST_DEVICE void cxcywh_to_xyxy(const T* c, T* out) {
  out[0] = c[0] - c[2] / T(2);
  out[1] = c[1] - c[3] / T(2);
  out[2] = c[0] + c[2] / T(2);
  out[3] = c[1] + c[3] / T(2);
}

// SSD box encoding of a ground truth (x1, y1, x2, y2) against a prior
// (cx, cy, w, h): ((x1+x2)/2 - cx) / (v0 w) and log((x2-x1)/w) / v1.
template <typename T>
SD_HOST_DEVICE void encode(const T* gt, const T* prior, T v0, T v1, T* out) {
  out[0] = ((gt[0] + gt[2]) / T(2) - prior[0]) / (v0 * prior[2]);
  out[1] = ((gt[1] + gt[3]) / T(2) - prior[1]) / (v0 * prior[3]);
  out[2] = sd_log((gt[2] - gt[0]) / prior[2]) / v1;
  out[3] = sd_log((gt[3] - gt[1]) / prior[3]) / v1;
}

// SSD box decoding of offsets against a prior, to (x1, y1, x2, y2).
template <typename T>
SD_HOST_DEVICE void decode(const T* loc, const T* prior, T v0, T v1, T* out) {
  const T cx = prior[0] + loc[0] * v0 * prior[2];
  const T cy = prior[1] + loc[1] * v0 * prior[3];
  const T w = prior[2] * sd_exp(loc[2] * v1);
  const T h = prior[3] * sd_exp(loc[3] * v1);
  out[0] = cx - w / T(2);
  out[1] = cy - h / T(2);
  out[2] = out[0] + w;
  out[3] = out[1] + h;
}

// decode() with exp(loc[2:] * v1) given (ew, eh): detect takes the exp from
// ATen so that its boxes are bit-identical to the reference's.
template <typename T>
SD_HOST_DEVICE void decode_given_exp(const T* loc, const T* prior, T v0, T ew, T eh, T* out) {
  const T cx = prior[0] + loc[0] * v0 * prior[2];
  const T cy = prior[1] + loc[1] * v0 * prior[3];
  const T w = prior[2] * ew;
  const T h = prior[3] * eh;
  out[0] = cx - w / T(2);
  out[1] = cy - h / T(2);
  out[2] = out[0] + w;
  out[3] = out[1] + h;
}

// torch.clamp(x, 0, 1), NaN kept.
template <typename T>
SD_HOST_DEVICE T clamp01(T x) {
  return x < T(0) ? T(0) : (x > T(1) ? T(1) : x);
}

// True for finite x (inf - inf and NaN - NaN are NaN); needs no <cmath> on the device.
template <typename T>
SD_HOST_DEVICE bool is_finite(T x) {
  return x - x == T(0);
}

// A prior (cx, cy, w, h) match_priors accepts: finite, with positive width and height.
template <typename T>
SD_HOST_DEVICE bool is_valid_prior(const T* c) {
  return is_finite(c[0]) && is_finite(c[1]) && is_finite(c[2]) && is_finite(c[3]) && c[2] > T(0) &&
         c[3] > T(0);
}

// A ground-truth (x1, y1, x2, y2) box match_priors accepts: finite, x2 > x1 and y2 > y1.
template <typename T>
SD_HOST_DEVICE bool is_valid_gt_box(const T* b) {
  return is_finite(b[0]) && is_finite(b[1]) && is_finite(b[2]) && is_finite(b[3]) && b[2] > b[0] &&
         b[3] > b[1];
}

}  // namespace math
}  // namespace scratchdet
