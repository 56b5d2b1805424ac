"""scratchdet's operators: compiled C++/CUDA kernels with pure-PyTorch fallbacks.

Every op here is also ``torch.ops.scratchdet.<name>`` when the extension is
built, with fake kernels registered so ``torch.compile(fullgraph=True)`` traces
through them. :mod:`scratchdet.ops.reference` holds the executable spec;
``_registrations.py`` the fake kernels and the fallback to it.
"""
from . import reference
from ._extension import EXTENSION_LOADED, build_info
from .batch_norm_relu import batch_norm_relu, batch_norm_relu_backward
from .batched_nms import batched_nms
from .box_iou import box_iou
from .conv_bn_act import conv_bn_act
from .detect import detect
from .match_priors import match_priors
from .winograd_conv3x3 import is_winograd_conv, winograd_conv3x3, winograd_f43_pack, winograd_f63_pack

__all__ = ["EXTENSION_LOADED", "build_info", "reference", "box_iou", "match_priors", "detect", "batched_nms",
           "conv_bn_act", "winograd_conv3x3", "winograd_f43_pack", "winograd_f63_pack", "is_winograd_conv", "batch_norm_relu",
           "batch_norm_relu_backward"]
