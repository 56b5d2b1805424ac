"""Pure-PyTorch reference implementations of every scratchdet op.

This package is the executable spec: each compiled kernel must agree with the
function of the same name here (see tests/). They are written the obvious way,
for clarity rather than speed. One module per op (``nms`` and the SSD box
arithmetic, which several ops share, have their own); every public name is
re-exported here, so ``scratchdet.ops.reference.<name>`` is the way to call them.

Each op's argument checks are a function of their own, ``check_<op>_args``: the
checks of the C++ header ``csrc/ops/<op>.h``, in the same order with the same
wording. They read no tensor data, so the fake kernels (``_registrations.py``)
call them too; match_priors' checks of the values themselves are apart, in
``check_match_priors_data``.
"""
from .batch_norm_relu import (batch_norm_relu, batch_norm_relu_backward, check_batch_norm_relu_args,
                              check_batch_norm_relu_backward_args)
from .batched_nms import TORCHVISION_VANILLA_NUMEL, batched_nms, check_batched_nms_args
from .box_iou import box_iou, check_box_iou_args
from .box_math import decode, encode, point_form
from .conv_bn_act import check_conv_bn_act_args, conv_bn_act, conv_pair
from .detect import check_detect_args, detect
from .match_priors import MAX_MATCH_INDEX, check_match_priors_args, check_match_priors_data, match_priors
from .nms import nms
from .winograd_conv3x3 import (WINOGRAD_F43, WINOGRAD_F63, check_winograd_conv3x3_args,
                               check_winograd_f43_pack_args, check_winograd_f63_pack_args, winograd_conv3x3,
                               winograd_f43_pack, winograd_f63_pack)

__all__ = [
    # box_iou
    "box_iou", "check_box_iou_args",
    # SSD box arithmetic
    "point_form", "encode", "decode",
    # match_priors
    "match_priors", "check_match_priors_args", "check_match_priors_data", "MAX_MATCH_INDEX",
    # nms, batched_nms, detect
    "nms", "batched_nms", "check_batched_nms_args", "TORCHVISION_VANILLA_NUMEL", "detect", "check_detect_args",
    # conv_bn_act
    "conv_bn_act", "check_conv_bn_act_args", "conv_pair",
    # winograd_conv3x3
    "winograd_conv3x3", "winograd_f43_pack", "winograd_f63_pack", "check_winograd_conv3x3_args",
    "check_winograd_f43_pack_args", "check_winograd_f63_pack_args",
    "WINOGRAD_F43", "WINOGRAD_F63",
    # batch_norm_relu
    "batch_norm_relu", "batch_norm_relu_backward", "check_batch_norm_relu_args",
    "check_batch_norm_relu_backward_args",
]
