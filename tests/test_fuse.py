import ast
import copy
import warnings

import pytest
import torch
import torch.nn as nn

import scratchdet
from scratchdet.models import BasicBlock, ConvNormAct, build_model, list_models
from scratchdet.models.fast_inference import FastPredictor
from scratchdet.models import onednn
from scratchdet.models import conv_backends
from scratchdet.models.conv_backends import use_onednn_prepack, use_tuned_backends, use_winograd
from scratchdet.models.fuse import fold_batch_norm, fuse
from scratchdet.models.fused_layers import FusedBasicBlock, FusedConvAct

needs_onednn = pytest.mark.skipif(not onednn.available(), reason="this torch build has no oneDNN")


def randomise_batch_norms(model, seed=0):
    """Non-trivial running statistics and affine parameters, so folding has something to fold."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return model


def small(name, **kw):
    """The preset at its native input size and layout, narrow so that CPU tests stay fast."""
    return randomise_batch_norms(build_model(name, width=8, extra_channels=16, **kw)).eval()


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


def count_bn(model):
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _package_imports(module) -> tuple[set[str], set[str]]:
    """The scratchdet.models modules ``module`` imports at its top, and those it imports anywhere else."""
    tree = ast.parse(open(module.__file__).read())
    top = {node for node in tree.body if isinstance(node, ast.ImportFrom)}
    names: dict[bool, set[str]] = {True: set(), False: set()}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names[node in top] |= {node.module} if node.module else {a.name for a in node.names}
    return names[True], names[False]


def test_fused_layers_and_backends_import_one_way_at_the_top():
    """conv_backends <- fused_layers <- fuse: no cycle, no import inside a function."""
    from scratchdet.models import fuse as fuse_module, fused_layers

    imports = {m.__name__.rsplit(".", 1)[1]: _package_imports(m) for m in (conv_backends, fused_layers, fuse_module)}
    assert all(not local for _, local in imports.values()), imports
    assert not imports["conv_backends"][0] & {"fuse", "fused_layers"}
    assert "conv_backends" in imports["fused_layers"][0] and "fuse" not in imports["fused_layers"][0]
    assert "fused_layers" in imports["fuse"][0]
    assert fuse_module.FusedConvAct is FusedConvAct      # old pickles name scratchdet.models.fuse.FusedConvAct


def test_fold_batch_norm_matches_conv_then_bn():
    gen = torch.Generator().manual_seed(5)
    conv = torch.nn.Conv2d(6, 10, 3, padding=1, bias=True)
    bn = torch.nn.BatchNorm2d(10).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(10, generator=gen))
        bn.running_var.copy_(torch.rand(10, generator=gen) + 0.1)
        bn.weight.copy_(torch.randn(10, generator=gen))
        bn.bias.copy_(torch.randn(10, generator=gen))
    x = torch.randn(2, 6, 8, 8, generator=gen)
    w, b = fold_batch_norm(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
    with torch.no_grad():
        folded = torch.nn.functional.conv2d(x, w, b, padding=1)
        torch.testing.assert_close(folded, bn(conv(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list_models())
def test_every_preset_matches_unfused_and_folds_every_batch_norm(name):
    model = small(name)
    fused = fuse(model)
    report = fused.fuse_report
    assert report.unfused == [] and report.folded_batch_norms == count_bn(model) > 0
    assert count_bn(fused) == 0
    assert not any(isinstance(m, (ConvNormAct, BasicBlock)) for m in fused.modules())
    n_blocks = sum(isinstance(m, BasicBlock) for m in model.modules())
    assert sum(isinstance(m, FusedBasicBlock) for m in fused.modules()) == n_blocks
    x = torch.randn(1, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = model.forward_raw(x), fused.forward_raw(x)
        out_cl = fused.forward_raw(x.contiguous(memory_format=torch.channels_last))
    for r, o, o_cl in zip(ref, out, out_cl):
        assert rel_err(o, r) < 1e-4 and rel_err(o_cl, r) < 1e-4
    if onednn.available():  # the prepacked oneDNN path of the same fused model
        assert use_onednn_prepack(fused) == len(report.fused) + sum(
            (m.shortcut is not None) + 1 for m in fused.modules() if isinstance(m, FusedBasicBlock))
        with torch.no_grad():
            packed = fused.forward_raw(x.contiguous(memory_format=torch.channels_last))
        for r, p in zip(ref, packed):
            assert rel_err(p, r) < 1e-4
    # the Winograd path of the same model: every 3x3 stride-1 conv switched, the rest left alone
    eligible = [m for m in fused.modules() if isinstance(m, FusedConvAct) and m.weight.shape[2:] == (3, 3)
                and m.stride == [1, 1] and m.padding == [1, 1] and m.dilation == [1, 1] and m.groups == 1]
    assert use_winograd(fused) == len(eligible) > 0
    assert all(m.winograd == (m in eligible) for m in fused.modules() if isinstance(m, FusedConvAct))
    with torch.no_grad():
        wino = fused.forward_raw(x.contiguous(memory_format=torch.channels_last))
    for r, w in zip(ref, wino):
        assert rel_err(w, r) < 1e-4
    assert use_winograd(fused, False) == 0 and not any(getattr(m, "winograd", False) for m in fused.modules())


@needs_onednn
def test_onednn_prepack_reuses_weights_across_shapes_and_falls_back_where_it_must():
    model = small("root_resnet_tiny")
    fused = fuse(model)
    use_onednn_prepack(fused)
    conv = fused.backbone.stem[0]
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for batch, memory_format in [(1, torch.channels_last), (4, torch.contiguous_format), (2, torch.channels_last)]:
            x = torch.randn(batch, 3, 64, 64, generator=g).contiguous(memory_format=memory_format)
            ref, out = model.forward_raw(x), fused.forward_raw(x)
            assert all(rel_err(o, r) < 1e-4 for o, r in zip(out, ref))
        first = conv._packed
        assert first is not None
        fused.forward_raw(torch.randn(1, 3, 64, 64))
        assert conv._packed is first                      # packed once, reused
        conv.weight.mul_(1.0)                             # an in-place change repacks
        fused.forward_raw(torch.randn(1, 3, 64, 64))
        assert conv._packed is not first
    # deep copies and pickles drop the opaque packed weight and repack on first use
    clone = copy.deepcopy(fused)
    assert clone.backbone.stem[0]._packed is None and clone.backbone.stem[0].prepack
    # what the packed path does not take goes to the op, which names the problem
    with pytest.raises(RuntimeError, match="conv_bn_act"):
        fused.forward_raw(torch.randn(1, 5, 64, 64))
    with torch.no_grad():                                  # float64 is not packed: the op's result
        x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
        with pytest.raises(RuntimeError, match="conv_bn_act"):
            fused.forward_raw(x)
    use_onednn_prepack(fused, enabled=False)
    assert not any(m.prepack for m in fused.modules() if isinstance(m, FusedConvAct))


def test_original_model_untouched():
    model = small("root_resnet_tiny")
    before = copy.deepcopy(model.state_dict())
    fused = fuse(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert count_bn(model) > 0 and not any(isinstance(m, FusedConvAct) for m in model.modules())
    assert all(p.data_ptr() not in {q.data_ptr() for q in model.parameters()} for p in fused.parameters())


def test_training_mode_is_refused_and_fused_model_is_inference_only():
    model = small("root_resnet_tiny").train()
    with pytest.raises(RuntimeError, match=r"fuse: the model is in training mode .*call model.eval\(\)"):
        fuse(model)
    model.eval()
    model.backbone.stages[0].train()  # one submodule left in training mode is refused too
    with pytest.raises(RuntimeError, match="training mode"):
        fuse(model)
    fused = fuse(model.eval())
    with pytest.raises(RuntimeError, match="inference-only"):
        fused.train()
    fused.eval()  # allowed


def test_fused_model_keeps_the_api_and_detections():
    model = small("root_resnet_tiny")
    fused = fuse(model)
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for a, b in zip(model(x), fused(x)):
            assert a.shape == b.shape
    img = (torch.rand(3, 90, 70, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8)
    res = fused.predict([img])
    assert len(res) == 1 and set(res[0]) == {"boxes", "scores", "labels"}


def test_unfusable_patterns_are_left_unfused_and_reported():
    block = ConvNormAct(4, 8, 3)
    block.conv = nn.Conv2d(4, 8, 3, padding=1, bias=False, padding_mode="reflect")
    model = nn.Sequential(block, ConvNormAct(8, 8, 3), nn.BatchNorm2d(8), BasicBlock(8, 8)).eval()
    randomise_batch_norms(model)
    with pytest.warns(UserWarning, match="left unfused: 0 .*padding_mode='reflect'.*2 \\(BatchNorm outside"):
        fused = fuse(model)
    names = [n for n, _ in fused.fuse_report.unfused]
    assert names == ["0", "2"] and fused.fuse_report.fused == ["1", "3"]
    assert isinstance(fused[0], ConvNormAct) and isinstance(fused[3], FusedBasicBlock)
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        assert rel_err(fused(x), model(x)) < 1e-5


def test_conv_without_batch_norm_is_fused_with_its_bias():
    model = nn.Sequential(ConvNormAct(3, 6, 3, norm="none", act=True), ConvNormAct(6, 6, 1, norm="none", act=False)).eval()
    fused = fuse(model)
    assert all(isinstance(m, FusedConvAct) for m in fused) and fused[0].bias is not None
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert rel_err(fused(x), model(x)) < 1e-6


def _train_briefly(model, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for _ in range(steps):
        images = torch.randn(4, 3, model.image_size, model.image_size, generator=g)
        xy = torch.rand(4, 3, 2, generator=g) * 0.6
        boxes = torch.cat([xy, xy + 0.1 + torch.rand(4, 3, 2, generator=g) * 0.3], -1)
        labels = torch.randint(1, model.num_classes, (4, 3), generator=g)
        loss = model(images, {"boxes": boxes, "labels": labels})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_detections_identical_on_a_briefly_trained_model():
    torch.manual_seed(0)
    model = _train_briefly(build_model("root_resnet_tiny", num_classes=4), steps=30)
    fused = fuse(model)
    images = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        loc, logits = model.forward_raw(images)
        floc, flogits = fused.forward_raw(images)
        assert rel_err(floc, loc) < 1e-4 and rel_err(flogits, logits) < 1e-4
        ref = model(images)
        out = fused(images)
        predictors = [FastPredictor(model, onednn_prepack=False, winograd=False),
                      FastPredictor(model, onednn_prepack=False, winograd=True),
                      FastPredictor(model)]     # tuned Winograd / oneDNN-prepacked where available
        fast_runs = [(p(images), p.model.forward_raw(p._prepare(images))[1]) for p in predictors]
    assert int(ref[3].sum()) > 0
    # The fused model: the same detections. Folding BN changes the logits by ~1e-6, so two
    # detections whose scores tie to that precision may trade places: compare the score order
    # exactly and the rows as a set (sorted by label and box) within 1e-5.
    assert torch.equal(ref[3], out[3])
    torch.testing.assert_close(out[1], ref[1], rtol=0, atol=1e-5)
    for b in range(images.shape[0]):
        n = int(ref[3][b])

        def rows(det):
            r = torch.cat([det[2][b, :n, None].double(), det[0][b, :n].double(), det[1][b, :n, None].double()], 1)
            key = (r[:, :5] * 1e4).round()
            order = sorted(range(n), key=lambda i: tuple(key[i].tolist()))
            return r[order]

        torch.testing.assert_close(rows(out), rows(ref), rtol=0, atol=1e-5)
    # The fast path runs channels_last convs, Winograd F(4x4, 3x3) and oneDNN's kernels, which round
    # differently on each CPU (AVX-512 or AVX2 kernels, FMA or not, blocking): its scores are held to
    # a bound derived from its logits, not to a fixed number that holds on one machine.
    # - Logits: the fast network keeps fuse()'s promise, raw outputs within 1e-4 relative of the
    #   unfused model's. Winograd's transforms amplify fp32 rounding (B^T's entries reach 5, A^T's 8,
    #   G's denominators 24): about 1e-5 relative per layer against ~1e-6 for a direct conv
    #   (tests/test_winograd_conv3x3.py), and the layers' errors do not add up coherently, so a few
    #   1e-6 at the end (3e-6 on Root-ResNet-34) on any ISA: 1e-4 leaves room, a wrong kernel does not.
    # - Scores: softmax is 1/2-Lipschitz in the max norm, |ds_c| = s_c |dz_c - sum_j s_j dz_j|
    #   <= 2 s_c (1 - s_c) max|dz| <= max|dz| / 2 (first order; dz ~ 1e-5 makes the second order
    #   negligible), and the rows are sorted by score, which moves no score pair further apart than
    #   the unsorted ones. fp32 softmax rounds each score by a few ulp of 1: 1e-6 covers it.
    #   (An AVX2-only Zen 3 measured 1.7e-5 at one of 600 scores, above the 1e-5 this used to be.)
    # Near-equal scores may swap places, so compare per image the count, the scores in order and
    # the labels as a multiset.
    for fast, fast_logits in fast_runs:
        assert rel_err(fast_logits, logits) < 1e-4
        score_tol = float((fast_logits - logits).abs().max()) / 2 + 1e-6
        assert torch.equal(ref[3], fast[3])
        torch.testing.assert_close(fast[1], ref[1], rtol=0, atol=score_tol)
        for b in range(images.shape[0]):
            n = int(ref[3][b])
            assert torch.equal(torch.bincount(fast[2][b, :n]), torch.bincount(ref[2][b, :n]))


class FakeClock:
    """A clock (as time.perf_counter) that only the backends advance, by a fixed cost per call."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("fast", ["winograd", "winograd-f63", "direct"])
