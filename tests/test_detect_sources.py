"""`scratchdet detect` at scale: videos, nested folders, globs, detections.jsonl (one whole line per frame,
a valid prefix when killed), the exported runtime, and bad sources as one line + exit 2.

The model is a tiny Root-ResNet at random init: its detections are noise, which is all a format test needs.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

import scratchdet
from scratchdet.cli import main
from scratchdet.commands import detect
from scratchdet.engine import sources as sources_module
from scratchdet.models import build_model
from scratchdet.structures.errors import BadImageError

cv2 = pytest.importorskip("cv2")

NAMES = ["square", "disc"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    model = build_model("root_resnet_tiny", num_classes=3, image_size=64, width=8, extra_channels=16)
    model.class_names = NAMES
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    scratchdet.save(model.eval(), path)
    return str(path)


def write_video(path, frames=20, size=128, fps=10.0):
    """An mp4 of a white square moving right over a dark background."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    assert writer.isOpened()
    for i in range(frames):
        image = np.full((size, size, 3), 30, np.uint8)
        cv2.rectangle(image, (10 + i, 30), (50 + i, 70), (255, 255, 255), -1)
        writer.write(image)
    writer.release()
    return str(path)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def listing(folder):
    return sorted(os.path.relpath(os.path.join(root, f), folder) for root, _, files in os.walk(folder) for f in files)


def check_record(record, width, height):
    assert set(record) == {"source", "frame", "timestamp", "width", "height", "boxes", "scores", "labels", "names"}
    assert (record["width"], record["height"]) == (width, height)
    n = len(record["boxes"])
    assert len(record["scores"]) == len(record["labels"]) == len(record["names"]) == n
    for box, label, name in zip(record["boxes"], record["labels"], record["names"]):
        assert len(box) == 4 and 0 <= box[0] <= box[2] <= width and 0 <= box[1] <= box[3] <= height
        assert name == NAMES[label - 1]
    assert all(0.0 <= s <= 1.0 for s in record["scores"])
    assert record["scores"] == sorted(record["scores"], reverse=True)


