"""The three layers of argument checks say the same thing: for a bad input, the compiled op (C++
TORCH_CHECK), the reference (scratchdet.ops.reference) and the fake kernel (_registrations.py, as
torch.compile and torch.export run it) raise the same message, word for word."""
import importlib
import pkgutil
import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_map

import scratchdet
from scratchdet.ops import _registrations, reference

ops = torch.ops.scratchdet
nan = float("nan")
f32, f64, i64 = torch.float32, torch.float64, torch.int64


def z(*shape, dtype=f32):
    return torch.zeros(*shape, dtype=dtype)


def r(*shape, dtype=f32):
    """Positive values: valid priors (cx, cy, w, h)."""
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(0)) + 0.1).to(dtype)


def gt(*shape):
    """Valid (x1, y1, x2, y2) boxes."""
    xy = torch.rand(*shape[:-1], 2, generator=torch.Generator().manual_seed(1)) * 0.5
    return torch.cat([xy, xy + 0.25], -1)


def labels(*shape, dtype=i64):
    return torch.ones(*shape, dtype=dtype)


# (op name, args, a pattern the message must match). Every argument is positional, as the schema has it.
DET = [[0.1, 0.2], 0.01, 0.45, 400, 200, True]
CONV = [[1, 1], [1, 1], [1, 1], 1, False]
PACKED = z(36, 4, 6)
CASES = [
    ("box_iou", (z(3, 5), z(2, 4)), r"boxes1 of shape \[N, 4\], got shape \[3, 5\]"),
    ("box_iou", (z(3, 4), z(2, 4, 1)), r"boxes2 of shape \[M, 4\]"),
    ("box_iou", (z(3, 4, dtype=i64), z(2, 4, dtype=i64)), "floating-point tensor .*, got torch.int64"),
    ("box_iou", (z(3, 4), z(2, 4, dtype=f64)), "same dtype, got torch.float32 and torch.float64"),
    ("match_priors", (z(20, 5), gt(3, 4, 4), labels(3, 4), 0.5, [0.1, 0.2]), r"priors of shape \[P, 4\]"),
    ("match_priors", (r(20, 4), gt(4, 4), labels(3, 4), 0.5, [0.1, 0.2]), r"gt_boxes of shape \[B, G, 4\]"),
    ("match_priors", (r(20, 4), gt(3, 4, 4), labels(4), 0.5, [0.1, 0.2]), r"gt_labels of shape \[B, G\]"),
    ("match_priors", (r(20, 4, dtype=i64), gt(3, 4, 4), labels(3, 4), 0.5, [0.1, 0.2]), "floating-point"),
    ("match_priors", (r(20, 4), gt(3, 4, 4), labels(3, 4, dtype=torch.int32), 0.5, [0.1, 0.2]),
     "gt_labels to be int64, got torch.int32"),
    ("match_priors", (r(20, 4), gt(3, 4, 4), labels(2, 4), 0.5, [0.1, 0.2]), "to match gt_boxes"),
    ("match_priors", (r(20, 4), gt(3, 4, 4), labels(3, 4), 1.5, [0.1, 0.2]), r"iou_threshold in \[0, 1\], got 1.5"),
    ("match_priors", (r(20, 4), gt(3, 4, 4), labels(3, 4), nan, [0.1, 0.2]), "got nan"),
    ("match_priors", (r(20, 4), gt(3, 4, 4), labels(3, 4), 0.123456789, [0.1, -0.123456789]),
     r"two positive variances, got \[0.1, -0.123457\]"),
    ("match_priors", (r(20, 4), gt(3, 4, 4), labels(3, 4), 0.5, [0.1]), r"two positive variances, got \[0.1\]"),
    ("batched_nms", (z(3, 5), z(3), z(3, dtype=i64), 0.5), r"boxes of shape \[N, 4\]"),
    ("batched_nms", (z(3, 4), z(3, 1), z(3, dtype=i64), 0.5), r"scores of shape \[N\]"),
    ("batched_nms", (z(3, 4), z(2), z(3, dtype=i64), 0.5), "agree on N"),
    ("batched_nms", (z(3, 4), z(3, dtype=f64), z(3, dtype=i64), 0.5), "same dtype"),
    ("batched_nms", (z(3, 4), z(3), z(3), 0.5), "idxs to be an integer tensor, got torch.float32"),
    ("batched_nms", (z(3, 4), z(3), z(3, dtype=torch.bool), 0.5), "idxs to be an integer tensor, got torch.bool"),
    ("batched_nms", (z(3, 4, dtype=torch.bfloat16), z(3, dtype=torch.bfloat16), z(3, dtype=i64), 0.5),
     "float16, float32 or float64, got torch.bfloat16"),
    ("batched_nms", (z(3, 4), z(3), z(3, dtype=i64), nan), "a number as iou_threshold, got NaN"),
    ("detect", (z(2, 10, 5), z(2, 10, 3), r(10, 4), *DET), r"loc of shape \[B, P, 4\]"),
    ("detect", (z(2, 10, 4), z(2, 10), r(10, 4), *DET), r"logits of shape \[B, P, C\]"),
    ("detect", (z(2, 10, 4), z(2, 10, 3), r(10, 3), *DET), r"priors of shape \[P, 4\]"),
    ("detect", (z(2, 10, 4), z(2, 10, 3, dtype=i64), r(10, 4), *DET), "logits to be a floating-point"),
    ("detect", (z(2, 10, 4), z(2, 9, 3), r(10, 4), *DET), "agree on B and P"),
    ("detect", (z(2, 10, 4), z(2, 10, 1), r(10, 4), *DET), "C >= 2"),
    ("detect", (z(2, 10, 4), z(2, 10, 3), r(10, 4), [0.1, 0.0], *DET[1:]), r"variances, got \[0.1, 0\]"),
    ("detect", (z(2, 10, 4), z(2, 10, 3), r(10, 4), DET[0], 0.01, 1.25, 400, 200, True),
     r"nms_threshold in \[0, 1\], got 1.25"),
    ("detect", (z(2, 10, 4), z(2, 10, 3), r(10, 4), DET[0], 0.01, 0.45, 400, 0, True), "keep_top_k >= 1"),
    ("conv_bn_act", (z(8, 9, 12), z(16, 8, 3, 3), None, None, *CONV), r"input of shape \[N, C_in, H, W\]"),
    ("conv_bn_act", (z(2, 8, 9, 12), z(16, 8, 3), None, None, *CONV), r"weight of shape"),
    ("conv_bn_act", (z(2, 8, 9, 12, dtype=i64), z(16, 8, 3, 3, dtype=i64), None, None, *CONV), "floating-point"),
    ("conv_bn_act", (z(2, 8, 9, 12), z(16, 8, 3, 3, dtype=f64), None, None, *CONV), "input and weight"),
    ("conv_bn_act", (z(2, 8, 9, 12), z(16, 8, 3, 3), z(3), None, *CONV), r"bias of shape \[16\], got shape \[3\]"),
    ("conv_bn_act", (z(2, 8, 9, 12), z(16, 8, 3, 3), z(16, 1), None, *CONV), r"bias of shape \[16\], got shape \[16, 1\]"),
    ("conv_bn_act", (z(2, 8, 9, 12), z(16, 8, 3, 3), z(16, dtype=f64), None, *CONV), "input and bias"),
    ("conv_bn_act", (z(2, 8, 9, 12), z(16, 8, 3, 3), None, z(2, 16, 9, 11), *CONV), "residual of the output's shape"),
    ("conv_bn_act", (z(2, 8, 9, 12), z(16, 8, 3, 3), None, None, [1, 1, 1], [1, 1], [1, 1], 1, False),
     r"stride to have 2 values \(h, w\), got \[1, 1, 1\]"),
    ("conv_bn_act", (z(2, 8, 9, 12), z(16, 8, 3, 3), None, None, [0, 1], [1], [1, 1], 1, False),
     r"every stride value >= 1, got \[0, 1\]"),
    ("conv_bn_act", (z(2, 8, 9, 12), z(16, 8, 3, 3), None, None, [1, 1], [1, -1], [1, 1], 1, False),
     "every padding value >= 0"),
    ("conv_bn_act", (z(2, 8, 9, 12), z(16, 8, 3, 3), None, None, [1, 1], [1, 1], [1], 1, False), "dilation to have"),
    ("conv_bn_act", (z(2, 8, 9, 12), z(16, 8, 3, 3), None, None, [1, 1], [1, 1], [1, 1], 0, False), "groups >= 1"),
    ("conv_bn_act", (z(2, 8, 9, 12), z(16, 4, 3, 3), None, None, *CONV), "C_in = 8 and groups = 1"),
    ("conv_bn_act", (z(2, 8, 1, 1), z(16, 8, 3, 3), None, None, [1, 1], [0, 0], [1, 1], 1, False),
     "larger than the padded input"),
    ("winograd_conv3x3", (z(4, 8, 8), PACKED, None, None, False), r"input of shape \[N, C_in, H, W\]"),
    ("winograd_conv3x3", (z(1, 4, 8, 8), z(6, 4, 3, 3), None, None, False), r"packed_weight of shape"),
    ("winograd_conv3x3", (z(1, 4, 8, 8, dtype=f64), PACKED.double(), None, None, False), "dtype float32, got torch.float64"),
    ("winograd_conv3x3", (z(1, 4, 8, 8), PACKED.double(), None, None, False), "input and packed_weight"),
    ("winograd_conv3x3", (z(1, 3, 8, 8), PACKED, None, None, False), "C_in = 3"),
    ("winograd_conv3x3", (z(1, 4, 8, 8), PACKED, z(5), None, False), r"bias of shape \[6\]"),
    ("winograd_conv3x3", (z(1, 4, 8, 8), PACKED, None, z(1, 6, 8, 7), False), "residual of the output's shape"),
    ("winograd_f43_pack", (z(6, 4, 3),), r"weight of shape \[C_out, C_in, 3, 3\]"),
    ("winograd_f43_pack", (z(6, 4, 5, 5),), "3x3 weight"),
    ("winograd_f43_pack", (z(6, 4, 3, 3, dtype=torch.float16),), "float32 or float64, got torch.float16"),
    ("winograd_conv3x3", (z(1, 4, 8, 8), z(63, 4, 6), None, None, False), r"\[36 or 64, C_in, C_out\] with C_in = 4"),
    ("winograd_f63_pack", (z(6, 4, 3),), r"weight of shape \[C_out, C_in, 3, 3\]"),
    ("winograd_f63_pack", (z(6, 4, 5, 5),), "winograd_f63_pack: expected a 3x3 weight"),
    ("winograd_f63_pack", (z(6, 4, 3, 3, dtype=torch.float16),), "float32 or float64, got torch.float16"),
]
OPS = ["box_iou", "match_priors", "batched_nms", "detect", "conv_bn_act", "winograd_conv3x3", "winograd_f43_pack",
       "winograd_f63_pack"]


