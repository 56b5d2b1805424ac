import math

import pytest
import torch

import scratchdet
from scratchdet.ops import reference
from helpers import DEVICES, non_contiguous, random_boxes, given, settings, st
from ssd300_priors import ssd300_priors

op = torch.ops.scratchdet.match_priors


# ------------------------------------------------------------------------------------------ helpers
def random_priors(n, g, dtype=torch.float32, device="cpu"):
    """n (cx, cy, w, h) priors with centres in [0, 1] and sizes in [0.02, 0.6]."""
    c = torch.rand(n, 2, generator=g, dtype=torch.float64)
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.58 + 0.02
    return torch.cat([c, wh], 1).to(dtype=dtype, device=device)


def random_batch(B, G, g, dtype=torch.float32, device="cpu", pad_fraction=0.3):
    """Padded GTs: valid labels 1..20, padding 0 or -1 anywhere (not only at the end)."""
    boxes = random_boxes(B * G, g, dtype).reshape(B, G, 4)
    labels = torch.randint(1, 21, (B, G), generator=g)
    pad = torch.rand(B, G, generator=g) < pad_fraction
    labels[pad] = torch.randint(-1, 1, (int(pad.sum()),), generator=g)
    return boxes.to(device), labels.to(device)


def grid_batch(B, G, P, g, cells=8):
    """Boxes on a coarse grid, so exact IoU ties, duplicate GTs and GTs equal to priors are common."""
    def grid_boxes(n):
        lo = torch.randint(0, cells, (n, 2), generator=g)
        size = torch.randint(1, cells + 1, (n, 2), generator=g)
        hi = torch.minimum(lo + size, torch.tensor(cells))
        return torch.cat([lo, hi], 1).float() / cells
    prior_boxes = grid_boxes(P)
    priors = torch.cat([(prior_boxes[:, :2] + prior_boxes[:, 2:]) / 2, prior_boxes[:, 2:] - prior_boxes[:, :2]], 1)
    boxes = grid_boxes(B * G).reshape(B, G, 4)
    # Some GTs copied from priors, exactly.
    copy = torch.rand(B, G, generator=g) < 0.2
    if P and copy.any():
        pick = torch.randint(0, P, (int(copy.sum()),), generator=g)
        boxes[copy] = reference.point_form(priors[pick])
    labels = torch.randint(1, 21, (B, G), generator=g)
    labels[torch.rand(B, G, generator=g) < 0.2] = 0
    return priors, boxes, labels


def assert_matches_reference(priors, gt_boxes, gt_labels, iou_threshold=0.5, variances=(0.1, 0.2), exact_iou=True):
    loc, conf, iou = scratchdet.ops.match_priors(priors, gt_boxes, gt_labels, iou_threshold, variances)
    rloc, rconf, riou = reference.match_priors(priors, gt_boxes, gt_labels, iou_threshold, variances)
    assert loc.dtype == rloc.dtype and iou.dtype == riou.dtype and conf.dtype == torch.int64
    assert loc.shape == rloc.shape and conf.shape == rconf.shape and iou.shape == riou.shape
    assert torch.equal(conf, rconf), f"conf differs at {(conf != rconf).nonzero()[:5].tolist()}"
    if exact_iou:
        assert torch.equal(iou, riou)
    torch.testing.assert_close(iou, riou, rtol=0, atol=1e-5)
    torch.testing.assert_close(loc, rloc, rtol=0, atol=1e-5)
    return loc, conf, iou


# ------------------------------------------------------------------------------------------ against the reference
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,cases", [(torch.float32, 350), (torch.float64, 150)])
def test_matches_reference_on_random_batches(device, dtype, cases):
    g = torch.Generator().manual_seed(0 if dtype == torch.float32 else 1)
    for case in range(cases):
        B = int(torch.randint(1, 5, (1,), generator=g))
        G = int(torch.randint(0, 101, (1,), generator=g)) if case % 10 == 0 else int(torch.randint(0, 12, (1,), generator=g))
        P = int(torch.randint(1, 300, (1,), generator=g))
        priors = random_priors(P, g, dtype, device)
        boxes, labels = random_batch(B, G, g, dtype, device)
        threshold = float(torch.rand(1, generator=g)) if case % 3 == 0 else 0.5
        assert_matches_reference(priors, boxes, labels, threshold, exact_iou=device == "cpu")