def test_video_gives_one_line_per_frame_and_an_annotated_video(weights, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    video = write_video(src / "clip.mp4")
    before = listing(src)
    out = tmp_path / "out"
    assert main(["detect", video, "--weights", weights, "--out", str(out), "--batch", "8",
                 "--score-threshold", "0.0"]) == 0
    assert "20 frames from 1 source" in capsys.readouterr().out
    records = read_jsonl(out / "detections.jsonl")
    assert [r["frame"] for r in records] == list(range(20))
    assert all(r["source"] == video for r in records)
    assert [r["timestamp"] for r in records] == pytest.approx([i / 10.0 for i in range(20)])
    for r in records:
        check_record(r, 128, 128)
    assert any(r["boxes"] for r in records)     # threshold 0: the untrained model's boxes are kept

    capture = cv2.VideoCapture(str(out / "clip_det.mp4"))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 20
    ok, frame = capture.read()
    assert ok and frame.shape == (128, 128, 3)
    capture.release()
    assert listing(src) == before and not (out / "detections.json").exists()   # the json summary: images only


def test_no_save_writes_only_the_jsonl_and_batch_size_does_not_change_results(weights, tmp_path):
    video = write_video(tmp_path / "clip.avi", frames=7, size=96)
    runs = {}
    for batch in ("1", "3"):
        out = tmp_path / f"out{batch}"
        assert main(["detect", video, "--weights", weights, "--out", str(out), "--no-save", "--batch", batch,
                     "--score-threshold", "0.05"]) == 0
        assert listing(out) == ["detections.jsonl"]
        runs[batch] = read_jsonl(out / "detections.jsonl")
    assert [r["frame"] for r in runs["1"]] == list(range(7))
    for a, b in zip(runs["1"], runs["3"]):
        assert a["labels"] == b["labels"]
        np.testing.assert_allclose(np.reshape(a["boxes"], (-1, 4)), np.reshape(b["boxes"], (-1, 4)), atol=0.2)


def make_tree(root):
    """root/{top.jpg, a/x.png, a/b/x.jpg, a/b/deep.bmp, notes.txt} with images of different sizes."""
    (root / "a" / "b").mkdir(parents=True)
    sizes = {"top.jpg": (70, 50), "a/x.png": (64, 64), "a/b/x.jpg": (90, 40), "a/b/deep.bmp": (33, 77)}
    for i, (name, size) in enumerate(sizes.items()):
        Image.new("RGB", size, (40 * i, 255 - 40 * i, 90)).save(root / name)
    (root / "notes.txt").write_text("not an image")
    return sizes


def test_folder_is_searched_recursively_in_sorted_order(weights, tmp_path):
    src = tmp_path / "images"
    sizes = make_tree(src)
    before = listing(src)
    out = tmp_path / "out"
    assert main(["detect", str(src), "--weights", weights, "--out", str(out), "--score-threshold", "0.0"]) == 0
    records = read_jsonl(out / "detections.jsonl")
    expected = sorted(str(src / name) for name in sizes)
    assert [r["source"] for r in records] == expected
    for r in records:
        assert r["frame"] == 0 and r["timestamp"] is None
        check_record(r, *sizes[os.path.relpath(r["source"], src)])
    # pictures keep the folder layout, so a/x.png and a/b/x.jpg do not overwrite each other
    assert sorted(p for p in listing(out) if p.endswith(".png")) == [
        "a/b/deep_det.png", "a/b/x_det.png", "a/x_det.png", "top_det.png"]
    assert Image.open(out / "a" / "b" / "x_det.png").size == (90, 40)
    summary = json.loads((out / "detections.json").read_text())      # the earlier format, still written
    assert sorted(summary) == expected
    assert listing(src) == before


def test_glob_pattern_selects_files(weights, tmp_path):
    src = tmp_path / "images"
    make_tree(src)
    out = tmp_path / "out"
    assert main(["detect", str(src / "**" / "*.jpg"), "--weights", weights, "--out", str(out), "--no-save"]) == 0
    assert [r["source"] for r in read_jsonl(out / "detections.jsonl")] == [str(src / "a" / "b" / "x.jpg"),
                                                                            str(src / "top.jpg")]


def test_images_and_a_video_together(weights, tmp_path):
    src = tmp_path / "mix"
    sizes = make_tree(src)
    write_video(src / "a" / "clip.mp4", frames=5, size=64)
    out = tmp_path / "out"
    assert main(["detect", str(src), "--weights", weights, "--out", str(out), "--batch", "4", "--fast"]) == 0
    records = read_jsonl(out / "detections.jsonl")
    assert len(records) == len(sizes) + 5
    video = [r for r in records if r["source"].endswith("clip.mp4")]
    assert [r["frame"] for r in video] == list(range(5))
    assert (out / "a" / "clip_det.mp4").exists() and (out / "a" / "x_det.png").exists()


def test_an_error_after_some_frames_leaves_a_valid_jsonl_prefix(weights, tmp_path, monkeypatch):
    video = write_video(tmp_path / "clip.mp4", frames=20, size=64)
    calls = {"n": 0}
    original = detect._Predictor.__call__

    def failing(self, images):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected failure in the third batch")
        return original(self, images)

    monkeypatch.setattr(detect._Predictor, "__call__", failing)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="injected"):
        main(["detect", video, "--weights", weights, "--out", str(out), "--batch", "4"])
    records = read_jsonl(out / "detections.jsonl")
    assert [r["frame"] for r in records] == list(range(8))
    assert (out / "clip_det.mp4").exists()


@pytest.mark.slow
def test_a_killed_run_leaves_complete_lines(weights, tmp_path):
    video = write_video(tmp_path / "long.mp4", frames=400, size=64, fps=25.0)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "scratchdet", "detect", video, "--weights", weights,
                             "--out", str(out), "--batch", "1", "--no-save"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    jsonl = out / "detections.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if jsonl.exists() and jsonl.stat().st_size > 0:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if proc.returncode == 0:
        pytest.skip("the run finished before it could be killed")
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    text = jsonl.read_text()
    assert text.endswith("\n")
    records = [json.loads(line) for line in text.splitlines()]
    assert 1 <= len(records) < 400
    assert [r["frame"] for r in records] == list(range(len(records)))


def test_http_stream_is_read_through_the_same_decoder(weights, tmp_path):
    import functools
    import http.server
    import threading
    folder = tmp_path / "served"
    folder.mkdir()
    write_video(folder / "clip.mp4", frames=6, size=64)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/clip.mp4"
    out = tmp_path / "out"
    try:
        assert main(["detect", url, "--weights", weights, "--out", str(out), "--save-video", "--batch", "4"]) == 0
    finally:
        server.shutdown()
    records = read_jsonl(out / "detections.jsonl")
    assert [r["frame"] for r in records] == list(range(6)) and all(r["source"] == url for r in records)
    stamps = [r["timestamp"] for r in records]       # a live source: seconds since its first frame
    assert stamps == sorted(stamps) and 0 <= stamps[0] < 1
    assert (out / "stream_det.mp4").exists()      # cameras and streams: a video only with --save-video


