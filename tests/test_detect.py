"""detect against its reference (the spec, reference.detect: stable NMS of its own on every device).

Kernel and reference on the same device are compared exactly: the same (label, score, box) rows in
the same order, bit for bit. The kernels take the softmax and exp(loc * v1) from the same ATen
ops as the reference on that device, do the rest of the decode with correctly rounded + - * /
(CUDA: --fmad=false), and the NMS with torchvision's CPU arithmetic and a stable order, as
reference.nms does on the host, so no tolerance is needed.

CPU against CUDA cannot agree bit for bit: ATen's softmax and exp are different code on each
device (another summation order, another exp), a few ulps apart. test_cuda_equals_cpu_within_tolerance
compares them where scores are far from ties and IoUs far from the threshold: counts and labels
exactly, scores and boxes within a stated tolerance.
"""
import pytest
import torch

import scratchdet
from scratchdet.ops import reference
from helpers import DEVICES, non_contiguous


def make_inputs(B, P, C, g, kind="flat", device="cpu", dtype=torch.float32):
    xy = torch.rand(P, 2, generator=g)
    priors = torch.cat([xy, torch.rand(P, 2, generator=g) * 0.3 + 0.02], 1)
    loc = torch.randn(B, P, 4, generator=g) * 0.5
    if kind == "flat":            # untrained model: every prior passes 0.01
        logits = torch.randn(B, P, C, generator=g) * 0.1
    elif kind == "peaky":         # trained model: few confident priors
        logits = torch.randn(B, P, C, generator=g) * 2.0
        logits[..., 0] += 5.0
    elif kind == "ties":          # repeated logits rows and repeated boxes
        logits = torch.randn(B, 4, C, generator=g).repeat(1, (P + 3) // 4, 1)[:, :P] * 0.5
        loc[:, 1::3] = loc[:, 0:1]
        priors[1::3] = priors[0]
    elif kind == "below":         # everything below the threshold
        logits = torch.full((B, P, C), -30.0)
        logits[..., 0] = 30.0
    else:
        raise ValueError(kind)
    return (loc.to(device, dtype), logits.to(device, dtype), priors.to(device, dtype))


def assert_same_detections(ours, ref):
    names = ("boxes", "scores", "labels", "num_detections")
    for name, a, b in zip(names, ours, ref):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), f"{name} differ"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["flat", "peaky", "ties", "below"])
