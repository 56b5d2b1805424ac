"""SSD model family: geometry, BN flags, parameter counts, detector API, overfitting, compile/export."""
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import scratchdet
from scratchdet.models import BasicBlock, ConvNormAct, SSDRawOutputs, build_model, list_models
from scratchdet.models.priors import SSD300_FEATURE_SIZES, generate_priors, prior_sizes
from scratchdet.ops._extension import has_op

pytestmark = pytest.mark.filterwarnings("ignore:scratchdet. the compiled extension")

SSD300_PRESETS = ["root_resnet34_ssd300", "root_resnet18_ssd300", "resnet34_ssd300", "resnet18a_ssd300",
                  "resnet18b_ssd300", "resnet18c_ssd300", "vgg16_ssd300"]
TINY = dict(num_classes=3, image_size=64)         # 64 px: sources 16/8/4/2/1/1, 1536 priors


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one thread avoids oversubscription on shared CI machines."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _batch_targets(B, G=3, num_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(B, G, 2, generator=g) * 0.5
    wh = torch.rand(B, G, 2, generator=g) * 0.4 + 0.1
    return {"boxes": torch.cat([xy, xy + wh], -1), "labels": torch.randint(1, num_classes, (B, G), generator=g)}


def _source_shapes(model, images):
    """Spatial sizes of every tensor the heads see, captured by hooks."""
    shapes = []
    hooks = [h.register_forward_hook(lambda mod, inp, out: shapes.append(tuple(inp[0].shape[2:])))
             for h in model.loc_heads]
    with torch.no_grad():
        model.forward_raw(images)
    for h in hooks:
        h.remove()
    return shapes


# ------------------------------------------------------------------ registry and geometry
def test_list_models_has_every_preset():
    assert set(SSD300_PRESETS) | {"root_resnet_tiny"} <= set(list_models())


def test_unknown_name_and_argument_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build_model("nope")
    with pytest.raises(TypeError, match="unknown argument"):
        build_model("root_resnet_tiny", colour="red")


@pytest.mark.parametrize("name", SSD300_PRESETS)
def test_ssd300_sources_and_8732_priors(name):
    # width 8 keeps the forward cheap; the geometry does not depend on the width
    model = build_model(name, width=8, extra_channels=16).eval()
    assert model.priors.shape == (8732, 4)
    assert model.feature_sizes == [(s, s) for s in SSD300_FEATURE_SIZES]
    images = torch.randn(1, 3, 300, 300)
    assert _source_shapes(model, images) == [(s, s) for s in SSD300_FEATURE_SIZES]
    loc, logits = model.forward_raw(images)
    assert loc.shape == (1, 8732, 4) and logits.shape == (1, 8732, 21)


def test_full_width_root_resnet34_forward_shapes():
    model = build_model("root_resnet34_ssd300", num_classes=81).eval()
    with torch.no_grad():
        loc, logits = model.forward_raw(torch.randn(1, 3, 300, 300))
    assert loc.shape == (1, 8732, 4) and logits.shape == (1, 8732, 81)
    assert torch.isfinite(loc).all() and torch.isfinite(logits).all()


def test_tiny_preset_is_a_six_source_root_resnet_ssd():
    model = build_model("root_resnet_tiny")
    assert model.image_size == 128 and len(model.loc_heads) == 6
    assert model.feature_sizes == [(s, s) for s in (32, 16, 8, 4, 2, 1)]
    assert model.priors.shape[0] == 6132
    assert model.backbone.stem_name == "root"
    assert _source_shapes(model.eval(), torch.randn(1, 3, 128, 128)) == model.feature_sizes


