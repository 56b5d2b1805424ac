"""The whole-detector export (uint8 images -> detections) in ONNX Runtime and OpenVINO, its metadata, the
check that refuses a wrong file, the `scratchdet export` command and the torch-free runtime loader."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import scratchdet
from scratchdet import ops, runtime
from scratchdet.models.transform import preprocess
from scratchdet.models import export
from scratchdet.models.export import ExportCheckError, check_detections, reference_detections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = dict(score_threshold=0.25, nms_threshold=0.45, top_k=100, keep_top_k=80)


def demo_model() -> torch.nn.Module:
    """root_resnet_demo (the smallest Root-ResNet preset) at random init, with a background prior low
    enough that every class scores above the threshold somewhere."""
    torch.manual_seed(0)
    model = scratchdet.build_model("root_resnet_demo", num_classes=4)
    model.init_head(background_prior=0.55)
    model.class_names = ["cat", "dog", "bird"]
    return model.eval()


def noise_images(count: int, seed: int, size=(128, 128)) -> np.ndarray:
    """uint8 [count, 3, H, W] noise: no two priors see the same pixels, so scores do not tie exactly."""
    return np.random.default_rng(seed).integers(0, 256, (count, 3, *size), dtype=np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One dynamic-batch export, ONNX then OpenVINO, of the demo model with SETTINGS."""
    out = tmp_path_factory.mktemp("detector")
    model = demo_model()
    onnx_summary = export.export_detector_onnx(model, str(out / "model.onnx"), dynamic=True, **SETTINGS)
    ov_summary = export.export_detector_openvino(model, str(out / "model.onnx"), str(out / "model.xml"))
    return model, out, onnx_summary, ov_summary


def _unpadded(outputs: dict) -> list[dict]:
    return [{"boxes": outputs["boxes"][i, :n], "scores": outputs["scores"][i, :n], "labels": outputs["labels"][i, :n]}
            for i, n in enumerate(outputs["num_detections"].tolist())]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["model.onnx", "model.xml"])
@pytest.mark.parametrize("batch", [1, 4])
def test_exported_detector_equals_the_eager_detections(exported, fmt, batch):
    model, out, _, _ = exported
    detector = runtime.load(out / fmt)
    assert detector.fixed_batch is None                 # --dynamic: any batch
    images = noise_images(batch, seed=10 + batch)
    outputs = detector(images)
    K = SETTINGS["keep_top_k"]
    # the fixed-shape format: dtypes, shapes, padding
    assert outputs["num_detections"].dtype == np.int64 and outputs["num_detections"].shape == (batch,)
    assert outputs["boxes"].dtype == np.float32 and outputs["boxes"].shape == (batch, K, 4)
    assert outputs["scores"].dtype == np.float32 and outputs["scores"].shape == (batch, K)
    assert outputs["labels"].dtype == np.int64 and outputs["labels"].shape == (batch, K)
    for i, n in enumerate(outputs["num_detections"].tolist()):
        assert (outputs["scores"][i, n:] == 0).all() and (outputs["boxes"][i, n:] == 0).all()
        assert (outputs["labels"][i, n:] == 0).all() and (outputs["labels"][i, :n] >= 1).all()
        assert (np.diff(outputs["scores"][i, :n]) <= 0).all()                    # best first
        assert (outputs["boxes"][i, :n] >= 0).all() and (outputs["boxes"][i, :n] <= 128).all()
    expected = reference_detections(model, images, SETTINGS)
    summary = check_detections(expected, _unpadded(outputs), fmt)
    # a meaningful comparison: detections of several classes, some images below K (NMS and the threshold
    # decide the count, not only the padding)
    labels = np.concatenate([e["labels"] for e in expected])
    assert summary["detections"] == len(labels) >= 10 * batch
    assert len(set(labels.tolist())) == 3
    if batch == 4:
        assert min(len(e["scores"]) for e in expected) < K


@pytest.mark.slow
def test_export_checks_itself_and_reports(exported):
    _, out, onnx_summary, ov_summary = exported
    for summary in (onnx_summary, ov_summary):
        assert summary["images"] == 4 and summary["detections"] > 40
        assert summary["max_score_error"] <= export.SCORE_TOLERANCE
    # the temporary names are gone after the rename
    assert sorted(os.listdir(out)) == ["model.bin", "model.onnx", "model.xml"]


