#pragma once
// Greedy NMS on CUDA, one block per segment (an image for detect, a class for
// batched_nms): candidates come in processing order, a chunk of kNmsChunk at a
// time; each thread tests its candidate against the boxes kept so far, then
// builds its row of the chunk's suppression bitmask, and one thread walks the
// chunk in order. The result is exactly the sequential greedy NMS, with
// torchvision's arithmetic (nms_math.h).
//
// Included by batched_nms_kernel.cu and detect_kernel.cu. The kernel has internal
// linkage, so each translation unit (compiled without relocatable device code)
// carries and registers its own instances.
#include <cstdint>

#include "../common/box_math.h"
#include "../common/nms_math.h"

namespace scratchdet {
namespace {

constexpr int kNmsChunk = 256;  // threads per block, candidates per chunk
constexpr int kNmsWords = kNmsChunk / 32;

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
  __shared__ T chunk_box[kNmsChunk][4];
  __shared__ T chunk_area[kNmsChunk];
  __shared__ int64_t chunk_label[kNmsChunk];
  __shared__ bool alive[kNmsChunk];
  __shared__ uint32_t mask[kNmsChunk][kNmsWords];
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

  for (int64_t start = 0; start < len && !s_done; start += kNmsChunk) {
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
    for (int w = 0; w < kNmsWords; ++w) {
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
      uint32_t removed[kNmsWords];
      for (int w = 0; w < kNmsWords; ++w) removed[w] = 0;
      int64_t kept = s_kept;
      bool done = false;
      const int64_t n = len - start < kNmsChunk ? len - start : kNmsChunk;
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
        for (int w = 0; w < kNmsWords; ++w) removed[w] |= mask[t][w];
      }
      s_kept = kept;
      s_done = done;
    }
    __syncthreads();
  }
  if (tid == 0 && num_kept) num_kept[s] = s_kept;
}

}  // namespace
}  // namespace scratchdet