def test_tuned_convs_keep_the_fastest_backend_per_shape(monkeypatch, fast):
    # Make two of the three backends 30 ms slower on a fake clock, so the verdict does not depend on
    # how busy the machine is: every tuned conv must keep the third, each (weight shape, input shape,
    # residual) must be timed once, and the network's outputs stay those of the unfused model.
    model = small("root_resnet_tiny")
    direct = "onednn-prepacked" if onednn.available() else "conv_bn_act"
    fast_name = direct if fast == "direct" else fast
    calls = {"winograd": 0, "winograd-f63": 0, direct: 0}
    clock = FakeClock()

    def wrap(name, fn):
        def run(conv, x, residual):
            if conv.tune:       # the untuned convs (stride 2, 1x1) run the direct backend too
                calls[name] += 1
                clock.now += 0.001 if name == fast_name else 0.031
            return fn(conv, x, residual)
        return run

    monkeypatch.setattr(conv_backends, "_BACKENDS", {**conv_backends._BACKENDS, **{
        name: wrap(name, conv_backends._BACKENDS[name]) for name in calls}})
    predictor = FastPredictor(model)
    assert predictor.conv_backend == f"tuned(winograd|winograd-f63|{direct})+{direct}"
    assert use_tuned_backends(predictor.model, clock=clock) > 0     # the same convs, timed on the fake clock
    assert predictor.tactics() == {}
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model.forward_raw(x)
        got = predictor.model.forward_raw(predictor._prepare(x))
    table = predictor.tactics()
    tuned = [m for m in predictor.model.modules() if isinstance(m, FusedConvAct) and m.tune]
    assert len(tuned) > len(table) > 0            # repeated shapes share one timing
    assert set(table.values()) == {fast_name}
    per_tuning = 1 + conv_backends.TUNING_ROUNDS
    for name in calls:
        if name != fast_name:
            assert calls[name] == per_tuning * len(table)
    for w, g in zip(want, got):
        assert rel_err(g, w) < 1e-4
    calls.update(dict.fromkeys(calls, 0))
    with torch.no_grad():
        again = predictor.model.forward_raw(predictor._prepare(x))   # decided: one call per conv
    assert calls[fast_name] == sum(calls.values()) == len(tuned)
    for a, g in zip(again, got):
        assert torch.equal(a, g)
    with torch.no_grad():                          # a new batch shape is timed anew
        predictor.model.forward_raw(predictor._prepare(x[:1]))
    assert len(predictor.tactics()) == 2 * len(table)
    # only the winner's packed weight is kept
    for m in tuned:
        assert (m._wino_packed is not None) == (fast == "winograd")
        assert (m._wino63_packed is not None) == (fast == "winograd-f63")
        if fast != "direct":
            assert m._packed is None