@pytest.mark.slow
def test_metadata_round_trips(exported):
    model, out, _, _ = exported
    expected = {
        "format": "scratchdet.detector.v1", "scratchdet_version": scratchdet.__version__, "input_size": [128, 128],
        "input_dtype": "uint8", "mean": list(model.config["mean"]), "std": list(model.config["std"]),
        "resize": "bilinear", "num_classes": 4, "class_names": ["cat", "dog", "bird"], "variances": [0.1, 0.2],
        **SETTINGS,
    }
    onnx_meta = export.read_onnx_metadata(str(out / "model.onnx"))
    for meta in (onnx_meta, runtime.load(out / "model.onnx").metadata, runtime.load(out / "model.xml").metadata):
        assert {k: meta[k] for k in expected} == expected
    assert onnx_meta == runtime.load(out / "model.xml").metadata


@pytest.mark.slow
def test_openvino_export_refuses_a_mismatch_and_writes_nothing(exported, tmp_path, monkeypatch):
    model, out, _, _ = exported
    real = export.reference_detections

    def off_by_a_bit(*args, **kwargs):
        dets = real(*args, **kwargs)
        dets[1]["scores"][2] += 1e-3
        return dets
    monkeypatch.setattr(export, "reference_detections", off_by_a_bit)
    with pytest.raises(ExportCheckError, match=r"openvino: image 1, detection 2 of the eager model \(label \d"):
        export.export_detector_openvino(model, str(out / "model.onnx"), str(tmp_path / "m.xml"))
    assert os.listdir(tmp_path) == []


def _run_post_graph(priors, loc, logits, settings, input_size=(96, 128)):
    import onnx
    import onnxruntime as ort

    graph = export.detector_graph(priors, (0.1, 0.2), input_size, logits.shape[2], settings, "batch",
                                  [onnx.helper.make_opsetid("", 18)], 10)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(export.DETECTOR_OUTPUTS, session.run(list(export.DETECTOR_OUTPUTS),
                                                          {"loc": loc.numpy(), "logits": logits.numpy()})))


@pytest.mark.parametrize("P,C,settings", [
    (12, 3, dict(score_threshold=0.05, nms_threshold=0.5, top_k=5, keep_top_k=40)),     # K > P*(C-1): padded
    (700, 6, dict(score_threshold=0.1, nms_threshold=0.3, top_k=50, keep_top_k=60)),
    (700, 6, dict(score_threshold=-1.0, nms_threshold=0.0, top_k=700, keep_top_k=5000)),
])
def test_post_processing_graph_equals_ops_detect(P, C, settings):
    """The ONNX post-processing alone against scratchdet.ops.detect on random raw outputs, with
    non-finite logits and boxes that must give nothing."""
    g = torch.Generator().manual_seed(P + C)
    priors = torch.cat([torch.rand(P, 2, generator=g), 0.05 + 0.4 * torch.rand(P, 2, generator=g)], 1)
    loc = torch.randn(3, P, 4, generator=g)
    logits = 2 * torch.randn(3, P, C, generator=g)
    logits[0, 1, 2] = float("nan")
    logits[1, 3, 0] = float("inf")
    loc[2, 4, 3] = float("nan")                       # a NaN box: no detection even with finite scores
    loc[2, 5, 2] = 200.0                              # exp overflows: an infinite box, clipped to [0, 1]
    out = _run_post_graph(priors, loc, logits, settings)
    boxes, scores, labels, num = ops.detect(loc, logits, priors, (0.1, 0.2), clip=True, **settings)
    K = settings["keep_top_k"]
    assert out["boxes"].shape == (3, K, 4) and out["labels"].shape == (3, K)
    assert out["num_detections"].tolist() == num.tolist() and num.min() > 0
    expected = [{"boxes": boxes[i, :n].numpy() * np.array([128, 96, 128, 96], np.float32),
                 "scores": scores[i, :n].numpy(), "labels": labels[i, :n].numpy()} for i, n in enumerate(num.tolist())]
    check_detections(expected, _unpadded(out), "post-processing graph")
    for i, n in enumerate(num.tolist()):
        assert (out["labels"][i, n:] == 0).all() and (out["scores"][i, n:] == 0).all()
        assert (out["boxes"][i, n:] == 0).all() and np.isfinite(out["boxes"][i]).all()


