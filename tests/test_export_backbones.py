"""The whole-detector export beyond the Root-ResNet presets: a timm backbone and a user module given to
``scratchdet.build_detector``, each exported with a dynamic batch to ONNX Runtime and OpenVINO and compared
with ``model.predict`` at batch 1 and 4 (same count and labels, boxes within 1e-4 relative, scores within
1e-5)."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import scratchdet
from scratchdet import runtime
from scratchdet.models import export

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytestmark = pytest.mark.slow

SETTINGS = dict(score_threshold=0.3, nms_threshold=0.45, top_k=60, keep_top_k=100)
# the head's initial background probability: low enough that each model has detections of every class on
# noise, high enough that the threshold and NMS, not keep_top_k, decide how many
BACKGROUND_PRIOR = {"timm": 0.6, "user": 0.45}


class UserPyramid(nn.Module):
    """A user backbone: strides 8 and 16, BatchNorm after every conv, a list of features."""

    def __init__(self, width: int = 8):
        super().__init__()

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
        self.stem = nn.Sequential(block(3, width, 2), block(width, width, 2), block(width, 2 * width, 2))
        self.down = block(2 * width, 4 * width, 2)

    def forward(self, x):
        c3 = self.stem(x)
        return [c3, self.down(c3)]


def _with_random_batch_norm_statistics(model: nn.Module) -> nn.Module:
    """Running statistics away from (0, 1) and affine terms away from (1, 0), so that an export that
    mishandled BatchNorm in eval mode could not pass."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model


def timm_model() -> nn.Module:
    pytest.importorskip("timm")
    torch.manual_seed(0)
    return scratchdet.build_model("timm:mobilenetv3_small_050", num_classes=4, image_size=64)


def user_model() -> nn.Module:
    torch.manual_seed(0)
    return scratchdet.build_detector(UserPyramid(), num_classes=4, image_size=64, extra_channels=16)


@pytest.fixture(scope="module", params=["timm", "user"])
def exported(request, tmp_path_factory):
    model = timm_model() if request.param == "timm" else user_model()
    model = _with_random_batch_norm_statistics(model)
    model.init_head(background_prior=BACKGROUND_PRIOR[request.param])   # every class above the threshold somewhere
    model.eval()
    out = tmp_path_factory.mktemp(f"detector_{request.param}")
    export.export_detector_onnx(model, str(out / "model.onnx"), dynamic=True, **SETTINGS)
    export.export_detector_openvino(model, str(out / "model.onnx"), str(out / "model.xml"))
    return request.param, model, out


def _images(count: int, seed: int) -> list[np.ndarray]:
    """uint8 HxWx3 images of several sizes (so predict resizes) with flat-free noise (no exact score ties)."""
    rng = np.random.default_rng(seed)
    shapes = [(64, 64, 3), (80, 50, 3), (37, 91, 3), (120, 120, 3)]
    return [rng.integers(0, 256, shapes[i % len(shapes)], dtype=np.uint8) for i in range(count)]


@pytest.mark.parametrize("fmt", ["model.onnx", "model.xml"])
@pytest.mark.parametrize("batch", [1, 4])
def test_export_equals_model_predict(exported, fmt, batch):
    kind, model, out = exported
    detector = runtime.load(out / fmt)
    assert detector.fixed_batch is None                         # --dynamic
    images = _images(batch, seed=batch)
    got = detector.predict(images, batch_size=batch)
    expected = model.predict(images, **SETTINGS)
    assert len(got) == len(expected) == batch
    total = 0
    for g, e in zip(got, expected):
        assert len(g["scores"]) == len(e["scores"]), (kind, fmt)
        assert g["labels"].tolist() == e["labels"].tolist(), (kind, fmt)
        np.testing.assert_allclose(g["scores"], e["scores"].numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(g["boxes"], e["boxes"].numpy(), rtol=1e-4, atol=1e-3)
        total += len(e["scores"])
    assert total >= 5 * batch                                   # a comparison with something in it


def test_raw_outputs_equal_the_eager_detections_at_batch_1_and_4(exported):
    """The graph itself at the input size, with the package's matching check (which also allows two scores
    closer than float noise to swap places), on one batch of 1 and one of 4."""
    _, model, out = exported
    for fmt in ("model.onnx", "model.xml"):
        detector = runtime.load(out / fmt)
        for batch in (1, 4):
            images = export.check_images(batch, model.input_size, seed=20 + batch)
            outputs = detector(images)
            assert outputs["boxes"].shape == (batch, SETTINGS["keep_top_k"], 4)
            got = [{"boxes": outputs["boxes"][i, :n], "scores": outputs["scores"][i, :n],
                    "labels": outputs["labels"][i, :n]} for i, n in enumerate(outputs["num_detections"].tolist())]
            summary = export.check_detections(export.reference_detections(model, images, SETTINGS), got, fmt)
            assert summary["detections"] >= 5 * batch


def test_metadata_of_the_user_and_timm_exports(exported):
    kind, model, out = exported
    images = _images(2, seed=9)
    for fmt in ("model.onnx", "model.xml"):
        meta = runtime.load(out / fmt).metadata
        assert meta["input_size"] == [64, 64] and meta["num_classes"] == 4
        assert {k: meta[k] for k in SETTINGS} == SETTINGS
        assert meta["variances"] == [float(v) for v in model.variances]
        # a pinned thread count (what the throughput benchmark uses) gives the same detections
        pinned = runtime.load(out / fmt, threads=1).predict(images)
        for a, b in zip(pinned, runtime.load(out / fmt).predict(images)):
            assert a["labels"].tolist() == b["labels"].tolist()
            np.testing.assert_allclose(a["scores"], b["scores"], rtol=0, atol=1e-6)
