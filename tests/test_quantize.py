"""scratchdet.quantize: the int8 convs against the float reference of their arithmetic, calibration
determinism, save / load, the CLI, and the refusals."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import scratchdet
from scratchdet.cli import main
from scratchdet.models import build_model
from scratchdet.structures.errors import ConfigError
from scratchdet.models import quantize as q
from scratchdet.models.fused_layers import FusedConvAct
from scratchdet.structures.errors import CheckpointError, UserError

pytestmark = pytest.mark.skipif(q.engine_available() is not None, reason=str(q.engine_available()))


def _conv(cin, cout, k, stride, relu, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(cout, cin, k, k, generator=g) * 0.2
    return FusedConvAct(w, torch.randn(cout, generator=g) * 0.1, (stride, stride), (k // 2, k // 2), (1, 1), 1,
                        relu)


@pytest.mark.parametrize("k,stride,relu", [(3, 1, True), (3, 2, False), (1, 1, False), (1, 2, True)])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("emit_uint8", [False, True])
def test_int8_conv_matches_the_float_reference(k, stride, relu, residual, emit_uint8):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 16, 11, 11, generator=g) * 2).contiguous(memory_format=torch.channels_last)
    conv = q.Int8Conv(_conv(16, 24, k, stride, relu), (-5.0, 6.0), (-3.0, 4.0), (-8.0, 9.0))
    conv.emit_uint8 = emit_uint8
    h = (11 - 1) // stride + 1
    res = torch.randn(2, 24, h, h, generator=g).contiguous(memory_format=torch.channels_last) if residual else None
    # the input as uint8 (a producer's output) and as fp32 (quantised inside)
    qx = q.quantize_activation(x, *conv.in_q)
    for inp in (x, qx):
        out = conv(inp, None if res is None else res.clone())
        ref = q.reference_int8_conv(conv, inp, res)
        if emit_uint8:
            assert out.dtype == torch.uint8
            # integer accumulation is exact; the requantisation's float rounding may differ by one step
            assert (out.int() - ref.int()).abs().max() <= 1
            assert (out.int() != ref.int()).float().mean() < 0.01
        else:
            assert out.dtype == torch.float32
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_int8_conv_keeps_a_shared_residual_intact():
    conv = q.Int8Conv(_conv(8, 8, 3, 1, True), (-1.0, 1.0), (0.0, 2.0), (0.0, 4.0))
    conv.emit_uint8 = True
    x = torch.rand(1, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    res = q.quantize_activation(torch.rand(1, 8, 6, 6) * 2, *conv.res_q).contiguous(memory_format=torch.channels_last)
    before = res.clone()
    conv(x, res)
    assert torch.equal(res, before)          # oneDNN's sum post-op writes into its accumulator: cloned first


def test_weights_are_per_channel_symmetric_int8():
    w = torch.randn(5, 3, 3, 3)
    w[2] *= 100
    qw, scale = q.quantize_weight(w)
    assert qw.dtype == torch.int8 and scale.shape == (5,)
    assert (qw.abs().flatten(1).amax(1) == q.weight_levels()).all()     # 127, or 63 where int8 convs saturate
    torch.testing.assert_close(qw.float() * scale.view(-1, 1, 1, 1), w, atol=float(scale.max()) / 2 + 1e-6, rtol=0)


@pytest.fixture(scope="module")
def demo_model():
    torch.manual_seed(0)
    model = build_model("root_resnet_demo", num_classes=4)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    model.class_names = ["a", "b", "c"]
    return model.eval()


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (90 + 7 * i, 120, 3), dtype=np.uint8) for i in range(n)]


def test_predictor_follows_the_fp32_model(demo_model):
    predictor = scratchdet.quantize(demo_model, _images(6))
    assert predictor.report.int8 and predictor.report.uint8_outputs
    assert predictor.report.float_kept == []                         # every conv int8, by default
    assert scratchdet.quantize(demo_model, _images(2), float_layers=["first"]).report.float_kept == [
        "backbone.stem.0"]
    batch, _ = demo_model.preprocess(_images(3, seed=1))
    with torch.inference_mode():
        loc, logits = demo_model.forward_raw(batch)
        qloc, qlogits = predictor.forward_raw(batch)
    for a, b in ((loc, qloc), (logits, qlogits)):
        assert a.shape == b.shape and b.dtype == torch.float32
        assert (a - b).abs().max() < 0.05 * a.abs().max()
    results = predictor.predict(_images(3, seed=1), score_threshold=0.0, batch_size=2)
    assert len(results) == 3 and set(results[0]) == {"boxes", "scores", "labels"}


def test_calibration_is_deterministic(demo_model):
    a = scratchdet.quantize(demo_model, _images(4), observer="percentile")
    b = scratchdet.quantize(demo_model, _images(4), observer="percentile")
    assert a.ranges == b.ranges
    batch, _ = demo_model.preprocess(_images(2, seed=2))
    for x, y in zip(a.forward_raw(batch), b.forward_raw(batch)):
        assert torch.equal(x, y)


def test_save_load_round_trip(demo_model, tmp_path, monkeypatch):
    predictor = scratchdet.quantize(demo_model, _images(4), float_layers=["first", "heads"])
    path = tmp_path / "q.pt"
    predictor.save(path)
    assert q.is_quantized_file(path) and not q.is_quantized_file(tmp_path / "missing.pt")
    loaded = scratchdet.load_quantized(path)
    assert loaded.report == predictor.report and loaded.class_names == ["a", "b", "c"]
    batch, _ = demo_model.preprocess(_images(2, seed=3))
    for x, y in zip(predictor(batch), loaded(batch)):
        assert torch.equal(x, y)
    monkeypatch.setattr(q, "engine_available", lambda: "no oneDNN int8 here")
    with pytest.raises(UserError, match="no oneDNN int8 here"):
        scratchdet.load_quantized(path)


def test_refusals(demo_model, tmp_path):
    with pytest.raises(UserError, match="no calibration images"):
        scratchdet.quantize(demo_model, [])
    with pytest.raises(UserError, match="observer"):
        scratchdet.quantize(demo_model, _images(1), observer="kl")
    with pytest.raises(UserError, match="float_layers"):
        scratchdet.quantize(demo_model, _images(1), float_layers=["nope"])
    with pytest.raises(UserError, match="training mode"):
        scratchdet.quantize(demo_model.train(), _images(1))
    demo_model.eval()
    with pytest.raises(UserError, match="scratchdet detector"):
        scratchdet.quantize(nn.Conv2d(3, 3, 3), _images(1))
    scratchdet.save(demo_model, tmp_path / "fp32.pt")
    with pytest.raises(CheckpointError, match="not a scratchdet int8 file"):
        scratchdet.load_quantized(tmp_path / "fp32.pt")


def test_refuses_a_model_off_the_cpu(demo_model, monkeypatch):
    meta = build_model("root_resnet_demo", num_classes=4).eval().to("meta")
    with pytest.raises(UserError, match="runs on CPU"):
        scratchdet.quantize(meta, _images(1))


def test_cli_quantize_eval_detect(demo_model, tmp_path, capsys):
    from PIL import Image
    weights = tmp_path / "fp32.pt"
    scratchdet.save(demo_model, weights)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, image in enumerate(_images(3)):
        Image.fromarray(image).save(calib / f"{i}.png")
    out = tmp_path / "q.pt"
    assert main(["quantize", "--weights", str(weights), "--calib", str(calib), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "int8 convs" in printed and "on this CPU (" in printed and "fp32 FastPredictor" in printed, printed
    assert main(["detect", "--int8", "--weights", str(out), "--out", str(tmp_path / "det"), "--no-save",
                 str(calib / "0.png")]) == 0
    assert main(["detect", "--int8", "--weights", str(weights), "--out", str(tmp_path / "det2"),
                 str(calib / "0.png")]) == 2
    assert "is not an int8 file" in capsys.readouterr().err
    assert main(["detect", "--weights", str(out), "--out", str(tmp_path / "det3"), str(calib / "0.png")]) == 2
    assert "is an int8 file (scratchdet quantize): add --int8" in capsys.readouterr().err
    assert main(["quantize", "--weights", str(weights), "--calib", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "calibration folder" in capsys.readouterr().err


def test_cli_eval_scores_the_int8_file(tmp_path, capsys):
    data = tmp_path / "synth"
    assert main(["synth", "--out", str(data), "--train", "4", "--val", "3", "--workers", "1"]) == 0
    classes = (data / "classes.txt").read_text().split()
    torch.manual_seed(0)
    model = build_model("root_resnet_demo", num_classes=len(classes) + 1).eval()
    model.class_names = classes
    weights, out = tmp_path / "fp32.pt", tmp_path / "q.pt"
    scratchdet.save(model, weights)
    assert main(["quantize", "--weights", str(weights), "--calib", str(data), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", "--weights", str(out), "--data", str(data), "--split", "val", "--device", "cpu"]) == 0
    assert "mAP" in capsys.readouterr().out


def test_max_pool_passes_uint8_on(demo_model):
    # quantisation is monotonic, so pooling the uint8 tensor is pooling then quantising, exactly
    x = (torch.randn(2, 8, 17, 17) * 3).contiguous(memory_format=torch.channels_last)
    scale, zp = 0.05, 60
    with q._Uint8Pooling():
        pooled = torch.nn.functional.max_pool2d(q.quantize_activation(x, scale, zp), 3, 2, 1)
    assert pooled.dtype == torch.uint8 and pooled.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(pooled, q.quantize_activation(torch.nn.functional.max_pool2d(x, 3, 2, 1), scale, zp))
    predictor = scratchdet.quantize(demo_model, _images(4))
    stem_out = predictor.model.backbone.stem[2]            # read only by the max-pool, then int8 convs
    assert predictor.model.uint8_pooling and stem_out.emit_uint8
    batch, _ = demo_model.preprocess(_images(2, seed=4))
    pooled_uint8 = predictor.forward_raw(batch)
    stem_out.emit_uint8 = False                              # fp32 through the pool, quantised after it
    pooled_float = predictor.forward_raw(batch)
    for a, b in zip(pooled_uint8, pooled_float):             # the requantisation's rounding, nothing more
        assert (a - b).abs().max() <= 0.02 * b.abs().max()


def test_int8_predictor_tiles_like_the_others(demo_model):
    """predict(tile=...) goes through the one tiling path: an image no larger than a tile gives the
    plain result exactly, a larger one returns boxes inside the image, and bad tiling is refused."""
    predictor = scratchdet.quantize(demo_model, _images(4))
    small = _images(1, seed=3)[0]                    # 90 x 120
    plain = predictor.predict([small], score_threshold=0.0)[0]
    tiled = predictor.predict([small], score_threshold=0.0, tile=128)[0]
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(torch.as_tensor(plain[key]), torch.as_tensor(tiled[key]))
    large = np.random.default_rng(5).integers(0, 256, (300, 410, 3), dtype=np.uint8)
    boxes = torch.as_tensor(predictor.predict([large], score_threshold=0.0, tile=128, tile_overlap=0.25)[0]["boxes"])
    assert len(boxes) and boxes[:, 2].max() <= 410 + 1e-3 and boxes[:, 3].max() <= 300 + 1e-3
    with pytest.raises(ConfigError, match="tile_overlap"):
        predictor.predict([large], tile=128, tile_overlap=1.5)


@pytest.mark.parametrize("int8_s,fp32_s,slower", [(0.5, 1.0, False), (1.2, 1.0, True)])
def test_the_speed_check_says_when_int8_does_not_pay(demo_model, monkeypatch, int8_s, fp32_s, slower):
    from scratchdet.commands.quantize import speed_line
    from scratchdet.engine import timing

    calls = []

    def fake(runners, rounds, **kw):
        calls.extend(run() for run in runners.values())      # both networks really run once
        return {"int8": [int8_s] * rounds, "fp32": [fp32_s] * rounds}

    monkeypatch.setattr(timing, "time_interleaved", fake)
    predictor = scratchdet.quantize(demo_model, _images(2))
    line = speed_line(demo_model, predictor, _images(1)[0])
    assert len(calls) == 2 and all(len(out) == 2 for out in calls)
    assert f"{fp32_s / int8_s:.2f}x" in line and ("int8 is slower than fp32 here" in line) is slower, line


def test_weight_levels_make_the_int8_conv_exact_on_inputs_that_overflow_int16_pairs():
    """Where oneDNN's int8 conv adds u8 x s8 pairs in int16 (no VNNI), 2 x 255 x 127 saturates: the
    weights then get 7 bits. Whatever this CPU does, the conv at weight_levels() is exact on the
    worst case (every input 255, every weight at the limit), and the probe agrees with a direct look."""
    levels = q.weight_levels()
    assert levels in (127, 63)
    assert q._int8_conv_is_exact(levels)
    assert q._int8_conv_is_exact(127) == (levels == 127)
    conv = q.Int8Conv(_conv(32, 8, 3, 1, False), (0.0, 255.0), None, (-1e6, 1e6))
    assert int(conv.qweight.abs().max()) == levels
    x = torch.full((1, 32, 6, 6), 255, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    assert torch.allclose(conv(x), q.reference_int8_conv(conv, x), rtol=1e-6, atol=1e-3)


def test_quantize_weight_levels():
    w = torch.randn(4, 3, 3, 3)
    for levels in (127, 63):
        qw, scale = q.quantize_weight(w, levels)
        assert int(qw.abs().amax()) == levels and torch.all(qw.abs().flatten(1).amax(1) == levels)
        assert torch.allclose(qw.float() * scale.view(-1, 1, 1, 1), w, atol=float(scale.max()) / 2 + 1e-7)
    with pytest.raises(ValueError, match="levels must be in"):
        q.quantize_weight(w, 128)