def test_root_block_is_three_stride1_3x3_convs_then_2x2_pool():
    model = build_model("root_resnet18_ssd300")
    stem = model.backbone.stem
    assert len(stem) == 3
    for block in stem:
        assert isinstance(block, ConvNormAct) and block.act and isinstance(block.norm, nn.BatchNorm2d)
        assert block.conv.kernel_size == (3, 3) and block.conv.stride == (1, 1)
        assert block.conv.out_channels == 64
    x = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        full = stem.eval()(x)
    assert full.shape[2:] == (300, 300)                               # full resolution until the pool
    assert model.backbone._pool(full).shape[2:] == (150, 150)


@pytest.mark.parametrize("stem,first_stride,pooled", [("a", 2, True), ("b", 2, False), ("c", 1, True)])
def test_resnet18_stem_ablations(stem, first_stride, pooled):
    model = build_model(f"resnet18{stem}_ssd300")
    conv = model.backbone.stem[0].conv
    assert conv.kernel_size == (7, 7) and conv.stride == (first_stride, first_stride)
    x = torch.randn(1, 64, 20, 20)
    assert (model.backbone._pool(x).shape[-1] == 10) == pooled


def test_priors_voc_and_coco_presets_and_clipping():
    for preset in ("voc", "coco"):
        mins, maxs = prior_sizes(preset, 300)
        p = generate_priors(300, SSD300_FEATURE_SIZES, mins, maxs, ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)))
        assert p.shape == (8732, 4)
        assert p[0].tolist() == pytest.approx([4 / 300, 4 / 300, mins[0] / 300, mins[0] / 300])
    clipped = generate_priors(300, SSD300_FEATURE_SIZES, mins, maxs, ((2,),) * 6, clip=True)
    assert clipped.min() >= 0 and clipped.max() <= 1
    assert build_model("root_resnet_tiny", clip_priors=True).priors.max() <= 1
    assert prior_sizes("voc", 150)[0][0] == pytest.approx(15.0)        # scaled with the input size


# ------------------------------------------------------------------ BatchNorm flags
def _conv_blocks(module):
    return [m for m in module.modules() if isinstance(m, ConvNormAct)]


@pytest.mark.parametrize("bn_backbone", [True, False])
@pytest.mark.parametrize("bn_head", [True, False])
@pytest.mark.parametrize("name", ["vgg16_ssd300", "root_resnet18_ssd300"])
def test_bn_present_exactly_as_flags_say(name, bn_backbone, bn_head):
    model = build_model(name, width=8, extra_channels=16, bn_backbone=bn_backbone, bn_head=bn_head)
    body = _conv_blocks(model.backbone) + _conv_blocks(model.extras)
    heads = _conv_blocks(model.loc_heads) + _conv_blocks(model.conf_heads)
    assert body and len(heads) == 12
    assert all((b.norm is not None) == bn_backbone for b in body)
    assert all((b.norm is not None) == bn_head and not b.act for b in heads)
    # a conv has a bias exactly when no BN follows it
    assert all((b.conv.bias is None) == (b.norm is not None) for b in body + heads)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert n_bn == len(body) * bn_backbone + len(heads) * bn_head


def test_blocks_follow_the_fuse_contract():
    model = build_model("root_resnet_tiny")
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert blocks
    for b in blocks:
        assert b.conv1.act and not b.conv2.act
        assert b.shortcut is None or (isinstance(b.shortcut, ConvNormAct) and not b.shortcut.act)


# ------------------------------------------------------------------ parameter counts (README table)
def _readme_param_counts():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Models", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): int(m.group(2).replace(",", ""))
            for m in re.finditer(r"^\| `(\w+)` \| [^|]*\| ([\d,]+) \|", section, re.M)}


def test_parameter_counts_match_readme():
    documented = _readme_param_counts()
    assert set(documented) == set(list_models())
    for name, count in documented.items():
        model = build_model(name)                          # 21 classes (VOC), as the table says
        assert sum(p.numel() for p in model.parameters()) == count, name


