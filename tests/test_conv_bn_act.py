import pytest
import torch
import torch.nn.functional as F

import scratchdet
from scratchdet.ops import reference
from helpers import DEVICES, given, settings, st

# fp32 comparisons on CUDA need full fp32 convolutions: cuDNN's default TF32 (Ampere and later)
# alone is ~1e-3 off, and the op's conv (no bias) and eager's may pick different algorithms.
pytestmark = pytest.mark.usefixtures("no_tf32")

CL = torch.channels_last
# Configs: (N, C_in, C_out, H, W, k, stride, padding, dilation, groups)
CONFIGS = [
    (1, 3, 8, 17, 17, 3, 1, 1, 1, 1),
    (2, 8, 16, 9, 12, 3, 2, 1, 1, 1),
    (2, 16, 16, 10, 10, 1, 1, 0, 1, 1),
    (1, 16, 32, 7, 7, 1, 2, 0, 1, 1),     # ResNet projection shortcut
    (3, 8, 8, 11, 5, 3, 1, 2, 2, 1),      # dilated
    (2, 8, 16, 8, 8, 3, 1, 1, 1, 4),      # grouped
    (2, 8, 8, 8, 8, 3, 1, 1, 1, 8),       # depthwise
    (1, 4, 6, 5, 6, 5, 3, 2, 1, 2),
    (1, 5, 3, 1, 1, 1, 1, 0, 1, 1),       # 1x1 spatial (NCHW and NHWC coincide)
    (1, 64, 64, 19, 19, 3, 1, 1, 1, 1),
]


def make(cfg, dtype=torch.float32, device="cpu", seed=0, memory_format=torch.contiguous_format):
    n, cin, cout, h, w, k, s, p, d, g = cfg
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=gen)
    wt = torch.randn(cout, cin // g, k, k, generator=gen) / (cin // g * k * k) ** 0.5
    b = torch.randn(cout, generator=gen)
    ho = (h + 2 * p - d * (k - 1) - 1) // s + 1
    wo = (w + 2 * p - d * (k - 1) - 1) // s + 1
    r = torch.randn(n, cout, ho, wo, generator=gen)
    t = lambda z: z.to(dtype=dtype, device=device)  # noqa: E731
    return (t(x).contiguous(memory_format=memory_format), t(wt), t(b), t(r).contiguous(memory_format=memory_format),
            dict(stride=s, padding=p, dilation=d, groups=g))


def eager(x, w, b, r, kw, relu):
    """The unfused ops the op replaces."""
    out = F.conv2d(x, w, b, kw["stride"], kw["padding"], kw["dilation"], kw["groups"])
    if r is not None:
        out = out + r
    return torch.relu(out) if relu else out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, CL], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("use_bias,use_res,relu", [(b, r, a) for b in (0, 1) for r in (0, 1) for a in (0, 1)])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "x".join(map(str, c)))
def test_matches_eager_fp32(device, memory_format, use_bias, use_res, relu, cfg):
    x, w, b, r, kw = make(cfg, device=device, memory_format=memory_format)
    b = b if use_bias else None
    r = r if use_res else None
    out = scratchdet.ops.conv_bn_act(x, w, b, r, relu=bool(relu), **kw)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(out, eager(x, w, b, r, kw, relu), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, reference.conv_bn_act(x, w, b, r, relu=bool(relu), **kw), rtol=1e-5, atol=1e-5)
    if relu:
        assert (out >= 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, CL], ids=["nchw", "nhwc"])
def test_reduced_precision_and_float64(device, dtype, memory_format):
    # The op's conv is the same ATen conv as the eager path; its epilogue rounds as the eager ops
    # do. Tolerance against eager in the same dtype: 2 ulps of the output (bf16 8e-3, fp16 1e-3
    # relative) to allow a different conv algorithm; against float32, the dtype's own error.
    if device == "cpu" and dtype == torch.float16 and not _cpu_half_conv_supported():
        pytest.skip("this CPU build has no float16 conv2d")
    tol = {torch.bfloat16: 1.6e-2, torch.float16: 2e-3, torch.float64: 1e-12}[dtype]
    for cfg in CONFIGS[:8]:
        x, w, b, r, kw = make(cfg, dtype=dtype, device=device, memory_format=memory_format)
        out = scratchdet.ops.conv_bn_act(x, w, b, r, relu=True, **kw)
        assert out.dtype == dtype and out.is_contiguous(memory_format=memory_format)
        torch.testing.assert_close(out, eager(x, w, b, r, kw, True), rtol=tol, atol=tol)
        exact = eager(x.double(), w.double(), b.double(), r.double(), kw, True)
        torch.testing.assert_close(out.double(), exact, rtol=tol * 4, atol=tol * 4)


