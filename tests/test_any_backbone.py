"""Any backbone from scratch: timm and user modules, norm choices, priors for any pyramid, fuse and export."""
import builtins
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import scratchdet
from scratchdet.data import synth
from scratchdet.models import ConvNormAct, build_detector, build_model, convert_norms
from scratchdet.models.fuse import FusedConvAct, fuse
from scratchdet.models.layers import Bias2d, group_count
from scratchdet.models.priors import ssd_prior_sizes

pytestmark = pytest.mark.filterwarnings("ignore:fuse. left unfused")
timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'scratchdet[timm]')")

TIMM_BACKBONES = ["resnet18", "mobilenetv3_small_100", "efficientnet_b0"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TwoLevel(nn.Module):
    """A user backbone: strides 8 and 16, BatchNorm after every conv, a dict of features."""

    def __init__(self, width=8):
        super().__init__()
        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
        self.stem = nn.Sequential(block(3, width, 2), block(width, width, 2), block(width, 2 * width, 2))
        self.down = block(2 * width, 4 * width, 2)

    def forward(self, x):
        c3 = self.stem(x)
        return {"c3": c3, "c4": self.down(c3)}


class Pyramid(nn.Module):
    """A user backbone with ``levels`` outputs, each a stride-2 conv of the last."""

    def __init__(self, levels, width=4):
        super().__init__()
        self.first = nn.Sequential(nn.Conv2d(3, width, 3, 4, 1), nn.ReLU())
        self.levels = nn.ModuleList(nn.Conv2d(width, width, 3, 2, 1) for _ in range(levels))

    def forward(self, x):
        x, out = self.first(x), []
        for level in self.levels:
            x = level(x)
            out.append(x)
        return out


def targets(B, num_classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(B, 3, 2, generator=g) * 0.5
    wh = torch.rand(B, 3, 2, generator=g) * 0.4 + 0.1
    return {"boxes": torch.cat([xy, xy + wh], -1), "labels": torch.randint(1, num_classes, (B, 3), generator=g)}


def train_steps(model, steps=3, size=None, lr=0.01):
    h, w = model.input_size if size is None else size
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    losses = []
    model.train()
    for i in range(steps):
        out = model(torch.randn(2, 3, h, w, generator=g), targets(2, model.num_classes, seed=i))
        opt.zero_grad()
        out["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert all(torch.isfinite(torch.tensor(losses))), losses
    return losses


def randomise_batch_norms(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


def check_fuse_and_export(model, tmp_path):
    model = randomise_batch_norms(model).eval()
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    fused = fuse(model)
    report = fused.fuse_report
    assert report.folded_batch_norms == n_bn > 0, report.unfused
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert any(isinstance(m, FusedConvAct) for m in fused.backbone.modules())
    x = torch.randn(1, 3, *model.input_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for a, b in zip(fused.forward_raw(x), model.forward_raw(x)):
            assert rel_err(a, b) < 1e-4
        fast = scratchdet.FastPredictor(model)
        for a, b in zip(fast(x)[:2], model(x)[:2]):
            assert a.shape == b.shape
    from scratchdet.models.export import export_onnx

    path = export_onnx(model, str(tmp_path / "m.onnx"))
    ort = pytest.importorskip("onnxruntime")
    loc, logits = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
    with torch.no_grad():
        want_loc, want_logits = model.forward_raw(x)
    torch.testing.assert_close(torch.from_numpy(loc), want_loc, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(logits), want_logits, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ timm and user backbones
@pytest.mark.parametrize("name", TIMM_BACKBONES)
def test_timm_backbone_builds_trains_fuses_and_exports(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(f"timm:{name}", num_classes=4, image_size=96)
    ref = timm.create_model(name, features_only=True, pretrained=False)
    strides = [r for r in ref.feature_info.reduction() if r >= 8]
    # sources: the timm levels of stride >= 8, then extras down to 1x1
    assert model.feature_sizes[:len(strides)] == [(-(-96 // s), -(-96 // s)) for s in strides]
    assert model.feature_sizes[-1] == (1, 1)
    assert model.priors.shape[0] == sum(a * h * w for a, (h, w) in zip(model.anchors_per_location,
                                                                      model.feature_sizes))
    loc, logits = model.eval().forward_raw(torch.randn(2, 3, 96, 96))
    assert loc.shape == (2, model.priors.shape[0], 4) and logits.shape[-1] == 4
    train_steps(model)
    check_fuse_and_export(model, tmp_path)
    path = tmp_path / "timm.pt"
    scratchdet.save(model, path)
    loaded = scratchdet.load(path)
    assert loaded.config["name"] == f"timm:{name}" and loaded.config == model.config


def test_user_backbone_any_pyramid_and_save_load(tmp_path):
    torch.manual_seed(0)
    model = build_detector(TwoLevel(), num_classes=3, image_size=128, extra_channels=16)
    assert model.feature_sizes == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert model.config["backbone"].endswith("TwoLevel") and model.config["arch"] == "custom"
    train_steps(model)
    check_fuse_and_export(model, tmp_path)
    path = tmp_path / "custom.pt"
    scratchdet.save(model, path)
    with pytest.raises(ValueError, match="user backbone .*TwoLevel.*scratchdet.load\\(path, backbone=...\\)"):
        scratchdet.load(path)
    loaded = scratchdet.load(path, backbone=TwoLevel())
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        for a, b in zip(loaded.forward_raw(x), model.eval().forward_raw(x)):
            assert torch.equal(a, b)
    with pytest.raises(TypeError, match="a list \\(or dict\\) of feature maps"):
        build_detector(NoFeatures(), image_size=32)
    with pytest.raises(ValueError, match=r"must be \[B, C, H, W\]"):
        build_detector(nn.Flatten(), image_size=32)
    with pytest.raises(ValueError, match="finest first"):
        build_detector(Reversed(), image_size=64)


class NoFeatures(nn.Module):
    def forward(self, x):
        return None


class Reversed(TwoLevel):
    def forward(self, x):
        return list(super().forward(x).values())[::-1]


def test_timm_missing_is_a_clear_error_naming_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(ImportError, match=r"needs timm: pip install 'scratchdet\[timm\]'"):
        build_model("timm:resnet18")


def test_unknown_timm_model_and_bad_options():
    with pytest.raises(ValueError, match="unknown timm model 'resnet_nope'"):
        build_model("timm:resnet_nope")
    with pytest.raises(ValueError, match="norm must be one of bn, syncbn, gn, none"):
        build_model("root_resnet_tiny", norm="layernorm")
    with pytest.raises(ValueError, match="extras must be 'residual' or 'ssd'"):
        build_model("timm:resnet18", image_size=64, extras="fpn")


# ------------------------------------------------------------------ normalisation choices
@pytest.mark.parametrize("norm", ["gn", "none"])
def test_gn_and_no_norm_presets_train_with_finite_loss(norm):
    torch.manual_seed(0)
    model = build_model("root_resnet_tiny", num_classes=3, image_size=64, width=8, extra_channels=16, norm=norm)
    blocks = [m for m in model.modules() if isinstance(m, ConvNormAct)]
    if norm == "gn":
        assert all(isinstance(b.norm, nn.GroupNorm) and b.norm.num_groups == group_count(b.conv.out_channels)
                   for b in blocks)
    else:
        assert all(b.norm is None and b.conv.bias is not None for b in blocks)
    train_steps(model, steps=4)


def test_norm_overrides_per_part_and_the_paper_switches():
    m = build_model("root_resnet_tiny", width=8, extra_channels=16, norm="gn", head_norm="bn")
    assert isinstance(m.backbone.stem[0].norm, nn.GroupNorm) and isinstance(m.extras[0].conv1.norm, nn.GroupNorm)
    assert isinstance(m.loc_heads[0].norm, nn.BatchNorm2d)
    m = build_model("vgg16_ssd300", width=8, bn_backbone=False, bn_head=True)
    assert m.backbone.features[0].norm is None and isinstance(m.conf_heads[0].norm, nn.BatchNorm2d)
    m = build_model("root_resnet_tiny", width=8, extra_channels=16, backbone_norm="none", extra_norm="gn")
    assert m.backbone.stem[0].norm is None and isinstance(m.extras[0].conv1.norm, nn.GroupNorm)
    assert isinstance(m.conf_heads[0].norm, nn.BatchNorm2d)


def test_a_user_modules_batch_norms_convert_in_place():
    for norm, kind in (("gn", nn.GroupNorm), ("none", Bias2d), ("syncbn", nn.SyncBatchNorm)):
        module = TwoLevel()
        assert convert_norms(module, norm) == 4
        assert sum(isinstance(m, kind) for m in module.modules()) == 4
        assert not any(type(m) is nn.BatchNorm2d for m in module.modules())
    model = build_model("timm:mobilenetv3_small_100", image_size=64, norm="gn")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    train_steps(model, steps=2)
    assert group_count(24) == 24 and group_count(40) == 20 and group_count(64) == 32 and group_count(7) == 7


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _syncbn_worker(rank, world, port, root, out_dir, result_dir):
    import torch.distributed as dist

    from scratchdet.engine.config import make_config
    from scratchdet.engine.distributed import DistInfo
    from scratchdet.engine.trainer import Trainer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        info = DistInfo(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"))
        cfg = make_config("demo", {"data_root": root, "out_dir": out_dir, "batch_size": 2, "max_iters": 1,
                                   "workers": 0, "model_overrides": {"width": 8, "extra_channels": 16,
                                                                     "image_size": 64, "norm": "syncbn"}})
        try:
            Trainer(cfg, dist_info=info, progress=False)
            message = "no error"
        except ValueError as exc:
            message = str(exc)
        with open(os.path.join(result_dir, f"rank{rank}.txt"), "w") as f:
            f.write(message)
    finally:
        dist.destroy_process_group()


def test_syncbn_converts_and_is_refused_under_cpu_ddp(tmp_path):
    model = build_model("root_resnet_tiny", width=8, extra_channels=16, image_size=64, norm="syncbn")
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules()) > 0
    train_steps(model, steps=1)                         # one process: plain BatchNorm arithmetic
    fused = fuse(randomise_batch_norms(model).eval())   # folds like BatchNorm
    assert fused.fuse_report.unfused == []
    import torch.multiprocessing as mp

    root = str(tmp_path / "data")
    synth.generate(root, 8, 2, seed=0, image_size=64)
    mp.spawn(_syncbn_worker, args=(2, _free_port(), root, str(tmp_path / "run"), str(tmp_path)), nprocs=2)
    for rank in range(2):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert "norm 'syncbn' synchronises BatchNorm statistics over GPUs under DDP" in message
        assert "use norm 'bn'" in message


# ------------------------------------------------------------------ priors for any pyramid
@pytest.mark.parametrize("levels", [2, 7])
def test_priors_for_a_pyramid_of_any_depth_at_a_non_square_input(levels):
    h, w = 192, 256
    model = build_detector(Pyramid(levels), num_classes=2, image_size=(h, w), num_extras=0)
    sizes = model.feature_sizes
    assert len(sizes) == levels and sizes[0] == (24, 32)
    priors = model.priors.double()
    assert priors.shape[0] == sum(a * fh * fw for a, (fh, fw) in zip(model.anchors_per_location, sizes))
    assert (priors[:, :2] > 0).all() and (priors[:, :2] < 1).all()         # every centre inside the image
    min_sizes, max_sizes = ssd_prior_sizes(levels, (h, w), 0.2, 0.9)
    assert min_sizes[0] == pytest.approx(0.2 * 192) and min_sizes[-1] == pytest.approx(0.9 * 192)
    start = 0
    for k, ((fh, fw), a) in enumerate(zip(sizes, model.anchors_per_location)):
        block = priors[start:start + fh * fw * a].reshape(fh, fw, a, 4)
        start += fh * fw * a
        # the min-size prior is square in pixels with the configured side; centres step by the stride
        assert (block[..., 0, 2] * w).allclose(torch.tensor(min_sizes[k], dtype=torch.float64))
        assert (block[..., 0, 3] * h).allclose(torch.tensor(min_sizes[k], dtype=torch.float64))
        assert (block[..., 1, 2] * w).allclose(torch.tensor((min_sizes[k] * max_sizes[k]) ** 0.5, dtype=torch.float64))
        assert block[0, 0, 0, 0] * w == pytest.approx(w / fw / 2) and block[0, 0, 0, 1] * h == pytest.approx(h / fh / 2)
    x = torch.randn(1, 3, h, w)
    loc, logits = model.eval().forward_raw(x)
    assert loc.shape[1] == priors.shape[0]
    # predict resizes any image to (h, w) and maps boxes back to its pixels
    out = model.predict([torch.randint(0, 256, (3, 50, 90), dtype=torch.uint8)], score_threshold=0.0)[0]
    assert (out["boxes"][:, 0::2] <= 90 + 1e-3).all() and (out["boxes"][:, 1::2] <= 50 + 1e-3).all()


def test_paper_presets_keep_their_8732_priors():
    for name in ("root_resnet34_ssd300", "vgg16_ssd300", "resnet18a_ssd300"):
        assert build_model(name, width=8, extra_channels=16).priors.shape == (8732, 4)
    from ssd300_priors import ssd300_priors
    ours = build_model("root_resnet18_ssd300", width=8, extra_channels=16, clip_priors=True).priors
    torch.testing.assert_close(ours, ssd300_priors(), rtol=0, atol=1e-6)


# ------------------------------------------------------------------ the command line
def test_cli_trains_a_timm_backbone_then_evaluates_it(tmp_path):
    data = str(tmp_path / "data")
    synth.generate(data, 8, 4, seed=0, image_size=64)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = [sys.executable, "-m", "scratchdet"]
    proc = subprocess.run(run + ["train", "--config", "demo", "--data", data, "--out", str(tmp_path / "run"),
                                 "--no-progress", "--set", "model=timm:mobilenetv3_small_100", "--set",
                                 "max_iters=2", "--set", "batch_size=4", "--set", "workers=0", "--set",
                                 "ckpt_every=0", "--set", 'model_overrides={"image_size": 64}'],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout[proc.stdout.index("{"):])["iteration"] == 2
    weights = str(tmp_path / "run" / "model_final.pt")
    assert scratchdet.load(weights).config["timm_model"] == "mobilenetv3_small_100"
    proc = subprocess.run(run + ["eval", "--weights", weights, "--data", data, "--split", "val"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mAP" in proc.stdout