def test_a_conv_serving_two_batch_sizes_keeps_both_winners_packs(monkeypatch):
    # F(6x6, 3x3) wins at batch 1, F(4x4, 3x3) at batch 2 (fake clock): after both are tuned every
    # tuned conv holds both packed weights, and switching batch sizes repacks nothing.
    model = small("root_resnet_tiny")
    clock = FakeClock()
    packs = {"f43": 0, "f63": 0}

    def timed(name, fn):
        def run(conv, x, residual):
            if conv.tune:
                fast = "winograd-f63" if x.shape[0] == 1 else "winograd"
                clock.now += 0.001 if name == fast else 0.031
            return fn(conv, x, residual)
        return run

    def counted(name, fn):
        def pack(weight):
            packs[name] += 1
            return fn(weight)
        return pack

    monkeypatch.setattr(conv_backends, "_BACKENDS", {name: timed(name, fn)
                                                     for name, fn in conv_backends._BACKENDS.items()})
    monkeypatch.setattr(conv_backends.ops, "winograd_f43_pack", counted("f43", conv_backends.ops.winograd_f43_pack))
    monkeypatch.setattr(conv_backends.ops, "winograd_f63_pack", counted("f63", conv_backends.ops.winograd_f63_pack))
    predictor = FastPredictor(model)
    use_tuned_backends(predictor.model, clock=clock)
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for batch in (x, x[:1]):                                   # tune both batch sizes
            predictor.model.forward_raw(predictor._prepare(batch))
    table = predictor.tactics()
    assert {name for key, name in table.items() if key[1][0] == 1} == {"winograd-f63"}
    assert {name for key, name in table.items() if key[1][0] == 2} == {"winograd"}
    tuned = [m for m in predictor.model.modules() if isinstance(m, FusedConvAct) and m.tune]
    assert all(m._wino_packed is not None and m._wino63_packed is not None for m in tuned)
    packs.update(dict.fromkeys(packs, 0))
    with torch.no_grad():
        for batch in (x, x[:1], x, x[:1]):
            predictor.model.forward_raw(predictor._prepare(batch))
    assert packs == {"f43": 0, "f63": 0}


