"""`scratchdet detect` throughput, end to end (decode thread + network + drawing + jsonl), against the
network alone on the same frames already in memory: how much the rest of the pipeline costs.

Sources: a folder of 32 JPEGs and a 32-frame mp4, both 320x240; the detector: root_resnet_demo at random
init, eager or FastPredictor, batch 8. In CI it runs once with --benchmark-disable (a smoke test).
"""
import numpy as np
import pytest
from PIL import Image

import scratchdet
from scratchdet.cli import main
from scratchdet.models import build_model
from scratchdet.models.fast_inference import FastPredictor

cv2 = pytest.importorskip("cv2")

FRAMES, WIDTH, HEIGHT, BATCH = 32, 320, 240, 8


def _frames():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)
    return [np.roll(base, 6 * i, axis=1) for i in range(FRAMES)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_detect_sources")
    torch_model = build_model("root_resnet_demo", num_classes=4)
    torch_model.class_names = ["a", "b", "c"]
    weights = root / "model.pt"
    scratchdet.save(torch_model.eval(), weights)
    folder = root / "images"
    folder.mkdir()
    frames = _frames()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:03d}.jpg", quality=90)
    writer = cv2.VideoWriter(str(root / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (WIDTH, HEIGHT))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return root, str(weights), {"folder": str(folder), "video": str(root / "clip.mp4")}, frames


@pytest.mark.parametrize("fast", [False, True], ids=["eager", "fast"])
def test_network_only(benchmark, setup, fast):
    _, weights, _, frames = setup
    model = scratchdet.load(weights).eval()
    predictor = FastPredictor(model) if fast else model
    benchmark.extra_info["frames"] = FRAMES
    result = benchmark(lambda: predictor.predict(frames, batch_size=BATCH))
    assert len(result) == FRAMES


@pytest.mark.parametrize("source", ["folder", "video"])
@pytest.mark.parametrize("fast", [False, True], ids=["eager", "fast"])
def test_detect_command(benchmark, setup, source, fast, capsys):
    root, weights, sources, _ = setup
    out = root / f"out-{source}-{fast}"
    args = ["detect", sources[source], "--weights", weights, "--out", str(out), "--batch", str(BATCH)]
    benchmark.extra_info["frames"] = FRAMES
    assert benchmark(lambda: main(args + (["--fast"] if fast else []))) == 0
    with open(out / "detections.jsonl") as f:
        assert sum(1 for _ in f) == FRAMES