@pytest.mark.parametrize("C", [2, 21, 81])
def test_matches_reference(device, kind, C):
    g = torch.Generator().manual_seed(C)
    P = 300 if C == 81 else 600
    for top_k, keep_top_k in ((400, 200), (20, 50), (5, 400)):
        args = make_inputs(2, P, C, g, kind, device)
        ours = scratchdet.ops.detect(*args, top_k=top_k, keep_top_k=keep_top_k)
        assert_same_detections(ours, reference.detect(*args, top_k=top_k, keep_top_k=keep_top_k))
        if kind == "below":
            assert (ours[3] == 0).all() and (ours[2] == -1).all() and (ours[1] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_many_random_settings(device):
    g = torch.Generator().manual_seed(11)
    for case in range(25):
        B, P, C = 1 + case % 3, int(torch.randint(1, 400, (1,), generator=g)), int(torch.randint(2, 12, (1,), generator=g))
        args = make_inputs(B, P, C, g, ("flat", "peaky", "ties")[case % 3], device)
        kw = dict(score_threshold=float(torch.rand(1, generator=g)) * 0.3,
                  nms_threshold=float(torch.rand(1, generator=g)),
                  top_k=int(torch.randint(1, 300, (1,), generator=g)),
                  keep_top_k=int(torch.randint(1, 300, (1,), generator=g)),
                  clip=bool(case % 2), variances=(0.1 + 0.05 * (case % 3), 0.2))
        assert_same_detections(scratchdet.ops.detect(*args, **kw), reference.detect(*args, **kw))


@pytest.mark.parametrize("device", DEVICES)
def test_batch_of_one_and_of_64(device):
    g = torch.Generator().manual_seed(12)
    for B, P in ((1, 2000), (64, 120)):
        args = make_inputs(B, P, 21, g, "flat", device)
        assert_same_detections(scratchdet.ops.detect(*args), reference.detect(*args))


def test_ssd300_size_flat_logits():
    g = torch.Generator().manual_seed(13)
    args = make_inputs(1, 8732, 21, g, "flat")
    ours = scratchdet.ops.detect(*args)
    assert_same_detections(ours, reference.detect(*args))
    assert int(ours[3]) == 200


@pytest.mark.sanitize
@pytest.mark.parametrize("device", DEVICES)
def test_clipping(device):
    g = torch.Generator().manual_seed(14)
    loc, logits, priors = make_inputs(2, 300, 5, g, "peaky", device)
    loc = loc * 6                      # boxes well outside the image
    for clip in (True, False):
        ours = scratchdet.ops.detect(loc, logits, priors, clip=clip)
        assert_same_detections(ours, reference.detect(loc, logits, priors, clip=clip))
        if clip:
            assert ((ours[0] >= 0) & (ours[0] <= 1)).all()
        else:
            assert ((ours[0] < 0) | (ours[0] > 1)).any()


@pytest.mark.sanitize
@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    g = torch.Generator().manual_seed(15)
    loc, logits, priors = make_inputs(3, 200, 7, g, "peaky", device)
    ours = scratchdet.ops.detect(non_contiguous(loc), logits.transpose(0, 1).contiguous().transpose(0, 1),
                                 non_contiguous(priors))
    assert_same_detections(ours, reference.detect(loc, logits, priors))


@pytest.mark.sanitize
@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_logits_and_boxes_never_give_nan(device):
    g = torch.Generator().manual_seed(16)
    loc, logits, priors = make_inputs(2, 300, 6, g, "peaky", device)
    logits[0, :10, 2] = float("nan")
    logits[0, 10:20, 0] = float("inf")
    logits[1, :10, 3] = float("-inf")
    loc[1, 20:30, 2] = 1e4              # exp overflows: infinite box
    loc[1, 30:40, 0] = float("nan")
    for clip in (True, False):
        for thr in (0.01, -1.0):        # even with a threshold every score passes
            ours = scratchdet.ops.detect(loc, logits, priors, score_threshold=thr, clip=clip)
            assert_same_detections(ours, reference.detect(loc, logits, priors, score_threshold=thr, clip=clip))
            assert torch.isfinite(ours[0]).all() and torch.isfinite(ours[1]).all()


@pytest.mark.sanitize
@pytest.mark.parametrize("device", DEVICES)
def test_float64_and_half_inputs(device):
    g = torch.Generator().manual_seed(17)
    for dtype in (torch.float64, torch.float16):
        args = make_inputs(2, 200, 5, g, "peaky", device, dtype)
        ours = scratchdet.ops.detect(*args)
        assert ours[0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert_same_detections(ours, reference.detect(*args))


@pytest.mark.parametrize(
    "shapes,match",
    [
        (((2, 10, 5), (2, 10, 3), (10, 4)), r"loc of shape \[B, P, 4\]"),
        (((2, 10, 4), (2, 10), (10, 4)), r"logits of shape \[B, P, C\]"),
        (((2, 10, 4), (2, 10, 3), (10, 3)), r"priors of shape \[P, 4\]"),
        (((2, 10, 4), (2, 9, 3), (10, 4)), "agree on B and P"),
        (((2, 10, 4), (2, 10, 1), (10, 4)), "C >= 2"),
    ],
)
def test_bad_shapes_give_clear_error(shapes, match):
    args = [torch.zeros(s) for s in shapes]
    with pytest.raises(RuntimeError, match=match):
        torch.ops.scratchdet.detect(*args)
    with pytest.raises(RuntimeError, match=match):
        reference.detect(*args)


def test_bad_dtype_and_arguments_give_clear_error():
    loc, logits, priors = torch.zeros(1, 4, 4), torch.zeros(1, 4, 3), torch.rand(4, 4)
    with pytest.raises(RuntimeError, match="floating-point"):
        torch.ops.scratchdet.detect(loc, logits.long(), priors)
    with pytest.raises(RuntimeError, match="variances"):
        torch.ops.scratchdet.detect(loc, logits, priors, [0.1])
    with pytest.raises(RuntimeError, match="nms_threshold"):
        torch.ops.scratchdet.detect(loc, logits, priors, nms_threshold=1.5)
    with pytest.raises(RuntimeError, match="top_k"):
        torch.ops.scratchdet.detect(loc, logits, priors, keep_top_k=0)


@pytest.mark.cuda
def test_wrong_device_gives_clear_error():
    with pytest.raises(RuntimeError, match="same device"):
        scratchdet.ops.detect(torch.zeros(1, 4, 4), torch.zeros(1, 4, 3, device="cuda"), torch.rand(4, 4))


def test_autocast_computes_in_float32():
    g = torch.Generator().manual_seed(18)
    loc, logits, priors = make_inputs(1, 100, 4, g, "peaky")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch.ops.scratchdet.detect(loc.bfloat16(), logits.bfloat16(), priors.bfloat16())
    assert out[0].dtype == torch.float32
    assert_same_detections(out, reference.detect(loc.bfloat16().float(), logits.bfloat16().float(),
                                                 priors.bfloat16().float()))


def test_opcheck():
    g = torch.Generator().manual_seed(19)
    for B, P, C in ((2, 50, 4), (1, 1, 2), (0, 10, 3)):
        loc, logits, priors = make_inputs(B, P, C, g, "peaky")
        torch.library.opcheck(torch.ops.scratchdet.detect.default, (loc, logits, priors),
                              {"keep_top_k": 20, "top_k": 10})


def test_torch_compile_fullgraph():
    g = torch.Generator().manual_seed(20)
    args = make_inputs(2, 100, 5, g, "peaky")
    fn = torch.compile(lambda l, c, p: scratchdet.ops.detect(l, c, p, keep_top_k=30), fullgraph=True, backend="eager")
    assert_same_detections(fn(*args), reference.detect(*args, keep_top_k=30))


@pytest.mark.cuda
def test_cuda_many_classes_and_candidates():
    """1000 classes, top_k 400: 400k candidates per image."""
    g = torch.Generator().manual_seed(21)
    args = make_inputs(1, 500, 1000, g, "flat", "cuda")
    kw = dict(score_threshold=0.0, top_k=400, keep_top_k=300)
    ours = scratchdet.ops.detect(*args, **kw)
    assert_same_detections(ours, reference.detect(*args, **kw))


def separated_inputs(B, P, C, g, device):
    """Inputs whose detections are far from every tie: each prior has one dominant class with a
    logit of its own (distinct scores, >= 1e-3 apart after the softmax), every other class scores
    below the threshold, and the boxes are small and apart enough that no IoU is near 0.45."""
    logits = torch.full((B, P, C), -8.0)
    logits[..., 0] = 0.0
    cls = torch.randint(1, C, (B, P), generator=g)
    # distinct dominant logits: softmax scores spread evenly over (0.1, 0.9), >= 1e-3 apart
    target = 0.1 + 0.8 * torch.stack([torch.randperm(P, generator=g) for _ in range(B)]).double() / P
    levels = torch.log(target / (1 - target)).float()
    logits.scatter_(2, cls[..., None], levels[..., None])
    xy = torch.rand(P, 2, generator=g) * 0.8 + 0.1
    priors = torch.cat([xy, torch.rand(P, 2, generator=g) * 0.05 + 0.02], 1)
    loc = torch.randn(B, P, 4, generator=g) * 0.3
    return loc.to(device), logits.to(device), priors.to(device)


def assert_far_from_threshold(loc, logits, priors, thr, margin=1e-3):
    """The test's premise: every prior is a candidate of its dominant class only, and no two
    candidates of a class have an IoU within margin of thr (so ulps cannot flip an NMS decision)."""
    boxes = reference.decode(loc.double(), priors.double()).clamp(0, 1)
    scores = torch.softmax(logits.double(), -1)
    cls = scores[..., 1:].argmax(-1) + 1
    assert (scores[..., 1:].sum(-1) - scores.gather(-1, cls[..., None])[..., 0] < 0.01).all()
    for b in range(boxes.shape[0]):
        for c in cls[b].unique():
            m = boxes[b][cls[b] == c]
            iou = reference.box_iou(m, m).fill_diagonal_(0)
            assert not ((iou - thr).abs() < margin).any()


@pytest.mark.cuda
def test_cuda_equals_cpu_within_tolerance():
    """CPU vs CUDA detect: softmax and exp differ by a few ulps between devices (different ATen
    code), so the rows must match in count, order and label exactly (scores are >= 1e-3 apart and
    IoUs >= 1e-3 from the threshold, far above ulps), scores within 1e-6 and boxes within 1e-5."""
    g = torch.Generator().manual_seed(31)
    args = separated_inputs(3, 600, 21, g, "cuda")
    kw = dict(score_threshold=0.01, nms_threshold=0.45, top_k=400, keep_top_k=200)
    assert_far_from_threshold(*(a.cpu() for a in args), kw["nms_threshold"])
    gpu = [t.cpu() for t in scratchdet.ops.detect(*args, **kw)]
    cpu = scratchdet.ops.detect(*(a.cpu() for a in args), **kw)
    assert torch.equal(gpu[3], cpu[3]) and torch.equal(gpu[2], cpu[2])
    torch.testing.assert_close(gpu[1], cpu[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(gpu[0], cpu[0], rtol=0, atol=1e-5)


def test_separated_inputs_are_separated():
    """The premise of the CPU-vs-CUDA test, checked on the CPU: distinct scores and no IoU near 0.45."""
    g = torch.Generator().manual_seed(31)
    args = separated_inputs(3, 600, 21, g, "cpu")
    boxes, scores, labels, num = scratchdet.ops.detect(*args, top_k=400, keep_top_k=200)
    assert (num > 50).all()
    assert_far_from_threshold(*args, 0.45)
    for b in range(3):
        s = scores[b, :int(num[b])]
        assert ((s[:-1] - s[1:]) >= 1e-4).all()


@pytest.mark.sanitize
@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch_and_no_priors(device):
    """The B == 0 and P == 0 early returns (on CUDA: before any kernel launch)."""
    g = torch.Generator().manual_seed(25)
    for B, P in ((0, 10), (2, 0), (0, 0)):
        args = make_inputs(B, P, 4, g, "peaky", device)
        ours = scratchdet.ops.detect(*args, keep_top_k=7)
        assert_same_detections(ours, reference.detect(*args, keep_top_k=7))
        assert ours[0].shape == (B, 7, 4) and (ours[2] == -1).all() and (ours[3] == 0).all()


@pytest.mark.cuda
def test_cuda_decode_grid_stride_loop():
    """decode_kernel runs at most 65535 blocks of 256 threads: B * P above 16.8M priors takes its
    grid-stride loop. One confident prior per image shows every image's decode, the last ones
    included (reference: the same ATen softmax and exp on the device)."""
    g = torch.Generator().manual_seed(26)
    B, P = 2048, 8732                                  # 17.9M priors
    loc = (torch.randn(B, P, 4, generator=g) * 0.5).cuda()
    priors = torch.cat([torch.rand(P, 2, generator=g), torch.rand(P, 2, generator=g) * 0.3 + 0.02], 1).cuda()
    logits = torch.zeros(B, P, 2, device="cuda")
    logits[..., 0] = 10.0
    hit = torch.randint(0, P, (B,), generator=g).cuda()
    logits[torch.arange(B, device="cuda"), hit, 1] = 20.0
    ours = scratchdet.ops.detect(loc, logits, priors, keep_top_k=4)
    assert (ours[3] == 1).all()
    assert_same_detections(ours, reference.detect(loc, logits, priors, keep_top_k=4))


@pytest.mark.cuda
def test_cuda_no_host_sync_and_cuda_graph():
    g = torch.Generator().manual_seed(22)
    args = make_inputs(4, 8732, 21, g, "flat", "cuda")
    expected = reference.detect(*args)
    scratchdet.ops.detect(*args)                     # warm up (lazy init, allocator)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = scratchdet.ops.detect(*args)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_same_detections(out, expected)

    static = [a.clone() for a in args]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        scratchdet.ops.detect(*static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = scratchdet.ops.detect(*static)
    for a, s in zip(make_inputs(4, 8732, 21, torch.Generator().manual_seed(23), "peaky", "cuda"), static):
        s.copy_(a)
    graph.replay()
    assert_same_detections(captured, reference.detect(*static))
    for a, s in zip(args, static):
        s.copy_(a)
    graph.replay()
    assert_same_detections(captured, expected)