def _message(fn, *args):
    with pytest.raises(RuntimeError) as info:
        fn(*args)
    return str(info.value)


def _compiled_message(name, args):
    return _message(getattr(ops, name), *args)


def _reference_message(name, args):
    return _message(getattr(reference, name), *args)


def _fake_message(name, args):
    with FakeTensorMode() as mode:
        fake_args = tree_map(lambda a: mode.from_tensor(a) if isinstance(a, torch.Tensor) else a, args)
        return _message(getattr(ops, name), *fake_args)


def test_every_op_has_bad_input_cases():
    assert {name for name, _, _ in CASES} == set(OPS)


@pytest.mark.parametrize("name,args,pattern", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_compiled_reference_and_fake_raise_the_same_message(name, args, pattern):
    compiled = _compiled_message(name, args)
    assert re.search(pattern, compiled), compiled
    assert compiled.startswith(f"{name}: ")
    assert _reference_message(name, args) == compiled
    assert _fake_message(name, args) == compiled


# match_priors' data checks read values, so the fake kernel (which has none) cannot make them.
def _bad_gt_box():
    boxes = gt(2, 3, 4)
    boxes[1, 2] = torch.tensor([0.25, 0.5, 0.125, 0.75])  # x2 < x1
    return boxes


DATA_CASES = [
    (torch.tensor([[0.5, 0.5, 0.2, 0.0]]), gt(2, 3, 4), labels(2, 3), "priors must be finite"),
    (r(5, 4), gt(2, 3, 4), labels(2, 3) * 2**31, r"gt_labels must be < 2\^31, got 2147483648"),
    (r(5, 4), _bad_gt_box(), labels(2, 3), r"invalid ground-truth box \[0.25, 0.5, 0.125, 0.75\] at image 1, box 2"),
]


@pytest.mark.parametrize("priors,gt_boxes,gt_labels,pattern", DATA_CASES)
def test_match_priors_data_checks_agree(priors, gt_boxes, gt_labels, pattern):
    args = (priors, gt_boxes, gt_labels, 0.5, [0.1, 0.2])
    compiled = _compiled_message("match_priors", args)
    assert re.search(pattern, compiled), compiled
    assert _reference_message("match_priors", args) == compiled
    with FakeTensorMode() as mode:  # metadata only: the fake kernel accepts it
        ops.match_priors(*tree_map(lambda a: mode.from_tensor(a) if isinstance(a, torch.Tensor) else a, args))


def test_torch_compile_refuses_a_bad_input_with_the_same_message():
    fn = torch.compile(lambda a, b: scratchdet.ops.box_iou(a, b), fullgraph=True, backend="eager")
    with pytest.raises(Exception, match=r"box_iou: expected boxes1 of shape \[N, 4\], got shape \[3, 5\]"):
        fn(z(3, 5), z(2, 4))


def test_public_functions_call_the_compiled_ops():
    for name in OPS:
        assert getattr(_registrations, name) is getattr(ops, name), name
        assert callable(getattr(scratchdet.ops, name))


WIDE = (2**31 - 1) // 64 + 1  # one channel more than winograd_conv3x3's BLAS calls take
LIMITS = [  # fake tensors cost no memory, so the fake kernels can be shown sizes past the 32-bit limits
    ("match_priors", lambda: (torch.empty(2**31, 4), torch.empty(3, 4, 4), torch.ones(3, 4, dtype=i64), 0.5, [0.1, 0.2]),
     r"match_priors: expected fewer than 2\^31 priors and GTs per image, got P = 2147483648 and G = 4"),
    ("winograd_conv3x3", lambda: (torch.empty(1, WIDE, 1, 1), torch.empty(36, WIDE, 2), None, None, False),
     r"winograd_conv3x3: expected fewer than 2\^31 / 64 channels \(BLAS takes 32-bit sizes\), "
     r"got C_in = 33554432 and C_out = 2"),
]


@pytest.mark.parametrize("name,make_args,pattern", LIMITS, ids=[c[0] for c in LIMITS])
def test_32_bit_limits_are_checked_at_trace_time(name, make_args, pattern):
    with FakeTensorMode():
        args = make_args()
        with pytest.raises(RuntimeError, match=pattern):
            getattr(ops, name)(*args)


def test_reference_package_exports_every_public_name_of_its_modules():
    """``scratchdet.ops.reference.<name>`` for every public name of every reference module, each
    listed once in ``__all__``; every op has a reference and every fake kernel its check."""
    exported = []
    for info in pkgutil.iter_modules(reference.__path__):
        module = importlib.import_module(f"{reference.__name__}.{info.name}")
        public = [n for n, v in vars(module).items() if not n.startswith("_") and getattr(v, "__module__", None)
                  == module.__name__]
        assert set(public) <= set(module.__all__), (info.name, set(public) - set(module.__all__))
        for name in module.__all__:
            assert getattr(reference, name) is getattr(module, name), name
        exported += module.__all__
    assert sorted(reference.__all__) == sorted(exported) and len(set(exported)) == len(exported)
    for name in OPS:
        assert callable(getattr(reference, name)) and callable(getattr(reference, f"check_{name}_args"))
