"""winograd_conv3x3 / winograd_f43_pack / winograd_f63_pack: the kernel against the tensor-op reference
and against conv2d (the semantics), for both tile sizes, the edge cases, bad input, and the fused-model
switch."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from scratchdet import ops
from scratchdet.models import build_model
from scratchdet.models.conv_backends import use_winograd
from scratchdet.models.fuse import fuse
from scratchdet.models.fused_layers import FusedConvAct
from scratchdet.ops import reference
from helpers import non_contiguous, given, settings, st

CL = torch.channels_last
ROOT = Path(__file__).resolve().parents[1]


# tile side -> (the op's pack, the reference's pack, transform positions)
PACKS = {4: (ops.winograd_f43_pack, reference.winograd_f43_pack, 36),
         6: (ops.winograd_f63_pack, reference.winograd_f63_pack, 64)}
TILES = pytest.mark.parametrize("tile", sorted(PACKS), ids=lambda m: f"F{m}x{m}")


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def make(n, c_in, c_out, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, h, w, generator=g)
    weight = torch.randn(c_out, c_in, 3, 3, generator=g) / max(1, 9 * c_in) ** 0.5
    return x, weight, torch.randn(c_out, generator=g), torch.randn(n, c_out, h, w, generator=g)


def direct(x, weight, bias, residual, relu):
    """What the op stands for: the direct conv (in float64, so only the op's rounding shows)."""
    out = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), padding=1)
    if residual is not None:
        out = out + residual.double()
    return (out.relu() if relu else out).float()


def check(x, weight, bias, residual, relu, tile=4):
    pack, reference_pack, _ = PACKS[tile]
    out = ops.winograd_conv3x3(x, pack(weight), bias, residual, relu)
    ref = reference.winograd_conv3x3(x, reference_pack(weight), bias, residual, relu)
    want = direct(x, weight, bias, residual, relu)
    assert out.shape == want.shape and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=CL if x.is_contiguous(memory_format=CL) and x.shape[1] > 1
                             else torch.contiguous_format) or out.numel() == 0
    if out.numel():
        # Winograd rounds a little more than a direct conv: ~1e-5 of the output's scale, F(6x6, 3x3)
        # about 1.5x F(4x4, 3x3); more where a residual cancels most of the conv (the scale is the
        # output's: n=2, c_in=15, c_out=1, 2x1, residual, ReLU, seed 631 gives 5.6e-5 for F(6x6, 3x3))
        bound = 5e-5 if tile == 4 else 1e-4
        assert rel_err(out, want) < bound
        assert rel_err(out, ref) < bound
        assert rel_err(ref, want) < bound
    return out


# ---------------------------------------------------------------- the transforms themselves
@TILES
def test_pack_matches_the_reference_and_the_definition(tile):
    pack, reference_pack, positions = PACKS[tile]
    weight = torch.randn(5, 7, 3, 3, dtype=torch.float64)
    packed = pack(weight)
    assert packed.shape == (positions, 7, 5) and packed.dtype == torch.float32
    matrices = reference.WINOGRAD_F43 if tile == 4 else reference.WINOGRAD_F63
    g = torch.tensor(matrices["G"], dtype=torch.float64)
    for o, i in [(0, 0), (4, 6), (2, 3)]:
        u = g @ weight[o, i] @ g.T
        torch.testing.assert_close(packed[:, i, o].double(), u.reshape(positions), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(packed, reference_pack(weight), rtol=1e-6, atol=1e-7)
    # float32 weights are transformed in float64 too: the same result as from the float64 weight
    torch.testing.assert_close(pack(weight.float()), reference_pack(weight.float()), rtol=1e-6, atol=1e-7)


@TILES
def test_the_matrices_compute_a_1d_correlation_exactly(tile):
    # A^T [(G g) . (B^T d)] is the valid correlation of d with g, in exact rational arithmetic
    # terms: float64 leaves only rounding, far below the float32 kernel's
    matrices = reference.WINOGRAD_F43 if tile == 4 else reference.WINOGRAD_F63
    bt, g, at = (torch.tensor(matrices[k], dtype=torch.float64) for k in ("BT", "G", "AT"))
    gen = torch.Generator().manual_seed(tile)
    for _ in range(20):
        d, w = torch.randn(tile + 2, dtype=torch.float64, generator=gen), torch.randn(3, dtype=torch.float64,
                                                                                     generator=gen)
        want = torch.stack([d[i:i + 3] @ w for i in range(tile)])
        torch.testing.assert_close(at @ ((g @ w) * (bt @ d)), want, rtol=1e-12, atol=1e-12)


@TILES
def test_one_pixel_filter_is_exact(tile):
    # a filter that only has its centre tap is a 1x1 conv: every transform is exact for it up to rounding
    x, _, bias, _ = make(2, 3, 4, 6, 5)
    weight = torch.zeros(4, 3, 3, 3)
    weight[:, :, 1, 1] = torch.randn(4, 3)
    out = ops.winograd_conv3x3(x, PACKS[tile][0](weight), bias)
    torch.testing.assert_close(out, F.conv2d(x, weight, bias, padding=1), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- against the reference and conv2d
@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), c_in=st.integers(1, 20), c_out=st.integers(1, 20), h=st.integers(1, 14),
       w=st.integers(1, 14), use_bias=st.booleans(), use_res=st.booleans(), relu=st.booleans(),
       channels_last=st.booleans(), seed=st.integers(0, 2**16), tile=st.sampled_from(sorted(PACKS)))
