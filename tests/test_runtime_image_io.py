"""The torch-free runtime reads image files as the package does (one reader,
``scratchdet.structures.image_io``): an EXIF-rotated JPEG and a 16-bit PNG give the runtime the pixels
``model.predict`` gets from ``read_image``, and an export run where ``import torch`` fails detects what
``model.predict`` detects on them."""
import numpy as np
import pytest
import torch
from PIL import Image

from scratchdet import runtime
from scratchdet.models import export
from scratchdet.models.transform import preprocess
from scratchdet.structures import image_io
from scratchdet.structures.image import read_image

from test_export_backbones import BACKGROUND_PRIOR, SETTINGS, _with_random_batch_norm_statistics, user_model
from test_export_detector import _assert_close_to_predict, _run_without_torch


def _exif_rotated_jpeg(path) -> str:
    """A 60 x 40 JPEG stored sideways with EXIF orientation 6 (shown rotated 90 degrees clockwise)."""
    rng = np.random.default_rng(1)
    stored = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    stored[:15, :15] = 255                                  # a white corner, so the rotation shows
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    return str(path)


def _png_16bit(path) -> str:
    """A 16-bit grey PNG whose values span 0..4095 (a 12-bit sensor): Pillow's convert("RGB") would
    saturate it to white, the package stretches it by its range."""
    rng = np.random.default_rng(2)
    values = (np.linspace(0, 4095, 70)[None, :] * rng.uniform(0.3, 1.0, (50, 1))).astype(np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    return str(path)


@pytest.fixture
def hard_files(tmp_path):
    return _exif_rotated_jpeg(tmp_path / "rotated.jpg"), _png_16bit(tmp_path / "deep.png")


def test_runtime_reads_files_with_the_package_reader(hard_files):
    rotated, deep = hard_files
    for path in hard_files:
        assert np.array_equal(np.asarray(runtime.to_rgb(path)), np.asarray(read_image(path)))
    assert runtime.to_rgb(rotated).size == (40, 60)                             # upright: 40 wide, 60 high
    assert np.asarray(runtime.to_rgb(rotated))[:15, -15:].mean() > 200          # the corner is now top-right
    grey = np.asarray(runtime.to_rgb(deep))[:, :, 0]
    assert grey.min() == 0 and grey.max() == 255                                # stretched, not saturated
    # a 16-bit PIL image given directly is converted the same way
    with Image.open(deep) as img:
        assert np.array_equal(np.asarray(runtime.to_rgb(img)), grey[:, :, None].repeat(3, 2))


def test_runtime_network_input_equals_preprocess_of_the_read_image(hard_files):
    spec = dict(image_size=(48, 64), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), resize="bilinear")
    scale, offset = export._normalise_constants(spec["mean"], spec["std"])
    for path in hard_files:
        pixels = runtime.resize_to_input(runtime.to_rgb(path), (48, 64)).astype(np.float32)
        expected, _ = preprocess([read_image(path)], **spec)
        assert np.array_equal(pixels * scale[:, None, None] - offset[:, None, None], expected[0].numpy())


def test_image_io_errors_are_the_package_errors(tmp_path):
    from scratchdet.structures.errors import BadImageError, DataError

    with pytest.raises(BadImageError, match="image file not found"):
        runtime.to_rgb(tmp_path / "missing.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(BadImageError, match="cannot decode image"):
        runtime.to_rgb(str(tmp_path / "bad.jpg"))
    with pytest.raises(DataError, match=r"\[H, W\] or \[H, W, C\]"):
        image_io.array_to_rgb(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        image_io.array_to_rgb(np.zeros((4, 4, 3), np.float32))


@pytest.mark.slow
def test_runtime_without_torch_detects_what_predict_detects_on_hard_files(hard_files, tmp_path):
    torch.manual_seed(0)
    model = _with_random_batch_norm_statistics(user_model())
    model.init_head(background_prior=BACKGROUND_PRIOR["user"])
    model.eval()
    export.export_detector_onnx(model, str(tmp_path / "model.onnx"), dynamic=True, **SETTINGS)
    export.export_detector_openvino(model, str(tmp_path / "model.onnx"), str(tmp_path / "model.xml"))
    array = np.random.default_rng(3).integers(0, 256, (33, 77, 3), dtype=np.uint8)
    np.save(tmp_path / "array.npy", array)
    rotated, deep = hard_files
    # the subprocess predicts on [paths[0], np.load(paths[1]), paths[2]] with import torch blocked
    result = _run_without_torch(tmp_path, [tmp_path / "model.onnx", tmp_path / "model.xml"],
                                [rotated, str(tmp_path / "array.npy"), deep])
    expected = model.predict([read_image(rotated), array, read_image(deep)], **SETTINGS)
    assert tuple(expected[0]["boxes"].shape) != (0, 4)
    for model_file in ("model.onnx", "model.xml"):
        _assert_close_to_predict(result[str(tmp_path / model_file)], expected)