def test_tuned_choices_survive_a_deep_copy_and_share_one_table():
    predictor = FastPredictor(small("root_resnet_tiny"))
    predictor(torch.randn(1, 3, 128, 128))
    copied = copy.deepcopy(predictor.model)
    tuned = [m for m in copied.modules() if isinstance(m, FusedConvAct) and m.tune]
    assert conv_backends.tactics(copied) == predictor.tactics()
    assert len({id(m._tactics) for m in tuned}) == 1
    assert all(m._clock is None for m in tuned)        # FastPredictor times with time.perf_counter


def test_fast_predictor_cpu_matches_predict():
    model = small("root_resnet_tiny")
    predictor = FastPredictor(model)
    assert predictor.model.backbone.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    direct = "onednn-prepacked" if onednn.available() else "conv_bn_act"
    assert predictor.conv_backend == f"tuned(winograd|winograd-f63|{direct})+{direct}"
    assert FastPredictor(model, onednn_prepack=False, winograd=False).conv_backend == "conv_bn_act"
    assert FastPredictor(model, onednn_prepack=False, winograd=True).conv_backend == "winograd+conv_bn_act"
    assert not any(getattr(m, "winograd", False) for m in model.modules())   # the caller's model untouched
    with pytest.raises(ValueError, match="onednn_prepack=True is for float32 on CPU"), \
            pytest.warns(UserWarning, match="meant for CUDA"):
        FastPredictor(model, dtype=torch.float64, onednn_prepack=True)
    with pytest.raises(ValueError, match="winograd=True is for float32 on CPU"), \
            pytest.warns(UserWarning, match="meant for CUDA"):
        FastPredictor(model, dtype=torch.float64, winograd=True)
    imgs = [(torch.rand(3, 100, 120, generator=torch.Generator().manual_seed(i)) * 255).to(torch.uint8)
            for i in range(2)]
    ref = model.predict(imgs)
    out = predictor.predict(imgs)
    for r, o in zip(ref, out):
        assert torch.equal(r["labels"], o["labels"])
        # Winograd's rounding (F(6x6, 3x3): ~1e-5 of a layer's scale) reaches the boxes: 1e-4 relative,
        # the bound the exported detector is held to as well
        torch.testing.assert_close(o["boxes"], r["boxes"], rtol=1e-4, atol=1e-3)
    assert scratchdet.FastPredictor is FastPredictor
    with pytest.raises(ValueError, match="cuda_graph=True needs a model on a CUDA device"):
        FastPredictor(model, cuda_graph=True)