def test_random_shapes(n, c_in, c_out, h, w, use_bias, use_res, relu, channels_last, seed, tile):
    x, weight, bias, res = make(n, c_in, c_out, h, w, seed)
    if channels_last:
        x, res = x.contiguous(memory_format=CL), res.contiguous(memory_format=CL)
    check(x, weight, bias if use_bias else None, res if use_res else None, relu, tile)


@pytest.mark.parametrize("shape", [
    (1, 64, 64, 19, 19),      # few tiles, wide: the threads share one chunk phase by phase
    (8, 16, 24, 64, 64),      # many tiles (6 chunks): each thread runs whole chunks
    (1, 8, 8, 300, 4),        # one very tall column of tiles
    (16, 5, 3, 4, 4),         # a large batch of single-tile images
    (1, 9, 17, 1, 1),         # one pixel: one tile, mostly padding
    (2, 3, 5, 4, 8),          # sizes that are multiples of the 4x4 tile
    (2, 3, 5, 12, 18),        # multiples of both tiles
    (1, 48, 40, 7, 13),       # one 6x6 tile and one pixel high
], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("threads", [1, 2])
@TILES
def test_chunking_and_threading(shape, threads, tile):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, weight, bias, res = make(*shape)
        check(x.contiguous(memory_format=CL), weight, bias, res, True, tile)
        check(x, weight, None, None, False, tile)
    finally:
        torch.set_num_threads(before)


GEMM_SHAPES = [
    (2, 13, 11, 21, 18),      # narrow: one masked vector per row
    (1, 20, 16, 9, 9),        # exactly one vector
    (1, 7, 17, 12, 12),       # one vector and one lane
    (1, 33, 64, 8, 8),        # exactly one 64-column block
    (2, 24, 65, 7, 13),       # one block and one lane
    (1, 40, 130, 15, 9),      # blocks of 64 + 2, rows 6k + remainder (12 tiles)
    (3, 5, 84, 4, 4),         # 3 tiles (fewer than a row block), the SSD head's 84 classes x boxes
    (1, 6, 24, 6, 6),         # AVX2: a 16-column block and a full 8-column one; 4 tiles (one row block)
    (2, 9, 25, 5, 7),         # AVX2: 16 + 9 columns (the last vector one lane); 8 tiles
    (1, 11, 40, 13, 9),       # AVX2: 16 + 16 + 8 columns; 12 tiles (two row blocks)
    (1, 40, 20, 8, 8),        # AVX2, few tiles (4 <= 16): C_in in k-blocks of 16 + 16 + 8; 16 + 4 columns
    (1, 200, 33, 20, 20),     # AVX2, 25 tiles: C_in in k-blocks of 128 + 72; 16 + 16 + 1 columns
    (2, 150, 16, 9, 9),       # AVX2, 18 tiles over two images: k-blocks of 128 + 22; one 16-column block
]


@pytest.mark.parametrize("path,isa", [("native", "auto"), ("blas", "auto"), ("aten", "auto"), ("native", "avx2"),
                                      ("auto", "avx2")])
def test_every_gemm_path_equals_the_direct_conv(tmp_path, path, isa):
    # The 36 GEMMs run on our AVX-512 kernel (native, where the CPU has AVX-512F), our AVX2 kernel,
    # torch's BLAS sgemm or at::mm_out: force each (unavailable ones fall to the next) on shapes that
    # cross its blocks (rows, columns, and the AVX2 kernel's k-blocks); auto is the AVX-512 kernel where
    # enabled, else the AVX2 one where the CPU has AVX2 + FMA, else BLAS.
    # SCRATCHDET_CPU_ISA=avx2: the AVX2 paths of an AVX2-only CPU (8-float transforms, the AVX2 GEMM
    # kernel for native).
    code = (
        "import sys, torch; from scratchdet import ops\n"
        f"shapes = {GEMM_SHAPES!r}\n"
        "outs = []\n"
        "for i, (n, ci, co, h, w) in enumerate(shapes):\n"
        "    g = torch.Generator().manual_seed(i)\n"
        "    x = torch.randn(n, ci, h, w, generator=g); wt = torch.randn(co, ci, 3, 3, generator=g)\n"
        "    b = torch.randn(co, generator=g); r = torch.randn(n, co, h, w, generator=g)\n"
        "    for pack in (ops.winograd_f43_pack, ops.winograd_f63_pack):\n"
        "        outs.append((x, wt, b, r, ops.winograd_conv3x3(x, pack(wt), b, r, True)))\n"
        "torch.save(outs, sys.argv[1])\n")
    path_file = tmp_path / f"{path}-{isa}.pt"
    env = dict(os.environ, SCRATCHDET_WINOGRAD_GEMM=path, SCRATCHDET_CPU_ISA=isa)
    subprocess.run([sys.executable, "-c", code, str(path_file)], env=env, check=True, cwd=ROOT)
    for x, weight, bias, res, out in torch.load(path_file):
        assert rel_err(out, direct(x, weight, bias, res, True)) < 5e-5, x.shape


def test_unknown_gemm_path_is_refused():
    code = ("import torch; from scratchdet import ops\n"
            "ops.winograd_conv3x3(torch.randn(1, 4, 8, 8), ops.winograd_f43_pack(torch.randn(4, 4, 3, 3)), None, None, False)\n")
    env = dict(os.environ, SCRATCHDET_WINOGRAD_GEMM="mkl")
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0
    assert "SCRATCHDET_WINOGRAD_GEMM must be auto, native, blas or aten, got 'mkl'" in run.stderr


def test_unknown_cpu_isa_is_refused():
    code = ("import torch; from scratchdet import ops\n"
            "w = ops.winograd_f43_pack(torch.randn(4, 4, 3, 3))\n"
            "ops.winograd_conv3x3(torch.randn(1, 4, 8, 8), w, None, None, False)\n")
    env = dict(os.environ, SCRATCHDET_CPU_ISA="sse2")
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0
    assert "SCRATCHDET_CPU_ISA must be auto, avx512 or avx2, got 'sse2'" in run.stderr


@TILES
def test_empty_inputs(tile):
    pack, _, positions = PACKS[tile]
    x, weight, bias, res = make(0, 4, 6, 5, 5)
    out = ops.winograd_conv3x3(x, pack(weight), bias, res, True)
    assert out.shape == (0, 6, 5, 5)
    # no input channels: the conv is an empty sum, the output is its epilogue
    x, weight, bias, res = make(2, 0, 3, 4, 5)
    out = ops.winograd_conv3x3(x, pack(weight), bias, res, True)
    torch.testing.assert_close(out, (bias.view(1, -1, 1, 1) + res).relu())
    assert pack(torch.randn(0, 3, 3, 3)).shape == (positions, 3, 0)


@TILES
def test_non_contiguous_inputs(tile):
    pack = PACKS[tile][0]
    x, weight, bias, res = make(2, 6, 5, 9, 7)
    out = ops.winograd_conv3x3(non_contiguous(x), pack(non_contiguous(weight)),
                               non_contiguous(bias), non_contiguous(res), True)
    torch.testing.assert_close(out, ops.winograd_conv3x3(x, pack(weight), bias, res, True))
    assert rel_err(out, direct(x, weight, bias, res, True)) < 5e-5


@TILES
def test_nan_is_not_hidden_by_relu(tile):
    x, weight, bias, _ = make(1, 4, 4, 10, 10)
    x[0, 2, 5, 5] = float("nan")
    out = ops.winograd_conv3x3(x, PACKS[tile][0](weight), bias, None, True)
    assert torch.isnan(out[0, :, 4:7, 4:7]).all()        # every output that reads the NaN pixel


# ---------------------------------------------------------------- bad input
def test_bad_input_gets_a_clear_error():
    x, weight, bias, res = make(1, 4, 6, 8, 8)
    packed = ops.winograd_f43_pack(weight)
    cases = [
        (lambda: ops.winograd_conv3x3(x.double(), packed.double()), "dtype float32"),
        (lambda: ops.winograd_conv3x3(x.half(), packed), "dtype float32"),
        (lambda: ops.winograd_conv3x3(x, weight), r"packed_weight of shape \[36 or 64, C_in, C_out\]"),
        (lambda: ops.winograd_conv3x3(x, packed[:35]), r"\[36 or 64, C_in, C_out\] with C_in = 4"),
        (lambda: ops.winograd_conv3x3(x[:, :3], ops.winograd_f63_pack(weight)), "C_in = 3"),
        (lambda: ops.winograd_conv3x3(x[:, :3], packed), "C_in = 3"),
        (lambda: ops.winograd_conv3x3(x[0], packed), r"input of shape \[N, C_in, H, W\]"),
        (lambda: ops.winograd_conv3x3(x, packed, bias[:5]), r"bias of shape \[6\]"),
        (lambda: ops.winograd_conv3x3(x, packed, bias.double()), "same dtype"),
        (lambda: ops.winograd_conv3x3(x, packed, None, res[:, :, :4]), "residual of the output's shape"),
        (lambda: ops.winograd_f43_pack(torch.randn(6, 4, 5, 5)), "3x3 weight"),
        (lambda: ops.winograd_f43_pack(weight.half()), "float32 or float64"),
        (lambda: ops.winograd_f43_pack(weight[0]), r"\[C_out, C_in, 3, 3\]"),
        (lambda: ops.winograd_f63_pack(torch.randn(6, 4, 5, 5)), "winograd_f63_pack: expected a 3x3 weight"),
        (lambda: ops.winograd_f63_pack(weight.half()), "float32 or float64"),
        (lambda: ops.winograd_f63_pack(weight[0]), r"\[C_out, C_in, 3, 3\]"),
    ]
    for call, message in cases:
        with pytest.raises(RuntimeError, match=message):
            call()
        # the reference raises the same words
    with pytest.raises(RuntimeError, match="dtype float32"):
        reference.winograd_conv3x3(x.double(), packed.double())
    with pytest.raises(RuntimeError, match="3x3 weight"):
        reference.winograd_f43_pack(torch.randn(6, 4, 5, 5))
    with pytest.raises(RuntimeError, match="winograd_f63_pack: expected a 3x3 weight"):
        reference.winograd_f63_pack(torch.randn(6, 4, 5, 5))
    with pytest.raises(RuntimeError, match=r"\[36 or 64, C_in, C_out\] with C_in = 4"):
        reference.winograd_conv3x3(x, packed[:35])


@pytest.mark.cuda
def test_cuda_tensors_are_refused_with_a_pointer_to_conv_bn_act():
    x, weight, _, _ = make(1, 4, 6, 8, 8)
    packed = ops.winograd_f43_pack(weight)
    with pytest.raises(RuntimeError, match="CPU only"):
        ops.winograd_conv3x3(x.cuda(), packed.cuda())
    with pytest.raises(RuntimeError, match="CPU only"):
        ops.winograd_f43_pack(weight.cuda())
    with pytest.raises(RuntimeError, match="winograd_f63_pack: CPU only"):
        ops.winograd_f63_pack(weight.cuda())


def test_autocast_passes_the_float32_ops_through():
    # No autocast kernel: under autocast the float32-only ops run on the tensors they are given.
    x, weight, bias, res = make(1, 4, 6, 8, 8)
    packed = ops.winograd_f43_pack(weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch.ops.scratchdet.winograd_conv3x3(x, packed, bias, res, True)
        repacked = torch.ops.scratchdet.winograd_f43_pack(weight)
    assert out.dtype == torch.float32 and repacked.dtype == torch.float32
    assert torch.equal(repacked, packed)
    assert torch.equal(out, ops.winograd_conv3x3(x, packed, bias, res, True))


def test_opcheck():
    x, weight, bias, res = make(1, 4, 6, 5, 7)
    packed = ops.winograd_f43_pack(weight)
    torch.library.opcheck(torch.ops.scratchdet.winograd_conv3x3.default, (x, packed, bias, res, True),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.scratchdet.winograd_conv3x3.default,
                          (x.contiguous(memory_format=CL), packed, None, None, False),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.scratchdet.winograd_f43_pack.default, (weight,),
                          test_utils=("test_schema", "test_faketensor"))
    packed63 = ops.winograd_f63_pack(weight)
    torch.library.opcheck(torch.ops.scratchdet.winograd_conv3x3.default, (x, packed63, bias, res, True),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.scratchdet.winograd_f63_pack.default, (weight,),
                          test_utils=("test_schema", "test_faketensor"))


# ---------------------------------------------------------------- in the fused model
def test_fused_model_packs_once_and_repacks_after_a_weight_change():
    model = build_model("root_resnet_tiny", width=8, extra_channels=16).eval()
    fused = fuse(model)
    assert use_winograd(fused) > 0
    conv = next(m for m in fused.modules() if isinstance(m, FusedConvAct) and m.winograd)
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=CL)
    with torch.no_grad():
        ref = model.forward_raw(x)
        out = fused.forward_raw(x)
        first = conv._wino_packed
        assert first is not None
        fused.forward_raw(x)
        assert conv._wino_packed is first                 # packed once, reused
        conv.weight.mul_(2.0)                             # an in-place change repacks
        fused.forward_raw(x)
        assert conv._wino_packed is not first
    assert all(rel_err(o, r) < 1e-4 for o, r in zip(out, ref))
    clone = copy.deepcopy(fused)
    twin = next(m for m in clone.modules() if isinstance(m, FusedConvAct) and m.winograd)
    assert twin._wino_packed is None and twin.winograd    # copies drop the cache, keep the switch


def test_fused_model_falls_back_to_the_op_off_the_fast_case():
    model = build_model("root_resnet_tiny", width=8, extra_channels=16).eval()
    fused = fuse(model)
    use_winograd(fused)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():   # float64 is not Winograd's: the op runs it, exactly as without the switch
        out = fused.double().forward_raw(x)
        use_winograd(fused, False)
        plain = fused.forward_raw(x)
    for o, p in zip(out, plain):
        torch.testing.assert_close(o, p, rtol=0, atol=0)


def test_fused_conv_pickled_before_the_switches_existed_still_runs():
    import pickle

    conv = FusedConvAct(torch.randn(4, 3, 3, 3), torch.randn(4), [1, 1], [1, 1], [1, 1], 1, True)
    for name in ("winograd", "_wino_packed", "prepack", "_packed"):   # an object from an older version
        conv.__dict__.pop(name, None)
    old = pickle.loads(pickle.dumps(conv))
    assert not old.winograd and not old.prepack
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(old(x), torch.relu(F.conv2d(x, conv.weight, conv.bias, padding=1)))
        assert use_winograd(old) == 1
        assert rel_err(old(x), torch.relu(F.conv2d(x, conv.weight, conv.bias, padding=1))) < 5e-5