# ------------------------------------------------------------------ detector API
def test_training_forward_returns_finite_losses_and_accepts_lists():
    torch.manual_seed(0)
    model = build_model("root_resnet_tiny", **TINY).train()
    images, targets = torch.randn(2, 3, 64, 64), _batch_targets(2)
    out = model(images, targets)
    assert set(out) == {"loss", "loss_loc", "loss_conf", "num_pos"}
    assert all(torch.isfinite(v).all() for v in out.values()) and out["num_pos"] > 0
    as_list = [{"boxes": targets["boxes"][i, :2 + i], "labels": targets["labels"][i, :2 + i]} for i in range(2)]
    out_list = model.eval()(images, as_list)
    assert torch.isfinite(out_list["loss"])
    with pytest.raises(ValueError, match="needs targets"):
        model.train()(images)
    with pytest.raises(ValueError, match="out of range"):
        model(images, {"boxes": targets["boxes"], "labels": torch.full((2, 3), 7)})


def test_loss_is_finite_with_zero_ground_truth():
    model = build_model("root_resnet_tiny", **TINY).train()
    images = torch.randn(2, 3, 64, 64, requires_grad=True)
    empty = {"boxes": torch.zeros(2, 4, 4), "labels": torch.zeros(2, 4, dtype=torch.int64)}
    out = model(images, empty)
    assert all(torch.isfinite(v) for v in out.values()) and int(out["num_pos"]) == 0
    out["loss"].backward()
    assert torch.isfinite(images.grad).all()
    out = model(images, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}] * 2)
    assert torch.isfinite(out["loss"])


def test_hard_negative_mining_keeps_three_negatives_per_positive():
    from scratchdet.models import MultiBoxLoss
    P, C = 50, 3
    priors = torch.tensor([[(i + 0.5) / P, 0.5, 1.0 / P, 0.5] for i in range(P)])
    gt = torch.tensor([[[0.0, 0.25, 2.0 / P, 0.75]]])                     # covers priors 0 and 1
    logits = torch.zeros(1, P, C)
    logits[0, :, 1] = torch.arange(P, dtype=torch.float32)              # later priors look less like background
    out = MultiBoxLoss()(torch.zeros(1, P, 4), logits, priors, gt, torch.tensor([[1]]))
    num_pos = int(out["num_pos"])
    ce = torch.nn.functional.cross_entropy(logits[0], torch.zeros(P, dtype=torch.int64), reduction="none")
    pos_ce = torch.nn.functional.cross_entropy(logits[0, :num_pos], torch.ones(num_pos, dtype=torch.int64),
                                               reduction="sum")
    hardest = ce[num_pos:].sort(descending=True).values[:3 * num_pos].sum()
    assert out["loss_conf"].item() == pytest.approx(((pos_ce + hardest) / num_pos).item(), rel=1e-5)


def test_eval_forward_returns_detect_output():
    model = build_model("root_resnet_tiny", **TINY).eval()
    boxes, scores, labels, num = model(torch.randn(2, 3, 64, 64))
    assert boxes.shape == (2, 200, 4) and scores.shape == (2, 200) and labels.shape == (2, 200)
    assert num.shape == (2,)


def test_predict_takes_pil_and_uint8_tensors_of_any_size():
    from PIL import Image
    torch.manual_seed(0)
    model = build_model("root_resnet_tiny", **TINY).train()
    pil = Image.new("RGB", (90, 50), (200, 10, 10))
    tensor = torch.randint(0, 256, (3, 40, 120), dtype=torch.uint8)
    out = model.predict([pil, tensor], score_threshold=0.0, keep_top_k=20)
    assert model.training                                              # the mode is restored
    assert len(out) == 2
    for res, (w, h) in zip(out, [(90, 50), (120, 40)]):
        assert set(res) == {"boxes", "scores", "labels"}
        k = res["boxes"].shape[0]
        assert 0 < k <= 20 and res["scores"].shape == (k,) and res["labels"].shape == (k,)
        assert (res["boxes"][:, 0::2] <= w + 1e-3).all() and (res["boxes"][:, 1::2] <= h + 1e-3).all()
        assert (res["labels"] >= 1).all() and (res["scores"][:-1] >= res["scores"][1:]).all()
    with pytest.raises(ValueError, match="C, H, W"):
        model.predict([torch.zeros(40, 40, dtype=torch.uint8)])