def test_runtime_runs_an_exported_detector(weights, tmp_path):
    from scratchdet.models import export
    model = scratchdet.load(weights)
    onnx_path = tmp_path / "model.onnx"
    export.export_detector_onnx(model, str(onnx_path), dynamic=True)
    video = write_video(tmp_path / "clip.mp4", frames=6, size=64)
    runs = {}
    for name, how in (("eager", ["--weights", weights]), ("runtime", ["--runtime", str(onnx_path)])):
        out = tmp_path / name
        assert main(["detect", video, *how, "--out", str(out), "--batch", "4", "--no-save",
                     "--score-threshold", "0.0"]) == 0
        runs[name] = read_jsonl(out / "detections.jsonl")
    assert [r["frame"] for r in runs["runtime"]] == list(range(6))
    for eager, exported in zip(runs["eager"], runs["runtime"]):
        check_record(exported, 64, 64)
        assert len(exported["boxes"]) == len(eager["boxes"])


def test_runtime_and_weights_are_exclusive(weights, tmp_path, capsys):
    assert main(["detect", str(tmp_path), "--weights", weights, "--runtime", "m.onnx", "--out",
                 str(tmp_path / "o")]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["detect", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--weights FILE" in capsys.readouterr().err


# (source, message, decoded by OpenCV): those run as the command in a fresh process, where OpenCV's and
# FFmpeg's own log lines, silenced before cv2 is first imported, would otherwise surround the error
BAD_SOURCES = [
    ("missing.jpg", "image not found", False),
    ("missing.mp4", "video not found", False),
    ("notes.txt", "unknown file type '.txt'", False),
    ("*.gif", "matches no image or video file", False),
    ("empty", "no images or videos in folder", False),
    ("corrupt.mp4", "cannot read video", True),
    ("rtsp://127.0.0.1:9/none", "stream rtsp://127.0.0.1:9/none: cannot be opened", True),
    ("http://127.0.0.1:9/none.mp4", "stream http://127.0.0.1:9/none.mp4: cannot be opened", True),
    ("97", "camera 97: cannot be opened", True),
]


@pytest.mark.parametrize("source,message,opencv", BAD_SOURCES)
def test_bad_source_is_one_line_and_exit_2(weights, tmp_path, source, message, opencv, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
    (src / "notes.txt").write_text("hello")
    (src / "empty").mkdir()
    before = listing(src)
    spec = source if "://" in source or source.isdigit() else str(src / source)
    out = tmp_path / "out"
    args = ["detect", spec, "--weights", weights, "--out", str(out)]
    start = time.monotonic()
    if opencv:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")}
        proc = subprocess.run([sys.executable, "-m", "scratchdet", *args], capture_output=True, text=True,
                              timeout=120, env=env)
        code, err = proc.returncode, proc.stderr
    else:
        code, err = main(args), capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert time.monotonic() - start < 60
    assert message in err and "Traceback" not in err
    assert err.strip().count("\n") == 0, err
    assert listing(src) == before and not out.exists()


def test_bad_image_inside_a_folder_is_one_line(weights, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (32, 32)).save(src / "a.png")
    (src / "b.jpg").write_bytes(b"not a jpeg")
    assert main(["detect", str(src), "--weights", weights, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot decode image" in err and "b.jpg" in err and "Traceback" not in err


class _FakeSource(sources_module.Source):
    """n frames of 8x8, then optionally an error; counts what it produced."""

    def __init__(self, name, n, error=None):
        self.name = self.output_name = name
        self.length, self.n, self.error, self.produced, self.closed = n, n, error, 0, False

    def frames(self):
        for i in range(self.n):
            self.produced += 1
            yield sources_module.Frame(self.name, i, None, np.zeros((8, 8, 3), np.uint8), self.output_name)
        if self.error:
            raise self.error

    def close(self):
        self.closed = True


def test_prefetch_keeps_order_batches_and_hands_over_decoder_errors():
    a, b = _FakeSource("a", 5), _FakeSource("b", 3, error=BadImageError("cannot read image b"))
    seen = []
    with pytest.raises(BadImageError, match="cannot read image b"):
        for batch in sources_module.batched(sources_module.prefetch([a, b], maxsize=2), 3):
            seen.append([(f.source, f.index) for f in batch])
    assert seen == [[("a", 0), ("a", 1), ("a", 2)], [("a", 3), ("a", 4), ("b", 0)]]
    assert a.closed and b.closed


def test_prefetch_stops_its_thread_when_the_consumer_stops():
    source = _FakeSource("long", 10_000)
    frames = sources_module.prefetch([source], maxsize=4)
    assert next(frames).index == 0
    frames.close()
    produced = source.produced
    assert produced <= 1 + 4 + 2          # the queue bounds how far the decoder runs ahead
    time.sleep(0.3)
    assert source.produced == produced and source.closed
    assert not any(t.name == "scratchdet-decode" for t in threading.enumerate())


def test_output_names_keep_subfolders_and_never_collide(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/x.jpg", "x.png", "x.jpg"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    opened = sources_module.open_sources([str(tmp_path), str(tmp_path / "x.png")])
    assert [s.output_name for s in opened] == ["a/x", "x", "x_1", "x_2"]
