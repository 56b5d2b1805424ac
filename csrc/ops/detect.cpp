// detect: schema, typed API and autocast. Kernels: cpu/detect_kernel.cpp, cuda/detect_kernel.cu.
#include "detect.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/autocast.h"

namespace scratchdet {
namespace ops {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> detect(const at::Tensor& loc, const at::Tensor& logits,
                                                                  const at::Tensor& priors,
                                                                  c10::ArrayRef<double> variances,
                                                                  double score_threshold, double nms_threshold,
                                                                  int64_t top_k, int64_t keep_top_k, bool clip) {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("scratchdet::detect", "").typed<decltype(detect)>();
  return op.call(loc, logits, priors, variances, score_threshold, nms_threshold, top_k, keep_top_k, clip);
}

}  // namespace ops
}  // namespace scratchdet

TORCH_LIBRARY_FRAGMENT(scratchdet, m) {
  m.def("detect(Tensor loc, Tensor logits, Tensor priors, float[] variances=[0.1, 0.2], "
        "float score_threshold=0.01, float nms_threshold=0.45, int top_k=400, int keep_top_k=200, "
        "bool clip=True) -> (Tensor, Tensor, Tensor, Tensor)");
}

// Its NMS is decided by "IoU > threshold", as batched_nms's: autocast runs it in float32.
SCRATCHDET_REGISTER_AUTOCAST(detect, kFloat32)