def _cpu_half_conv_supported():
    try:
        F.conv2d(torch.ones(1, 1, 3, 3, dtype=torch.float16), torch.ones(1, 1, 1, 1, dtype=torch.float16))
        return True
    except RuntimeError:
        return False


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), cin_g=st.integers(1, 4), cout_g=st.integers(1, 4), groups=st.integers(1, 3),
       h=st.integers(1, 12), w=st.integers(1, 12), k=st.sampled_from([1, 3]), stride=st.integers(1, 3),
       dilation=st.integers(1, 2), relu=st.booleans(), use_res=st.booleans(), cl=st.booleans(),
       res_other_format=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_property_matches_eager(n, cin_g, cout_g, groups, h, w, k, stride, dilation, relu, use_res, cl,
                                res_other_format, seed):
    padding = dilation * (k // 2)
    cfg = (n, cin_g * groups, cout_g * groups, h, w, k, stride, padding, dilation, groups)
    fmt = CL if cl else torch.contiguous_format
    x, wt, b, r, kw = make(cfg, seed=seed, memory_format=fmt)
    if res_other_format:  # residual in the other layout: the op must relayout it, not misread it
        r = r.contiguous(memory_format=torch.contiguous_format if cl else CL)
    r = r if use_res else None
    out = scratchdet.ops.conv_bn_act(x, wt, b, r, relu=relu, **kw)
    torch.testing.assert_close(out, eager(x, wt, b, r, kw, relu), rtol=1e-5, atol=1e-5)


def test_non_contiguous_inputs():
    x, w, b, r, kw = make(CONFIGS[1])
    strided = lambda t: torch.stack([t, t], -1)[..., 0]  # noqa: E731  (neither NCHW- nor NHWC-contiguous)
    xs, ws, bs, rs = strided(x), strided(w), strided(b), strided(r)
    assert not xs.is_contiguous() and not xs.is_contiguous(memory_format=CL) and torch.equal(xs, x)
    out = scratchdet.ops.conv_bn_act(xs, ws, bs, rs, relu=True, **kw)
    torch.testing.assert_close(out, eager(x, w, b, r, kw, True), rtol=1e-5, atol=1e-5)


def test_nan_propagates_like_relu():
    x, w, b, r, kw = make(CONFIGS[0])
    r[0, 0, 0, 0] = float("nan")
    out = scratchdet.ops.conv_bn_act(x, w, b, r, relu=True, **kw)
    assert torch.isnan(out[0, 0, 0, 0]) and torch.isfinite(out.flatten()[1:]).all()


def test_empty_batch():
    x, w, b, r, kw = make(CONFIGS[1])
    out = scratchdet.ops.conv_bn_act(x[:0], w, b, r[:0], relu=True, **kw)
    assert out.shape == (0, *r.shape[1:])


def test_autocast_runs_in_lower_precision():
    x, w, b, r, kw = make(CONFIGS[1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch.ops.scratchdet.conv_bn_act(x, w, b, r, [2, 2], [1, 1], [1, 1], 1, True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), eager(x, w, b, r, kw, True), rtol=5e-2, atol=5e-2)


def test_python_face_accepts_int_and_pair_arguments():
    x, w, b, r, kw = make(CONFIGS[1])
    a = scratchdet.ops.conv_bn_act(x, w, b, r, stride=2, padding=1, relu=True)
    c = scratchdet.ops.conv_bn_act(x, w, b, r, stride=(2, 2), padding=[1, 1], dilation=(1, 1), relu=True)
    assert torch.equal(a, c)


def _bad_cases():
    x, w, b, r, _ = make(CONFIGS[1])  # stride 2, padding 1 -> output [2, 16, 5, 6]
    args = dict(stride=2, padding=1)
    return [
        ((x[0], w, b, r), args, r"expected input of shape \[N, C_in, H, W\], got shape \[8, 9, 12\]"),
        ((x, w[0], b, r), args, r"expected weight of shape \[C_out, C_in / groups, kH, kW\]"),
        ((x.long(), w.long(), None, None), args, "floating-point"),
        ((x, w.double(), b, r), args, "expected input and weight to have the same dtype"),
        ((x, w, b.double(), r), args, "expected input and bias to have the same dtype"),
        ((x, w, b, r.half()), args, "expected input and residual to have the same dtype"),
        ((x, w, b[:3], r), args, r"expected bias of shape \[16\], got shape \[3\]"),
        ((x, w, b, r[:, :, :4]), args, r"expected residual of the output's shape \[2, 16, 5, 6\], got shape \[2, 16, 4, 6\]"),
        ((x, w[:, :4], b, r), args, r"C_in = 8 and groups = 1, got weight shape \[16, 4, 3, 3\]"),
        ((x, w, b, r), dict(stride=0, padding=1), r"expected every stride value >= 1"),
        ((x, w, b, r), dict(stride=2, padding=-1), r"expected every padding value >= 0"),
        ((x, w, b, r), dict(stride=2, padding=1, groups=3), "C_in = 8 and groups = 3"),
        ((x[..., :1, :1], w, b, None), dict(), "larger than the padded input"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_input_gives_clear_error(case):
    args, kw, match = _bad_cases()[case]
    with pytest.raises(RuntimeError, match=match):
        scratchdet.ops.conv_bn_act(*args, **kw)
    with pytest.raises(RuntimeError, match=match):
        reference.conv_bn_act(*args, **kw)


@pytest.mark.cuda
def test_wrong_device_gives_clear_error():
    x, w, b, r, kw = make(CONFIGS[1])
    for args, match in [((x.cuda(), w, b, r), "input and weight on the same device"),
                        ((x.cuda(), w.cuda(), b, r.cuda()), "input and bias on the same device"),
                        ((x.cuda(), w.cuda(), b.cuda(), r), "input and residual on the same device")]:
        with pytest.raises(RuntimeError, match=match):
            scratchdet.ops.conv_bn_act(*args, **kw)


@pytest.mark.sanitize
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_unaligned_and_odd_sizes(dtype):
    # Storage offsets that break 16-byte alignment and sizes not divisible by the vector width
    # take the scalar path of the epilogue kernel.
    x, w, b, r, kw = make((1, 3, 5, 7, 7, 3, 1, 1, 1, 1), dtype=dtype, device="cuda")
    r_off = torch.empty(r.numel() + 1, dtype=dtype, device="cuda")[1:].view_as(r).copy_(r)
    out = scratchdet.ops.conv_bn_act(x, w, b, r_off, relu=True, **kw)
    torch.testing.assert_close(out, eager(x, w, b, r, kw, True), rtol=2e-3 if dtype == torch.float16 else 1.6e-2,
                               atol=2e-3 if dtype == torch.float16 else 1.6e-2)


@pytest.mark.sanitize
@pytest.mark.cuda
@pytest.mark.parametrize("dtype,vec", [(torch.float32, 4), (torch.float16, 8), (torch.float64, 2)])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, CL], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("use_bias,use_res,relu", [(1, 1, 1), (1, 0, 0), (0, 1, 1)])
def test_cuda_vector_body_and_scalar_tail(dtype, vec, memory_format, use_bias, use_res, relu):
    # Aligned tensors whose element count is not a multiple of the vector width (16 bytes): the
    # packs, then a scalar tail of numel % vec elements, whose channels must continue the packs'.
    cfg = (1, 3, 5, 7, 7, 3, 1, 1, 1, 1)              # output 1 x 5 x 7 x 7 = 245 elements
    x, w, b, r, kw = make(cfg, dtype=dtype, device="cuda", memory_format=memory_format)
    assert r.numel() % vec and r.data_ptr() % 16 == 0
    b, r = (b if use_bias else None), (r if use_res else None)
    out = scratchdet.ops.conv_bn_act(x, w, b, r, relu=bool(relu), **kw)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(out, eager(x, w, b, r, kw, relu), rtol=tol, atol=tol)
    for n in range(1, 2 * vec + 2):                    # fewer elements than one pack, and around it
        x1, w1, b1, r1, kw1 = make((1, 1, 1, 1, n, 1, 1, 0, 1, 1), dtype=dtype, device="cuda")
        b1, r1 = (b1 if use_bias else None), (r1 if use_res else None)
        got = scratchdet.ops.conv_bn_act(x1, w1, b1, r1, relu=bool(relu), **kw1)
        torch.testing.assert_close(got, eager(x1, w1, b1, r1, kw1, relu), rtol=tol, atol=tol)


def test_opcheck():
    for i, cfg in enumerate(CONFIGS[:6]):
        for fmt in (torch.contiguous_format, CL):
            x, w, b, r, kw = make(cfg, seed=i, memory_format=fmt)
            args = (x, w, b if i % 2 else None, r if i % 3 else None, [kw["stride"]] * 2, [kw["padding"]] * 2,
                    [kw["dilation"]] * 2, kw["groups"], bool(i % 2))
            torch.library.opcheck(torch.ops.scratchdet.conv_bn_act.default, args)


def test_torch_compile_fullgraph():
    x, w, b, r, kw = make(CONFIGS[1], memory_format=CL)
    fn = torch.compile(lambda x, r: scratchdet.ops.conv_bn_act(x, w, b, r, relu=True, **kw).sum(dim=1),
                       fullgraph=True, backend="eager")
    torch.testing.assert_close(fn(x, r), eager(x, w, b, r, kw, True).sum(dim=1), rtol=1e-5, atol=1e-5)