def test_fuse_is_the_package_api():
    assert scratchdet.fuse is fuse


# ---------------------------------------------------------------- CUDA (run by the GPU check script)
# Tolerances for the reduced-precision fast path, against the fp32 unfused model, as max|d| / max|ref|
# of the raw outputs: fp16 2e-2, bf16 8e-2 (bf16 keeps 8 mantissa bits; errors add up over ~40 convs).
CUDA_TOL = {torch.float16: 2e-2, torch.bfloat16: 8e-2}


@pytest.fixture(autouse=True)
def _full_fp32_on_cuda(request):
    """The "fused fp32 equals unfused fp32 within 1e-4" checks need convolutions in real fp32:
    cuDNN's default TF32 (Ampere and later) is ~1e-3 off on its own."""
    if "cuda" in request.keywords:
        request.getfixturevalue("no_tf32")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_reduced_precision_fast_path(dtype):
    model = small("root_resnet18_ssd300").cuda()
    x = torch.randn(2, 3, 300, 300, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    with torch.no_grad():
        ref = model.forward_raw(x)
        fused32 = fuse(model).forward_raw(x)
        pred = FastPredictor(model, dtype=dtype)
        out = pred.model.forward_raw(pred._prepare(x))
    for r, f32, o in zip(ref, fused32, out):
        assert rel_err(f32, r) < 1e-4
        assert o.dtype == dtype and rel_err(o.float(), r) < CUDA_TOL[dtype]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_graph_capture_matches_eager(dtype):
    model = small("root_resnet_tiny").cuda()
    x = torch.randn(2, 3, 128, 128, device="cuda")
    plain = FastPredictor(model, dtype=dtype)
    graphed = FastPredictor(model, dtype=dtype, cuda_graph=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # detect may fall back to a network-only graph
        a, b = plain(x), graphed(x)
        c = graphed(x * 0.5)             # replay with new data
    assert graphed.graph_scope in ("network+detect", "network")
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    for u, v in zip(plain(x * 0.5), c):
        assert torch.equal(u, v)
