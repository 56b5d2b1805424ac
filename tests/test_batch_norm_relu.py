"""batch_norm_relu (fused training-mode BatchNorm + residual + ReLU) against the reference and against
nn.BatchNorm2d + ReLU; BNReLU2d's running statistics, modes and state dicts."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import scratchdet
from scratchdet.models.bn_relu import BNReLU2d
from scratchdet.models.layers import use_fused_batch_norm
from scratchdet.ops import batch_norm_relu, batch_norm_relu_backward, reference
from scratchdet.ops._extension import has_op
from helpers import given, settings, st

needs_kernel = pytest.mark.skipif(not has_op("batch_norm_relu"), reason="the extension is not built")


def make(shape, dtype=torch.float32, device="cpu", channels_last=True, residual=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype)
    c = shape[1]
    w = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    b = torch.randn(c, generator=g, dtype=torch.float64).to(dtype)
    r = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) if residual else None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.to(device).contiguous(memory_format=fmt)
    r = None if r is None else r.to(device).contiguous(memory_format=fmt)
    return x, w.to(device), b.to(device), r


def close(a, b, tol=1e-5, scale=0.0):
    """|a - b| <= tol * (max |b| + scale): ``scale`` is the size of what cancelled into b (a BatchNorm
    input gradient can be tiny next to the gradient it comes from)."""
    assert a.shape == b.shape and a.dtype == b.dtype
    if not b.numel():
        return
    scale = max(float(b.abs().max()) + scale, 1e-12)
    err = float((a.double() - b.double()).abs().max())
    assert err <= tol * scale, err / scale


# ------------------------------------------------------------------ the op against the reference
@needs_kernel
@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 4), c=st.integers(1, 20), h=st.integers(1, 9), w=st.integers(1, 9),
       relu=st.booleans(), residual=st.booleans(), affine=st.booleans(), channels_last=st.booleans(),
       seed=st.integers(0, 2**16))
def test_forward_and_backward_equal_the_reference(n, c, h, w, relu, residual, affine, channels_last, seed):
    if n * h * w < 2:
        return
    x, wt, b, r = make((n, c, h, w), channels_last=channels_last, residual=residual, seed=seed)
    wt, b = (wt, b) if affine else (None, None)
    out, mean, invstd = batch_norm_relu(x, wt, b, r, 1e-5, relu)
    ref_out, ref_mean, ref_invstd = reference.batch_norm_relu(x, wt, b, r, 1e-5, relu)
    # out = x * scale + shift, shift = beta - mean * scale: the two terms, ~|x| * |scale| each, cancel
    # down to (x - mean) * scale, so their size bounds the rounding (2 samples close together: ~100x)
    x_scale = float(x.abs().max()) * float((invstd * (wt.abs() if wt is not None else 1)).max())
    close(out, ref_out, scale=x_scale)
    close(mean, ref_mean, 1e-6, scale=float(x.abs().max())), close(invstd, ref_invstd, 1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last and c > 1 and h * w > 1
                             else torch.contiguous_format) or out.is_contiguous()
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1)).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    got = batch_norm_relu_backward(gy, out, x, wt, mean, invstd, relu, residual)
    want = reference.batch_norm_relu_backward(gy, out, x, wt, mean, invstd, relu, residual)
    w_scale = float((invstd * (wt if wt is not None else 1)).abs().max())
    close(got[0], want[0], scale=w_scale * float(gy.abs().max()))
    for a, e in zip(got[1:], want[1:]):
        close(a, e, scale=float(gy.abs().sum() / c))
    assert got[3].numel() == (x.numel() if residual else 0)


@needs_kernel
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 8, 2, 1), (6, 1, 1, 1), (3, 16, 7, 7)])
def test_gradcheck_float64(shape):
    x, w, b, r = make(shape, dtype=torch.float64)
    inputs = [t.detach().requires_grad_() for t in (x, w, b, r)]
    for relu in (True, False):
        assert torch.autograd.gradcheck(lambda *a: batch_norm_relu(*a, 1e-5, relu)[0], inputs)


@needs_kernel
def test_the_same_bits_on_one_and_two_threads():
    x, w, b, r = make((8, 24, 33, 17))
    gy = torch.randn_like(x)
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            out, mean, invstd = batch_norm_relu(x, w, b, r, 1e-5, True)
            runs.append((out, mean, invstd) + batch_norm_relu_backward(gy, out, x, w, mean, invstd, True, True))
    finally:
        torch.set_num_threads(before)
    for later in runs[1:]:
        for a, e in zip(later, runs[0]):
            assert torch.equal(a, e)


@needs_kernel
def test_opcheck_and_compile():
    x, w, b, r = make((2, 8, 4, 4))
    torch.library.opcheck(torch.ops.scratchdet.batch_norm_relu, (x, w, b, r, 1e-5, True))
    out, mean, invstd = batch_norm_relu(x, w, b, r, 1e-5, True)
    torch.library.opcheck(torch.ops.scratchdet.batch_norm_relu_backward,
                          (torch.randn_like(x), out, x, w, mean, invstd, True, True))
    f = torch.compile(lambda x: batch_norm_relu(x, w, b, r, 1e-5, True)[0].sum(), fullgraph=True, backend="aot_eager")
    xg = x.clone().requires_grad_()
    f(xg).backward()
    assert torch.isfinite(xg.grad).all()


@pytest.mark.parametrize("args,message", [
    (lambda x, w, b, r: (x[0], w, b, r, 1e-5, True), r"expected input of shape \[N, C, H, W\], got shape \[8, 4, 4\]"),
    (lambda x, w, b, r: (x.long(), None, None, None, 1e-5, True), "expected input to be a floating-point tensor"),
    (lambda x, w, b, r: (x, w[:3], b, r, 1e-5, True), r"expected weight of shape \[8\], got shape \[3\]"),
    (lambda x, w, b, r: (x, w.double(), b, r, 1e-5, True), "expected weight of dtype torch.float32 .the input's., "
                                                           "got torch.float64"),
    (lambda x, w, b, r: (x, w, b, r[:, :2], 1e-5, True), "expected residual of the input's shape"),
    (lambda x, w, b, r: (x, w, b, r, 0.0, True), "expected eps > 0, got 0"),
    (lambda x, w, b, r: (x[:1, :, :1, :1], w, b, None, 1e-5, True), "expected more than 1 value per channel"),
    (lambda x, w, b, r: (x[:0], w, b, None, 1e-5, True), "expected more than 1 value per channel"),
])
def test_bad_input_same_message_from_the_op_and_the_reference(args, message):
    x, w, b, r = make((2, 8, 4, 4))
    a = args(x, w, b, r)
    with pytest.raises(RuntimeError, match=message):
        reference.batch_norm_relu(*a)
    if has_op("batch_norm_relu"):
        with pytest.raises(RuntimeError, match=message):
            torch.ops.scratchdet.batch_norm_relu(*a)
        with torch._subclasses.FakeTensorMode(allow_non_fake_inputs=True), pytest.raises(RuntimeError, match=message):
            torch.ops.scratchdet.batch_norm_relu(*a)


@needs_kernel
def test_half_on_cpu_is_refused_by_the_kernel_with_a_pointer():
    x, w, b, _ = make((2, 8, 4, 4))
    with pytest.raises(RuntimeError, match="the CPU kernel takes float32 or float64 input, got torch.bfloat16"):
        torch.ops.scratchdet.batch_norm_relu(x.bfloat16(), w, b, None, 1e-5, True)


# ------------------------------------------------------------------ the module against nn.BatchNorm2d + ReLU
def stock_pair(c, **kw):
    stock = nn.BatchNorm2d(c, **kw)
    fused = BNReLU2d(c, relu=True, **kw)
    fused.load_state_dict(stock.state_dict())
    if stock.affine:
        with torch.no_grad():
            stock.weight.uniform_(0.5, 1.5), stock.bias.uniform_(-0.5, 0.5)
            fused.weight.copy_(stock.weight), fused.bias.copy_(stock.bias)
    return stock, fused


@pytest.mark.parametrize("kw", [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False},
                                {"momentum": 0.3, "eps": 1e-3}])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("channels_last", [True, False])
def test_module_trains_like_batch_norm_and_relu(kw, residual, channels_last):
    stock, fused = stock_pair(16, **kw)
    for step in range(4):
        x, _, _, r = make((4, 16, 9, 7), channels_last=channels_last, residual=residual, seed=step)
        xs, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
        rs = None if r is None else r.clone().requires_grad_()
        rf = None if r is None else r.clone().requires_grad_()
        ys = stock(xs)
        ys = F.relu(ys + rs if rs is not None else ys)
        yf = fused(xf, rf)
        close(yf, ys)
        g = torch.randn_like(ys)
        ys.backward(g), yf.backward(g)
        close(xf.grad, xs.grad, scale=float(g.abs().max()) * 3)
        if rs is not None:
            close(rf.grad, rs.grad)
        if stock.affine:
            close(fused.weight.grad, stock.weight.grad), close(fused.bias.grad, stock.bias.grad)
            stock.weight.grad = fused.weight.grad = stock.bias.grad = fused.bias.grad = None
    for name in ("running_mean", "running_var"):
        if getattr(stock, name) is not None:
            close(getattr(fused, name), getattr(stock, name), 1e-6)
    if stock.track_running_stats:
        assert int(fused.num_batches_tracked) == int(stock.num_batches_tracked) == 4
    stock.eval(), fused.eval()
    x, _, _, _ = make((2, 16, 5, 5), residual=False, seed=9)
    close(fused(x), F.relu(stock(x)))


def test_module_paths_and_state_dicts():
    x, _, _, _ = make((4, 8, 6, 6), residual=False)
    fused = BNReLU2d(8, relu=True).train()
    stock = nn.BatchNorm2d(8)
    stock.load_state_dict(fused.state_dict())              # the same keys both ways
    fused.load_state_dict(stock.state_dict())
    assert fused._use_kernel(x, None) == has_op("batch_norm_relu")
    assert not fused._use_kernel(x.contiguous(), None)      # NCHW on CPU: the stock ops
    assert not fused._use_kernel(x.bfloat16(), None)
    assert not fused.eval()._use_kernel(x, None)            # eval: running statistics, stock
    fused.train()
    model = nn.Sequential(fused)
    assert use_fused_batch_norm(model, False) == 1 and not fused.fused and not fused._use_kernel(x, None)
    use_fused_batch_norm(model, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):      # autocast: the stock BatchNorm
        y = fused(x.bfloat16())
    assert y.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        fused(x[:1, :, :1, :1])


def test_a_checkpoint_loads_into_either_path(tmp_path):
    torch.manual_seed(0)
    model = scratchdet.build_model("root_resnet_tiny", num_classes=3, width=8, extra_channels=16, image_size=64)
    assert any(isinstance(m, BNReLU2d) for m in model.modules())
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    targets = {"boxes": torch.tensor([[[0.1, 0.1, 0.6, 0.7]]] * 2), "labels": torch.tensor([[1], [2]])}
    stock = copy.deepcopy(model)
    use_fused_batch_norm(stock, False)
    lf, ls = model.train()(x, targets)["loss"], stock.train()(x, targets)["loss"]
    assert float(lf) == pytest.approx(float(ls), rel=1e-5)
    path = tmp_path / "m.pt"
    scratchdet.save(model, path)
    loaded = scratchdet.load(path)
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    plain = model.state_dict()             # each layer's entries load into a stock nn.BatchNorm2d
    prefix = next(k for k in plain if k.endswith("norm.running_mean"))[:-len("running_mean")]
    nn.BatchNorm2d(8).load_state_dict({k[len(prefix):]: v for k, v in plain.items() if k.startswith(prefix)})


# CUDA: ATen's batch norm sums in another order than the reference's float64 (and than the CPU
# kernel), so the op is compared with tolerances, as on the CPU; TF32 plays no part (no conv).
@pytest.mark.sanitize
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("relu,residual,affine", [(True, True, True), (True, False, True), (False, True, False),
                                                  (False, False, True)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_cuda_forward_and_backward_equal_the_reference(dtype, relu, residual, affine, channels_last):
    x, wt, b, r = make((4, 12, 9, 7), dtype=dtype, device="cuda", channels_last=channels_last, residual=residual)
    wt, b = (wt, b) if affine else (None, None)
    out, mean, invstd = batch_norm_relu(x, wt, b, r, 1e-5, relu)
    ref_out, ref_mean, ref_invstd = reference.batch_norm_relu(x, wt, b, r, 1e-5, relu)
    # fp16: the output rounds to half (2^-11 relative) after ATen's float math; statistics in float
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    close(out, ref_out, tol), close(mean, ref_mean, 1e-6, scale=float(x.abs().max())), close(invstd, ref_invstd, 1e-5)
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).to(dtype=dtype, device="cuda")
    got = batch_norm_relu_backward(gy, out, x, wt, mean, invstd, relu, residual)
    want = reference.batch_norm_relu_backward(gy, out, x, wt, mean, invstd, relu, residual)
    w_scale = float((invstd * (wt.float() if wt is not None else 1)).abs().max())
    gtol = 1e-5 if dtype == torch.float32 else 4e-3
    close(got[0], want[0], gtol, scale=w_scale * float(gy.abs().max()))
    for a, e in zip(got[1:], want[1:]):
        close(a, e, gtol, scale=float(gy.float().abs().sum() / x.shape[1]))
    assert got[3].numel() == (x.numel() if residual else 0)


@pytest.mark.cuda
@pytest.mark.usefixtures("no_tf32")
def test_cuda_module_trains_like_batch_norm_and_relu():
    stock, fused = stock_pair(16)
    stock, fused = stock.cuda(), fused.cuda()
    x, _, _, r = make((4, 16, 9, 7), device="cuda")
    xs, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    ys = F.relu(stock(xs) + r)
    yf = fused(xf, r)
    close(yf, ys)
    g = torch.randn_like(ys)
    ys.backward(g), yf.backward(g)
    close(xf.grad, xs.grad, 1e-4)
    close(fused.running_var, stock.running_var, 1e-5)