def test_check_detections_names_the_worst_detection():
    rng = np.random.default_rng(0)
    det = {"boxes": rng.uniform(0, 128, (5, 4)).astype(np.float32),
           "scores": np.linspace(0.9, 0.5, 5, dtype=np.float32), "labels": np.array([1, 2, 1, 3, 2])}
    same = {k: v.copy() for k, v in det.items()}
    same["boxes"][0, 0] += 1e-4                       # within 1e-4 relative + 1e-3 px
    same["scores"][1] += 5e-6
    summary = check_detections([det], [same], "x")
    assert summary["detections"] == 5 and summary["max_score_error"] == pytest.approx(5e-6, rel=0.1)
    swapped = {k: v[[1, 0, 2, 3, 4]] for k, v in same.items()}     # order is not compared, the match is
    check_detections([det], [swapped], "x")
    bad_box = {k: v.copy() for k, v in det.items()}
    bad_box["boxes"][3, 2] += 0.05
    with pytest.raises(ExportCheckError, match=r"x: image 0, detection 3 of the eager model \(label 3, score 0\.6"):
        check_detections([det], [bad_box], "x")
    bad_label = {k: v.copy() for k, v in det.items()}
    bad_label["labels"][4] = 1
    with pytest.raises(ExportCheckError, match="detection 4"):
        check_detections([det], [bad_label], "x")
    fewer = {k: v[:4] for k, v in det.items()}
    with pytest.raises(ExportCheckError, match=r"image 0 has 4 detections, the eager model 5; .*eager detection #4"):
        check_detections([det], [fewer], "x")


def test_uint8_normalisation_matches_the_package_preprocess():
    """The graph's x * scale - offset gives the floats preprocess() gives, bit for bit."""
    model = demo_model()
    image = np.random.default_rng(3).integers(0, 256, (97, 143, 3), dtype=np.uint8)
    pixels = runtime.resize_to_input(runtime.to_rgb(image), model.input_size)
    ours = export.UInt8Normalise(model).normalise(torch.from_numpy(pixels)[None])
    theirs, sizes = preprocess([image], **model.input_spec)
    assert sizes == [(143, 97)]
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("shape", [(40, 50), (40, 50, 1), (40, 50, 3), (40, 50, 4)])
def test_runtime_resize_matches_the_package_preprocess(shape, tmp_path):
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    spec = dict(image_size=(96, 64), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), resize="bilinear")
    expected, _ = preprocess([image], **spec)
    scale, offset = export._normalise_constants(spec["mean"], spec["std"])
    path = tmp_path / "im.png"
    Image.fromarray(image if image.ndim == 2 or image.shape[2] != 1 else image[:, :, 0]).save(path)
    for source in (image, Image.fromarray(np.asarray(runtime.to_rgb(image))), str(path)):
        pixels = runtime.resize_to_input(runtime.to_rgb(source), (96, 64)).astype(np.float32)
        assert pixels.shape == (3, 96, 64)
        ours = pixels * scale[:, None, None] - offset[:, None, None]
        if isinstance(source, str) and image.ndim == 3 and image.shape[2] == 4:
            continue                                   # a PNG with alpha: PIL's RGBA->RGB, as detect's Image.open
        assert np.array_equal(ours, expected[0].numpy())


def test_runtime_pads_a_fixed_batch_and_maps_boxes_to_each_image():
    seen = []

    def fake_graph(batch):          # one detection per image: the whole input, score 0.5, label 2
        seen.append(batch.shape)
        B = len(batch)
        return {"num_detections": np.ones(B, np.int64),
                "boxes": np.tile(np.array([[[0, 0, 128, 96], [0, 0, 0, 0]]], np.float32), (B, 1, 1)),
                "scores": np.tile(np.array([[0.5, 0]], np.float32), (B, 1)),
                "labels": np.tile(np.array([[2, 0]], np.int64), (B, 1))}
    meta = {"format": runtime.DETECTOR_FORMAT, "input_size": [96, 128], "resize": "bilinear"}
    detector = runtime.Detector(fake_graph, meta, batch_size=4, backend="fake")
    images = [np.zeros((30, 40, 3), np.uint8), np.zeros((50, 20), np.uint8), Image.new("RGB", (7, 9))]
    results = detector.predict(images)
    assert seen == [(4, 3, 96, 128)]
    assert [r["boxes"].tolist() for r in results] == [[[0, 0, 40, 30]], [[0, 0, 20, 50]], [[0, 0, 7, 9]]]
    assert all(r["labels"].tolist() == [2] and r["scores"].tolist() == [0.5] for r in results)
    with pytest.raises(ValueError, match="not a scratchdet detector export"):
        runtime.Detector(fake_graph, {"format": "other"}, None, "fake")