def test_small_model_overfits_one_batch():
    torch.manual_seed(0)
    model = build_model("root_resnet_tiny", **TINY, width=8, extra_channels=16).train()
    images, targets = torch.randn(2, 3, 64, 64), _batch_targets(2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(50):
        loss = model(images, targets)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() <= 0.2 * first, (first, loss.item())


@pytest.mark.parametrize("bn_head", [True, False])
def test_head_starts_at_the_background_prior(bn_head):
    torch.manual_seed(0)
    model = build_model("root_resnet_tiny", **{**TINY, "num_classes": 5}, bn_head=bn_head).eval()
    if bn_head:  # eval-mode BN with fresh running stats is nearly the identity: beta carries the prior
        assert all(torch.equal(h.norm.weight, torch.ones_like(h.norm.weight)) for h in model.conf_heads)
    loc, logits = model.forward_raw(torch.randn(2, 3, 64, 64))
    background = logits.softmax(-1)[..., 0]
    if not bn_head:  # small predictor weights: every prior starts at ~0.99 background, offsets ~0
        assert background.min() > 0.95 and background.max() < 0.999, (background.min(), background.max())
        assert loc.abs().max() < 2.0             # a Kaiming-initialised predictor gives ~10x that
    assert background.median() > 0.9
    off = build_model("root_resnet_tiny", **{**TINY, "num_classes": 5}, bn_head=bn_head, background_prior=0.0)
    bias = [h.conv.bias if h.norm is None else h.norm.bias for h in off.conf_heads]
    assert all(float(b.detach().abs().max()) == 0.0 for b in bias)
    with pytest.raises(ValueError, match="background_prior must be in"):
        build_model("root_resnet_tiny", **TINY, background_prior=1.0)


# ------------------------------------------------------------------ save / load
def test_save_load_round_trip(tmp_path):
    model = build_model("root_resnet_tiny", **TINY, zero_init_residual=True)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model.eval()
    path = tmp_path / "m.pt"
    scratchdet.save(model, path)
    loaded = scratchdet.load(path)
    assert loaded.config == model.config and not loaded.training
    assert torch.equal(loaded.priors, model.priors)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model.forward_raw(x), loaded.forward_raw(x)):
            assert torch.equal(a, b)
    rebuilt = build_model(**model.config)
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in model.parameters())


class _Evil:
    def __reduce__(self):
        import pathlib
        return (pathlib.Path.touch, (pathlib.Path(_Evil.marker),))


def test_load_refuses_code_and_reports_bad_files(tmp_path):
    model = build_model("root_resnet_tiny", **TINY)
    good = tmp_path / "good.pt"
    scratchdet.save(model, good)

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match=re.escape(str(truncated))):
        scratchdet.load(truncated)

    _Evil.marker = str(tmp_path / "pwned")
    evil = tmp_path / "evil.pt"
    torch.save({"format": "scratchdet.model", "version": 1, "config": {"name": "x"}, "state_dict": _Evil()}, evil)
    with pytest.raises(ValueError, match="evil.pt"):
        scratchdet.load(evil)
    assert not (tmp_path / "pwned").exists()

    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    with pytest.raises(ValueError, match="format tag"):
        scratchdet.load(plain)

    mismatched = tmp_path / "mismatched.pt"
    payload = torch.load(good, weights_only=True)
    payload["config"]["width"] = 32
    torch.save(payload, mismatched)
    with pytest.raises(ValueError, match="do not fit"):
        scratchdet.load(mismatched)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ValueError, match="garbage.pt"):
        scratchdet.load(garbage)


