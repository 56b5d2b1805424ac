"""`scratchdet export --half`: float16 weights, float32 computation, each file checked against the eager
model with float16-rounded weights, with the float32 tolerances (the float16 storage is lossless)."""
import os

import numpy as np
import pytest
import torch

import scratchdet
from scratchdet import runtime
from scratchdet.cli import main
from scratchdet.models import export

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_store_initializers_as_half_is_lossless_and_skips_what_float16_cannot_hold():
    from onnx import TensorProto, helper, numpy_helper
    import onnxruntime as ort

    exact = np.array([0.5, -2.0, 0.125, 1024.0], np.float32)
    inexact = np.array([0.1, 1e-9, 7e4, 3.0], np.float32)         # 0.1 rounds; 1e-9 underflows; 7e4 overflows
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "exact"], ["y"]), helper.make_node("Add", ["y", "inexact"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(exact, "exact"), numpy_helper.from_array(inexact, "inexact")])
    assert export._store_initializers_as_half(graph) == 1
    kinds = {i.name: i.data_type for i in graph.initializer}
    assert kinds == {"exact.fp16": TensorProto.FLOAT16, "inexact": TensorProto.FLOAT}
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model)
    x = np.array([1, 2, 3, 4], np.float32)
    (z,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert np.array_equal(z, x + exact + inexact)


def test_round_weights_to_half_rounds_weights_and_statistics_not_priors():
    torch.manual_seed(0)
    model = scratchdet.build_model("root_resnet_demo", num_classes=3, image_size=64).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(getattr(m, "running_var", None), torch.Tensor):
                m.running_var.fill_(0.1)                     # not a float16 value
    rounded = export.round_weights_to_half(model)
    for (name, a), (_, b) in zip([*model.named_parameters(), *model.named_buffers()],
                                 [*rounded.named_parameters(), *rounded.named_buffers()]):
        if not a.is_floating_point():
            continue
        if name == "priors":
            assert torch.equal(a, b)
        else:
            assert torch.equal(b, a.half().float()), name
    var = [m.running_var for m in rounded.modules() if isinstance(getattr(m, "running_var", None), torch.Tensor)]
    assert var and all(torch.equal(v, torch.full_like(v, float(np.float16(0.1)))) for v in var)
    assert model.config == rounded.config


def test_half_needs_the_whole_detector(tmp_path, capsys):
    assert main(["export", "--weights", "x.pt", "--out", str(tmp_path), "--no-nms", "--half"]) == 2
    assert "--half applies to the whole-detector export" in capsys.readouterr().err


@pytest.mark.slow
def test_half_export_command_onnx_and_openvino(tmp_path, capsys):
    pytest.importorskip("openvino")
    torch.manual_seed(0)
    model = scratchdet.build_model("root_resnet_demo", num_classes=4, image_size=64)
    model.init_head(background_prior=0.4)          # detections of every class on noise, not all of them at K
    model.eval()
    weights = tmp_path / "w.pt"
    scratchdet.save(model, weights)
    out = tmp_path / "exp"
    settings = dict(score_threshold=0.25, nms_threshold=0.45, top_k=100, keep_top_k=60)
    code = main(["export", "--weights", str(weights), "--out", str(out), "--format", "onnx,openvino", "--half",
                 "--dynamic", "--score-threshold", "0.25", "--top-k", "100", "--keep-top-k", "60"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert stdout.count("checked against the eager model with float16-rounded weights") == 2
    assert stdout.count("float16 weights moved scores by up to") == 2
    assert sorted(os.listdir(out)) == ["model.bin", "model.onnx", "model.xml"]

    # the files hold float16 weights: every network weight in the ONNX graph, about half the bytes in the IR
    graph = onnx.load(str(out / "model.onnx")).graph
    weights_in_graph = [i for i in graph.initializer if i.name.startswith("model.") and np.prod(i.dims) > 1]
    assert weights_in_graph and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights_in_graph)
    n_weights = sum(p.numel() for p in model.parameters())
    assert os.path.getsize(out / "model.bin") < 0.6 * 4 * n_weights
    assert os.path.getsize(out / "model.onnx") < 0.7 * 4 * n_weights

    rounded = export.round_weights_to_half(model)
    images = [np.random.default_rng(i).integers(0, 256, (64 + 9 * i, 80, 3), dtype=np.uint8) for i in range(4)]
    expected = rounded.predict(images, **settings)
    for fmt in ("model.onnx", "model.xml"):
        detector = runtime.load(out / fmt)
        assert detector.metadata["weights_dtype"] == "float16"
        got = detector.predict(images, batch_size=4)
        total = 0
        for g, e in zip(got, expected):
            assert g["labels"].tolist() == e["labels"].tolist(), fmt
            np.testing.assert_allclose(g["scores"], e["scores"].numpy(), rtol=0, atol=1e-5)
            np.testing.assert_allclose(g["boxes"], e["boxes"].numpy(), rtol=1e-4, atol=2e-3)
            total += len(e["scores"])
        assert total >= 20