def test_runtime_rejects_other_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        runtime.load(tmp_path / "missing.onnx")
    (tmp_path / "m.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="expected a .onnx or OpenVINO .xml"):
        runtime.load(tmp_path / "m.pt")
    with pytest.raises(TypeError, match="uint8"):
        runtime.to_rgb(np.zeros((4, 4, 3), np.float32))


def test_export_cli_errors_are_one_line(tmp_path, capsys):
    from scratchdet.cli import main

    assert main(["export", "--weights", "x.pt", "--out", str(tmp_path), "--format", "onnx,tflite"]) == 2
    assert "unknown --format ['tflite']" in capsys.readouterr().err
    assert main(["export", "--weights", "x.pt", "--out", str(tmp_path), "--format", "openvino", "--no-nms"]) == 2
    assert "drop --no-nms" in capsys.readouterr().err
    assert main(["export", "--weights", "x.pt", "--out", str(tmp_path), "--opset", "17"]) == 2
    assert "needs opset >= 18" in capsys.readouterr().err
    assert main(["export", "--weights", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "never")]) == 2
    assert "weights file not found" in capsys.readouterr().err and not (tmp_path / "never").exists()
    weights = tmp_path / "w.pt"
    scratchdet.save(demo_model(), weights)
    assert main(["export", "--weights", str(weights), "--out", str(tmp_path / "o"), "--top-k", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "top_k must be a whole number >= 1, got 0" in err


BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"No module named {name!r} (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, _NoTorch())
"""

PREDICT_WITHOUT_TORCH = """
import json, sys
import numpy as np
try:
    import torch
    sys.exit("torch imported")
except ImportError:
    pass
from scratchdet import runtime
paths = json.loads(sys.argv[1])
result = {}
for model_file in sys.argv[2:]:
    detector = runtime.load(model_file)
    out = detector.predict([paths[0], np.load(paths[1]), paths[2]])
    result[model_file] = [{k: v.tolist() for k, v in r.items()} for r in out]
    assert out[0]["boxes"].dtype == np.float32 and out[0]["labels"].dtype == np.int64
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
print(json.dumps(result))
"""


def _assert_close_to_predict(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert len(g["scores"]) == len(e["scores"]) > 0
        assert g["labels"] == e["labels"].tolist()
        np.testing.assert_allclose(g["scores"], e["scores"].numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(g["boxes"], e["boxes"].numpy(), rtol=1e-4, atol=2e-3)


def _run_without_torch(tmp_path, model_files, image_paths):
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), ROOT])}
    command = [sys.executable, "-c", PREDICT_WITHOUT_TORCH, json.dumps(image_paths), *map(str, model_files)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _images_of_several_sizes(tmp_path) -> tuple[list, list[str]]:
    rng = np.random.default_rng(7)
    arrays = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(90, 120, 3), (200, 150, 3), (128, 128, 3)]]
    Image.fromarray(arrays[0]).save(tmp_path / "a.png")
    np.save(tmp_path / "b.npy", arrays[1])
    Image.fromarray(arrays[2]).save(tmp_path / "c.png")
    return arrays, [str(tmp_path / "a.png"), str(tmp_path / "b.npy"), str(tmp_path / "c.png")]


@pytest.mark.slow
def test_runtime_predicts_without_torch_like_model_predict(exported, tmp_path):
    model, out, _, _ = exported
    arrays, paths = _images_of_several_sizes(tmp_path)
    result = _run_without_torch(tmp_path, [out / "model.onnx", out / "model.xml"], paths)
    expected = model.predict(arrays, **SETTINGS)
    for model_file in (out / "model.onnx", out / "model.xml"):
        _assert_close_to_predict(result[str(model_file)], expected)


@pytest.mark.slow
def test_export_command_fixed_batch_onnx_and_openvino(tmp_path):
    model = demo_model()
    weights = tmp_path / "w.pt"
    scratchdet.save(model, weights)
    out = tmp_path / "exp"
    proc = subprocess.run([sys.executable, "-m", "scratchdet", "export", "--weights", str(weights), "--out", str(out),
                           "--format", "onnx,openvino", "--score-threshold", "0.25", "--keep-top-k", "30"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote" in proc.stdout and "checked against the eager model" in proc.stdout
    assert sorted(os.listdir(out)) == ["model.bin", "model.onnx", "model.xml"]
    settings = {**model.detect_settings, "score_threshold": 0.25, "keep_top_k": 30}
    for fmt in ("model.onnx", "model.xml"):
        detector = runtime.load(out / fmt)
        assert detector.fixed_batch == 1 and detector.metadata["score_threshold"] == 0.25
        # a fixed batch of 1: predict runs the images one by one
        arrays, _ = _images_of_several_sizes(tmp_path)
        _assert_close_to_predict([{k: v.tolist() for k, v in r.items()} for r in detector.predict(arrays)],
                                 model.predict(arrays, **settings))