# ------------------------------------------------------------------ torch.compile / export
def test_compile_forward_raw_fullgraph():
    model = build_model("root_resnet_tiny", **TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(model.forward_raw, fullgraph=True, backend="eager")
    with torch.no_grad():
        for a, b in zip(compiled(x), model.forward_raw(x)):
            torch.testing.assert_close(a, b)


@pytest.mark.skipif(not has_op("detect"), reason="the detect kernel is not in this build: the reference "
                                                  "fallback has data-dependent loops, so no full graph")
def test_compile_eval_forward_fullgraph():
    model = build_model("root_resnet_tiny", **TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        got, want = compiled(x), model(x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(not has_op("match_priors"), reason="the match_priors kernel is not in this build")
def test_compile_training_loss_fullgraph():
    torch.manual_seed(0)
    model = build_model("root_resnet_tiny", **TINY).train()
    x, targets = torch.randn(2, 3, 64, 64), _batch_targets(2)
    compiled = torch.compile(lambda im, b, l: model(im, {"boxes": b, "labels": l}), fullgraph=True, backend="eager")
    out = compiled(x, targets["boxes"], targets["labels"])
    assert torch.isfinite(out["loss"])


def test_torch_export_forward_raw():
    model = build_model("root_resnet_tiny", **TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    exported = torch.export.export(SSDRawOutputs(model), (x,))
    with torch.no_grad():
        for a, b in zip(exported.module()(x), model.forward_raw(x)):
            torch.testing.assert_close(a, b)


def test_onnx_export_forward_raw(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    model = build_model("root_resnet_tiny", **TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    path = tmp_path / "ssd.onnx"
    program = torch.onnx.export(SSDRawOutputs(model), (x,), dynamo=True, input_names=["images"],
                                output_names=["loc", "logits"])
    program.save(str(path))
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [o.name for o in proto.graph.output] == ["loc", "logits"]
    from onnx.reference import ReferenceEvaluator
    loc, logits = ReferenceEvaluator(proto).run(None, {"images": x.numpy()})
    with torch.no_grad():
        want_loc, want_logits = model.forward_raw(x)
    torch.testing.assert_close(torch.from_numpy(loc), want_loc, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(logits), want_logits, rtol=1e-4, atol=1e-4)


def test_strided_1x1_conv_with_few_channels_trains_in_channels_last():
    """oneDNN's weight gradient of such a conv corrupts the heap on NHWC input (oneDNN#6035): the
    layer takes another path; a subprocess, so that a regression is a failed test, not a dead run."""
    import subprocess
    import sys

    code = """
import torch
from scratchdet.models import BasicBlock
torch.manual_seed(0)
for cin, cout in ((4, 8), (8, 8), (3, 8), (8, 16)):
    ref = BasicBlock(cin, cout, stride=2)
    cl = BasicBlock(cin, cout, stride=2).to(memory_format=torch.channels_last)
    cl.load_state_dict(ref.state_dict())
    x = torch.randn(4, cin, 64, 64)
    g = torch.randn(4, cout, 32, 32)          # a random projection: sum() through train-mode BN has no gradient
    for _ in range(3):
        (ref(x) * g).sum().backward()
        (cl(x.contiguous(memory_format=torch.channels_last)) * g).sum().backward()
    for (n, a), b in zip(ref.named_parameters(), cl.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-4 * float(a.grad.abs().max()), msg=n)
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, (proc.returncode, proc.stderr[-2000:])


def test_hard_negative_selection_equals_the_first_k_of_a_stable_sort():
    from scratchdet.models import MultiBoxLoss
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        B, P = 3, int(torch.randint(1, 60, (1,), generator=g))
        # integer values: many exact ties, where the lower index must win
        v = torch.randint(0, 5, (B, P), generator=g).float() if trial % 2 else torch.rand(B, P, generator=g)
        k = torch.randint(0, P + 1, (B, 1), generator=g)
        stable_rank = v.sort(dim=1, descending=True, stable=True).indices.argsort(dim=1)
        assert torch.equal(MultiBoxLoss.hardest(v, k), stable_rank < k)
