#pragma once
// Public C++ API of the scratchdet operator library (the CMake library scratchdet_ops, and the
// Python extension scratchdet._C). Every op is a typed function in scratchdet::ops that calls the
// dispatcher, so it runs the CPU or CUDA kernel, with autocast, exactly as
// torch.ops.scratchdet.<op> does from Python:
//
//   #include <scratchdet/scratchdet.h>
//   at::Tensor iou = scratchdet::ops::box_iou(boxes1, boxes2);
//   auto [boxes, scores, labels, num] = scratchdet::ops::detect(loc, logits, priors);
//
// Source layout, one file set per op <op>:
//   ops/<op>.h               argument checks (the C++ side of reference.check_<op>_args) + typed API
//   ops/<op>.cpp             schema (TORCH_LIBRARY_FRAGMENT), typed API, autocast kernels
//   ops/cpu/<op>_kernel.cpp  CPU kernel (TORCH_LIBRARY_IMPL CPU)
//   ops/cuda/<op>_kernel.cu  CUDA kernel (TORCH_LIBRARY_IMPL CUDA), where the op has one
//   ops/common/              what several ops share: checks, box and NMS arithmetic, autocast,
//                            Winograd transforms; ops/cuda/greedy_nms.cuh, the CUDA NMS kernel
// winograd_f43_pack and winograd_f63_pack belong to winograd_conv3x3's file set, batch_norm_relu_backward to
// batch_norm_relu's (its autograd formula is registered from Python: the C++ op is not differentiable).
#include <string>

#include "ops/batch_norm_relu.h"
#include "ops/batched_nms.h"
#include "ops/box_iou.h"
#include "ops/conv_bn_act.h"
#include "ops/detect.h"
#include "ops/match_priors.h"
#include "ops/winograd_conv3x3.h"

namespace scratchdet {

// key=value pairs separated by ';': cpu, cuda, cuda_arch_list, torch_version, ...
std::string build_info();

}  // namespace scratchdet