@settings(max_examples=150, deadline=None)
@given(B=st.integers(1, 3), G=st.integers(0, 12), P=st.integers(1, 40), seed=st.integers(0, 2**31 - 1),
       threshold=st.sampled_from([0.0, 0.25, 0.5, 1.0 / 3.0, 1.0]))
def test_ties_on_a_grid_match_reference(B, G, P, seed, threshold):
    """Coarse-grid boxes: many exact IoU ties, duplicated GTs, GTs equal to priors, IoU at the threshold."""
    priors, boxes, labels = grid_batch(B, G, P, torch.Generator().manual_seed(seed))
    assert_matches_reference(priors, boxes, labels, threshold)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("G", [0, 1, 2, 6, 17, 50, 100])
def test_ssd300_priors_every_G(device, G):
    g = torch.Generator().manual_seed(G)
    priors = ssd300_priors(device=device)
    assert priors.shape == (8732, 4)
    boxes, labels = random_batch(3, G, g, device=device)
    labels[2] = 0  # one image with no GT at all
    loc, conf, iou = assert_matches_reference(priors, boxes, labels, exact_iou=device == "cpu")
    assert (conf[2] == 0).all() and (loc[2] == 0).all() and (iou[2] == 0).all()
    # Every valid GT owns at least one prior (the forced match) unless a later GT took it.
    assert ((conf[:2] > 0).sum(1) >= (labels[:2] > 0).any(1).long()).all()


@pytest.mark.parametrize("device", DEVICES)
def test_large_batch(device):
    g = torch.Generator().manual_seed(5)
    priors = ssd300_priors(device=device)
    boxes, labels = random_batch(32, 8, g, device=device)
    assert_matches_reference(priors, boxes, labels, exact_iou=device == "cpu")


# ------------------------------------------------------------------------------------------ edge cases
def _priors_from_xyxy(xyxy):
    xyxy = torch.as_tensor(xyxy, dtype=torch.float32)
    return torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)


PRIOR_BOXES = [[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5], [0.0, 0.5, 0.5, 1.0], [0.5, 0.5, 1.0, 1.0],
               [0.25, 0.25, 0.75, 0.75], [0.0, 0.0, 1.0, 1.0]]


@pytest.mark.parametrize("device", DEVICES)
def test_duplicated_gts_later_one_wins_the_shared_prior(device):
    priors = _priors_from_xyxy(PRIOR_BOXES).to(device)
    box = [0.05, 0.05, 0.45, 0.45]
    boxes = torch.tensor([[box, box, box]], device=device)
    labels = torch.tensor([[3, 7, 9]], device=device)
    loc, conf, iou = assert_matches_reference(priors, boxes, labels, exact_iou=device == "cpu")
    assert conf[0, 0] == 9  # all three force prior 0; the last GT wins it
    assert (conf[0, 1:] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_gt_identical_to_a_prior(device):
    priors = _priors_from_xyxy(PRIOR_BOXES).to(device)
    boxes = reference.point_form(priors[4:5])[None]  # exactly prior 4
    labels = torch.tensor([[5]], device=device)
    loc, conf, iou = assert_matches_reference(priors, boxes, labels, exact_iou=device == "cpu")
    assert conf[0, 4] == 5 and iou[0, 4] == 1.0
    torch.testing.assert_close(loc[0, 4], torch.zeros(4, device=device), rtol=0, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_two_gts_whose_best_prior_is_the_same(device):
    priors = _priors_from_xyxy(PRIOR_BOXES).to(device)
    # Both GTs overlap prior 0 best; GT 1 overlaps it less than GT 0 does, yet, being later, it wins.
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.3, 0.3]]], device=device)
    labels = torch.tensor([[2, 4]], device=device)
    loc, conf, iou = assert_matches_reference(priors, boxes, labels, exact_iou=device == "cpu")
    assert conf[0, 0] == 4
    assert float(iou[0, 0]) == pytest.approx(0.36)  # the IoU with the GT it was forced onto


