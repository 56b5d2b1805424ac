#pragma once
// Shared by CPU (.cpp) and CUDA (.cu) translation units, so the per-element
// math below is compiled, and therefore tested, on the CPU as well.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define SD_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SD_HOST_DEVICE inline
#endif