@pytest.mark.parametrize("device", DEVICES)
def test_best_prior_tie_goes_to_the_lowest_prior_index(device):
    priors = _priors_from_xyxy(PRIOR_BOXES).to(device)
    # A box inside prior 4 matches it (no tie); a box far away matches prior 3.
    boxes = torch.tensor([[[0.4, 0.4, 0.6, 0.6]]], device=device)
    labels = torch.tensor([[1]], device=device)
    _, conf, _ = assert_matches_reference(priors, boxes, labels, exact_iou=device == "cpu")
    assert conf[0, 4] == 1 and (conf[0, :4] == 0).all()
    far = torch.tensor([[[0.9, 0.9, 0.95, 0.95]]], device=device)  # IoU 0 with priors 0..2, > 0 with 3 and 5
    _, conf, _ = assert_matches_reference(priors, far, labels, exact_iou=device == "cpu")
    assert conf[0, 3] == 1
    # IoU 0 with every prior: a six-way tie, so the lowest prior index, 0, is forced.
    outside = torch.tensor([[[2.0, 2.0, 3.0, 3.0]]], device=device)
    _, conf, iou = assert_matches_reference(priors, outside, labels, exact_iou=device == "cpu")
    assert conf[0, 0] == 1 and (conf[0, 1:] == 0).all() and iou[0, 0] == 0


@pytest.mark.sanitize
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_iou_exactly_at_threshold_is_foreground(device, dtype):
    priors = _priors_from_xyxy(PRIOR_BOXES).to(device, dtype)
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5]]], device=device, dtype=dtype)  # equals prior 0 (forced)
    labels = torch.tensor([[6]], device=device)
    at = float(reference.box_iou(boxes[0], reference.point_form(priors))[0, 4])  # IoU with prior 4, about 1/7
    assert 0 < at < 1
    _, conf, iou = assert_matches_reference(priors, boxes, labels, at, exact_iou=device == "cpu")
    assert conf[0, 4] == 6 and iou[0, 4] == at
    above = torch.nextafter(torch.tensor(at, dtype=dtype), torch.tensor(1.0, dtype=dtype)).item()
    _, conf, _ = assert_matches_reference(priors, boxes, labels, above, exact_iou=device == "cpu")
    assert conf[0, 4] == 0 and conf[0, 0] == 6


@pytest.mark.sanitize
@pytest.mark.parametrize("device", DEVICES)
def test_padding_anywhere_and_empty_images(device):
    g = torch.Generator().manual_seed(7)
    priors = random_priors(50, g, device=device)
    boxes, labels = random_batch(4, 6, g, device=device)
    labels[:, ::2] = torch.tensor([0, -1, -5], device=device)  # padding in the middle, any value <= 0
    labels[1] = 0
    boxes[1] = float("nan")  # padding boxes are never read
    loc, conf, iou = assert_matches_reference(priors, boxes, labels, exact_iou=device == "cpu")
    assert (conf[1] == 0).all() and (loc[1] == 0).all() and (iou[1] == 0).all()


@pytest.mark.sanitize
@pytest.mark.parametrize("device", DEVICES)
def test_empty_shapes(device):
    g = torch.Generator().manual_seed(8)
    priors = random_priors(10, g, device=device)
    for P, B, G in [(0, 2, 3), (10, 0, 3), (10, 2, 0), (0, 0, 0)]:
        boxes, labels = random_batch(B, G, g, device=device)
        loc, conf, iou = op(priors[:P], boxes, labels, 0.5, [0.1, 0.2])
        assert loc.shape == (B, P, 4) and conf.shape == (B, P) and iou.shape == (B, P)
        assert (conf == 0).all() and (loc == 0).all()


@pytest.mark.sanitize
@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    g = torch.Generator().manual_seed(9)
    priors = random_priors(120, g, device=device)
    boxes, labels = random_batch(3, 9, g, device=device)
    nc_priors = non_contiguous(priors)
    nc_boxes = boxes.transpose(0, 1).contiguous().transpose(0, 1)
    nc_labels = labels.t().contiguous().t()
    assert not (nc_priors.is_contiguous() or nc_boxes.is_contiguous() or nc_labels.is_contiguous())
    ours = scratchdet.ops.match_priors(nc_priors, nc_boxes, nc_labels)
    theirs = reference.match_priors(priors, boxes, labels)
    assert torch.equal(ours[1], theirs[1])
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(ours[2], theirs[2], rtol=0, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_half_bfloat16_and_mixed_dtypes(device):
    g = torch.Generator().manual_seed(10)
    priors = random_priors(80, g, device=device)
    boxes, labels = random_batch(2, 7, g, device=device)
    for pd, bd, out in [(torch.float16, torch.float16, torch.float32), (torch.bfloat16, torch.bfloat16, torch.float32),
                        (torch.float16, torch.bfloat16, torch.float32), (torch.float32, torch.float64, torch.float64),
                        (torch.float64, torch.float16, torch.float64)]:
        p, b = priors.to(pd), boxes.to(bd)
        b[..., 2:] = torch.maximum(b[..., 2:], b[..., :2] + 0.05)  # rounding must keep x2 > x1
        loc, _, iou = assert_matches_reference(p, b, labels, exact_iou=device == "cpu")
        assert loc.dtype == out and iou.dtype == out


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_computes_in_float32(device):
    g = torch.Generator().manual_seed(11)
    priors = random_priors(60, g, device=device)
    boxes, labels = random_batch(2, 5, g, device=device)
    with torch.autocast(device, dtype=torch.bfloat16 if device == "cpu" else torch.float16):
        loc, conf, iou = op(priors, boxes, labels, 0.5, [0.1, 0.2])
    assert loc.dtype == torch.float32 and iou.dtype == torch.float32
    rloc, rconf, riou = reference.match_priors(priors, boxes, labels)
    assert torch.equal(conf, rconf)
    torch.testing.assert_close(loc, rloc, rtol=0, atol=1e-5)


def test_labels_up_to_int32_max_and_variances():
    g = torch.Generator().manual_seed(12)
    priors = random_priors(40, g)
    boxes, labels = random_batch(2, 4, g)
    labels[0, 0] = 2**31 - 1
    assert_matches_reference(priors, boxes, labels, 0.4, (0.2, 0.5))


def test_same_bits_whatever_the_thread_count():
    g = torch.Generator().manual_seed(13)
    priors = ssd300_priors()
    boxes, labels = random_batch(5, 20, g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = op(priors, boxes, labels, 0.5, [0.1, 0.2])
        torch.set_num_threads(max(2, threads))
        many = op(priors, boxes, labels, 0.5, [0.1, 0.2])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------ bad input
def _good(device="cpu"):
    g = torch.Generator().manual_seed(14)
    priors = random_priors(20, g, device=device)
    boxes, labels = random_batch(3, 4, g, device=device, pad_fraction=0.0)
    return priors, boxes, labels


def _with(t, index, value):
    t = t.clone()
    t[index] = value
    return t


P0, B0, L0 = _good()
BAD_INPUTS = [
    ((torch.zeros(20, 5), B0, L0), r"match_priors: expected priors of shape \[P, 4\], got shape \[20, 5\]"),
    ((torch.zeros(80), B0, L0), r"expected priors of shape \[P, 4\], got shape \[80\]"),
    ((P0, B0[0], L0), r"expected gt_boxes of shape \[B, G, 4\], got shape \[4, 4\]"),
    ((P0, B0[..., :3], L0), r"expected gt_boxes of shape \[B, G, 4\], got shape \[3, 4, 3\]"),
    ((P0, B0, L0[0]), r"expected gt_labels of shape \[B, G\], got shape \[4\]"),
    ((P0.long(), B0, L0), r"expected priors to be a floating-point tensor"),
    ((P0, B0.int(), L0), r"expected gt_boxes to be a floating-point tensor"),
    ((P0, B0, L0.int()), r"expected gt_labels to be int64, got"),
    ((P0, B0, L0.float()), r"expected gt_labels to be int64, got"),
    ((P0, B0, L0[:2]), r"expected gt_labels of shape \[B, G\] = \[3, 4\] to match gt_boxes, got shape \[2, 4\]"),
    ((P0, B0, L0[:, :3]), r"to match gt_boxes, got shape \[3, 3\]"),
    ((_with(P0, (2, 0), float("nan")), B0, L0), r"priors must be finite with positive width and height"),
    ((_with(P0, (3, 2), 0.0), B0, L0), r"priors must be finite with positive width and height"),
    ((_with(P0, (3, 3), -0.1), B0, L0), r"priors must be finite with positive width and height"),
    ((_with(P0, (4, 1), float("inf")), B0, L0), r"priors must be finite with positive width and height"),
    ((P0, B0, _with(L0, (1, 1), 2**31)), r"gt_labels must be < 2\^31, got 2147483648"),
    ((P0, _with(B0, (1, 2, 2), float(B0[1, 2, 0]) - 0.01), L0),
     r"invalid ground-truth box \[.*\] at image 1, box 2: coordinates must be finite with x2 > x1 and y2 > y1"),
    ((P0, _with(B0, (2, 0, 3), float(B0[2, 0, 1])), L0), r"invalid ground-truth box \[.*\] at image 2, box 0"),
    ((P0, _with(B0, (0, 3, 1), float("nan")), L0), r"invalid ground-truth box \[.*nan.*\] at image 0, box 3"),
    ((P0, _with(B0, (1, 0, 2), float("inf")), L0), r"invalid ground-truth box \[.*inf.*\] at image 1, box 0"),
    # The first invalid box in (image, box) order is the one named.
    ((P0, _with(_with(B0, (2, 1, 0), float("nan")), (1, 3, 1), float("nan")), L0), r"at image 1, box 3"),
]


@pytest.mark.parametrize("args,match", BAD_INPUTS, ids=range(len(BAD_INPUTS)))
def test_bad_input_gives_clear_error(args, match):
    with pytest.raises(RuntimeError, match=match):
        op(*args, 0.5, [0.1, 0.2])
    with pytest.raises(RuntimeError, match=match):
        reference.match_priors(*args)


@pytest.mark.parametrize("threshold,variances,match", [
    (1.5, [0.1, 0.2], r"expected iou_threshold in \[0, 1\], got 1.5"),
    (-0.1, [0.1, 0.2], r"expected iou_threshold in \[0, 1\], got -0.1"),
    (float("nan"), [0.1, 0.2], r"expected iou_threshold in \[0, 1\], got nan"),
    (0.5, [0.1], r"expected two positive variances"),
    (0.5, [0.1, 0.0], r"expected two positive variances"),
    (0.5, [-0.1, 0.2], r"expected two positive variances"),
    (0.5, [0.1, 0.2, 0.3], r"expected two positive variances"),
])
def test_bad_scalars_give_clear_error(threshold, variances, match):
    with pytest.raises(RuntimeError, match=match):
        op(P0, B0, L0, threshold, variances)
    with pytest.raises(RuntimeError, match=match):
        reference.match_priors(P0, B0, L0, threshold, variances)


def test_invalid_box_in_padding_is_ignored():
    boxes = _with(_with(B0, (1, 2, 2), 0.0), (0, 0), float("nan"))
    labels = _with(_with(L0, (1, 2), 0), (0, 0), -1)
    assert_matches_reference(P0, boxes, labels)


@pytest.mark.cuda
@pytest.mark.parametrize("args,match", BAD_INPUTS, ids=range(len(BAD_INPUTS)))
def test_bad_input_gives_clear_error_cuda(args, match):
    args = tuple(a.cuda() for a in args)
    with pytest.raises(RuntimeError, match=match):
        op(*args, 0.5, [0.1, 0.2])
    torch.cuda.synchronize()  # and no CUDA error was left behind


@pytest.mark.cuda
def test_wrong_device_gives_clear_error():
    for args in [(P0.cuda(), B0, L0), (P0, B0.cuda(), L0.cuda()), (P0.cuda(), B0.cuda(), L0)]:
        with pytest.raises(RuntimeError, match="on the same device"):
            op(*args, 0.5, [0.1, 0.2])
        with pytest.raises(RuntimeError, match="on the same device"):
            reference.match_priors(*args)


# ------------------------------------------------------------------------------------------ CUDA specifics
@pytest.mark.cuda
def test_cuda_same_bits_on_every_run():
    g = torch.Generator().manual_seed(15)
    priors = ssd300_priors(device="cuda")
    boxes, labels = random_batch(16, 40, g, device="cuda")
    first = op(priors, boxes, labels, 0.5, [0.1, 0.2])
    for _ in range(5):
        again = op(priors, boxes, labels, 0.5, [0.1, 0.2])
        for a, b in zip(first, again):
            assert torch.equal(a, b)
    cpu = op(priors.cpu(), boxes.cpu(), labels.cpu(), 0.5, [0.1, 0.2])
    assert torch.equal(first[1].cpu(), cpu[1])
    assert torch.equal(first[2].cpu(), cpu[2])
    torch.testing.assert_close(first[0].cpu(), cpu[0], rtol=0, atol=1e-5)


@pytest.mark.cuda
def test_cuda_skip_input_checks_never_crashes(monkeypatch):
    monkeypatch.setenv("SCRATCHDET_SKIP_INPUT_CHECKS", "1")
    bad = _with(B0, (1, 2), float("nan")).cuda()
    loc, conf, iou = op(P0.cuda(), bad, L0.cuda(), 0.5, [0.1, 0.2])
    torch.cuda.synchronize()
    assert conf.shape == (3, 20)
    assert torch.equal(conf[0].cpu(), reference.match_priors(P0, B0[:1], L0[:1])[1][0])  # other images unharmed


@pytest.mark.cuda
def test_cuda_graph_capture():
    g = torch.Generator().manual_seed(16)
    priors = ssd300_priors(device="cuda")
    boxes, labels = random_batch(8, 10, g, device="cuda")
    op(priors, boxes, labels, 0.5, [0.1, 0.2])  # warm up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = op(priors, boxes, labels, 0.5, [0.1, 0.2])
    new_boxes, new_labels = random_batch(8, 10, g, device="cuda")
    boxes.copy_(new_boxes)
    labels.copy_(new_labels)
    graph.replay()
    expected = op(priors, new_boxes, new_labels, 0.5, [0.1, 0.2])
    for a, b in zip(out, expected):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------ registration
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    g = torch.Generator().manual_seed(17)
    for P, B, G in [(30, 2, 5), (7, 1, 0), (12, 3, 1)]:
        priors = random_priors(P, g, device=device)
        boxes, labels = random_batch(B, G, g, device=device)
        torch.library.opcheck(op.default, (priors, boxes, labels, 0.5, [0.1, 0.2]))
        torch.library.opcheck(op.default, (priors.double(), boxes.half(), labels, 0.3, [0.2, 0.1]))


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_fullgraph(backend):
    g = torch.Generator().manual_seed(18)
    priors = ssd300_priors()
    boxes, labels = random_batch(2, 6, g)

    def positives(priors, boxes, labels):
        loc, conf, _ = scratchdet.ops.match_priors(priors, boxes, labels)
        return (conf > 0).sum(1), loc.abs().sum()

    compiled = torch.compile(positives, fullgraph=True, backend=backend)
    got, expected = compiled(priors, boxes, labels), positives(priors, boxes, labels)
    assert torch.equal(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])


def test_ssd300_priors_helper():
    priors = ssd300_priors()
    assert priors.shape == (8732, 4)
    assert ((priors >= 0) & (priors <= 1)).all()
    assert math.isclose(float(priors[0, 2]), 30 / 300, rel_tol=1e-6)
