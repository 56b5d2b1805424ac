"""`scratchdet detect` throughput end to end, against the network alone: what decoding, drawing and writing
add to the network's time.

For each detector (eager ``--weights``, ``--weights --fast`` = FastPredictor, the ONNX Runtime and the
OpenVINO export via ``--runtime``) and each source (a folder of JPEGs, an mp4 video):

* **network only**: the detector on batches of frames already decoded, resized and (for torch) normalised
  in memory, post-processing and NMS included: ``model(x)`` / ``FastPredictor(x)`` / the exported graph on
  uint8 ``[B, 3, S, S]``;
* **detect**: ``scratchdet detect SOURCE --batch B`` in this process, the default outputs (one annotated
  picture per image / an annotated video, plus ``detections.jsonl``);

both in frames/s with the same thread count (torch, ONNX Runtime and OpenVINO set to ``--threads``), and
``overhead = detect time / network time - 1``. The issue's goal: under 15% at batch 8, on a folder of 500
images and a 30 s video (the defaults). Prints a markdown table.

    python benchmarks/bench_detect_sources.py                      # full scale: 500 images, 30 s of video
    python benchmarks/bench_detect_sources.py --images 20 --seconds 2 --model root_resnet_demo   # smoke

``BENCH_DETECT_SCALE=small`` (the environment) gives the smoke scale too; pytest runs it once at that scale
(``test_smoke``).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import scratchdet  # noqa: E402
from scratchdet import runtime  # noqa: E402
from scratchdet.cli import main as cli_main  # noqa: E402
from scratchdet.commands import detect as detect_command  # noqa: E402
from scratchdet.models import export  # noqa: E402
from scratchdet.models.fast_inference import FastPredictor  # noqa: E402
from scratchdet.structures.image import resize_and_normalise  # noqa: E402

SMALL = dict(images=20, seconds=2.0, model="root_resnet_demo")
SCORE_THRESHOLD = 0.3          # scratchdet detect's default
KEEP_TOP_K = 20                # boxes per frame at most: a busy street scene, not a random head's hundreds


def _frames(count: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """A moving scene: a noise background scrolling sideways and a few bright rectangles, so JPEG and video
    compression see natural-ish content and the detector fires (its head starts near 'object')."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height, width * 2, 3), np.uint8)
    for _ in range(6):
        x, y = rng.integers(0, width * 2 - 60), rng.integers(0, height - 60)
        base[y:y + rng.integers(20, 60), x:x + rng.integers(20, 60)] = rng.integers(0, 256, 3)
    return [np.ascontiguousarray(np.roll(base, -4 * i, axis=1)[:, :width]) for i in range(count)]


def _write_sources(root: str, images: int, seconds: float, fps: float, width: int, height: int) -> dict:
    import cv2

    folder = os.path.join(root, "images")
    os.makedirs(folder)
    for i, frame in enumerate(_frames(images, width, height, seed=1)):
        Image.fromarray(frame).save(os.path.join(folder, f"{i:04d}.jpg"), quality=90)
    video = os.path.join(root, "clip.mp4")
    frames = _frames(int(round(seconds * fps)), width, height, seed=2)
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return {"folder": (folder, images), "video": (video, len(frames))}


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = scratchdet.build_model(name, num_classes=2)
    # at random init: boxes to draw (the table counts them), with scores spread around 0.5 rather than
    # saturated at 1.0 by a deep random network's large features: exact score ties would make the
    # export's check depend on the order NMS breaks them in (the documented tie case), not on the graph
    model.init_head(background_prior=0.5, std=0.0005)
    model.class_names = ["object"]
    model.set_detect_settings(score_threshold=SCORE_THRESHOLD, keep_top_k=KEEP_TOP_K)   # ... at most 20 a frame
    return model.eval()


def _timed(fn, repeats: int) -> float:
    """The best of ``repeats`` runs, after one warm-up (seconds)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _network_only(kind: str, model, files: dict, frames: list[np.ndarray], batch: int, threads: int):
    """A function running the network (+ post-processing) over ``frames`` already at the input size."""
    h, w = model.input_size
    if kind in ("eager", "fast"):
        x = torch.stack([resize_and_normalise(f, (h, w), **{k: model.input_spec[k] for k in ("mean", "std", "resize")})
                         for f in frames])
        net = FastPredictor(model) if kind == "fast" else model

        def run():
            with torch.inference_mode():
                for start in range(0, len(x), batch):
                    net(x[start:start + batch])
        return run
    detector = runtime.load(files[kind], threads=threads)
    u8 = np.stack([runtime.resize_to_input(runtime.to_rgb(f), (h, w)) for f in frames])

    def run():
        for start in range(0, len(u8), batch):
            detector(u8[start:start + batch])
    return run


def _detect(kind: str, files: dict, source: str, out: str, batch: int):
    args = ["detect", source, "--out", out, "--batch", str(batch), "--score-threshold", str(SCORE_THRESHOLD)]
    args += {"eager": ["--weights", files["weights"]], "fast": ["--weights", files["weights"], "--fast"],
             "onnxruntime": ["--runtime", files["onnxruntime"]], "openvino": ["--runtime", files["openvino"]]}[kind]

    def run():
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = cli_main(args + ["--device", "cpu"] if kind in ("eager", "fast") else args)
        if code != 0:
            raise RuntimeError(f"scratchdet {' '.join(args)} exited with {code}")
    return run


def bench(images: int, seconds: float, model_name: str, batch: int = 8, threads: int | None = None,
          width: int = 640, height: int = 480, fps: float = 25.0, repeats: int = 2,
          backends=("eager", "fast", "onnxruntime", "openvino")) -> list[dict]:
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    # detect --runtime loads the export through scratchdet.runtime.load: give it the same thread count
    detect_command.load_runtime = functools.partial(runtime.load, threads=threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_detect_sources") as root:
        model = _model(model_name)
        files = {"weights": os.path.join(root, "model.pt")}
        scratchdet.save(model, files["weights"])
        if "onnxruntime" in backends or "openvino" in backends:
            files["onnxruntime"] = os.path.join(root, "model.onnx")
            export.export_detector_onnx(model, files["onnxruntime"], dynamic=True)
        if "openvino" in backends:
            files["openvino"] = os.path.join(root, "model.xml")
            export.export_detector_openvino(model, files["onnxruntime"], files["openvino"])
        sources = _write_sources(root, images, seconds, fps, width, height)
        decoded = {"folder": _frames(images, width, height, seed=1),
                   "video": _frames(sources["video"][1], width, height, seed=2)}
        for kind in backends:
            for name, (path, count) in sources.items():
                out = os.path.join(root, f"out-{kind}-{name}")
                t_net = _timed(_network_only(kind, model, files, decoded[name], batch, threads), repeats)
                t_detect = _timed(_detect(kind, files, path, out, batch), repeats)
                with open(os.path.join(out, "detections.jsonl")) as f:
                    lines = [json.loads(line) for line in f]
                assert len(lines) == count, (kind, name, len(lines), count)
                boxes = np.mean([len(r.get("detections", r.get("boxes", []))) for r in lines])
                rows.append({"detector": kind, "source": name, "frames": count, "boxes_per_frame": float(boxes),
                             "network_fps": count / t_net, "detect_fps": count / t_detect,
                             "overhead": t_detect / t_net - 1.0})
    return rows


def markdown(rows: list[dict], model_name: str, batch: int, threads: int, width: int, height: int) -> str:
    lines = [f"`scratchdet detect` vs network only: {model_name}, batch {batch}, {threads} threads, "
             f"{width}x{height} frames (goal: overhead < 15%)", "",
             "| detector | source | frames | boxes/frame | network only (frames/s) | detect (frames/s) | overhead |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['detector']} | {r['source']} | {r['frames']} | {r['boxes_per_frame']:.1f} | "
                     f"{r['network_fps']:.1f} | {r['detect_fps']:.1f} | {100 * r['overhead']:+.1f}% |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    small = os.environ.get("BENCH_DETECT_SCALE", "").lower() == "small"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=SMALL["images"] if small else 500, help="images in the folder")
    p.add_argument("--seconds", type=float, default=SMALL["seconds"] if small else 30.0, help="video length")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--size", default="640x480", help="frame WIDTHxHEIGHT")
    p.add_argument("--model", default=SMALL["model"] if small else "root_resnet18_ssd300")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="default: torch's default thread count")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per measurement (best kept), after a warm-up")
    p.add_argument("--backends", default="eager,fast,onnxruntime,openvino")
    return p.parse_args(argv)


def run(argv=None) -> str:
    args = parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    threads = args.threads or torch.get_num_threads()
    rows = bench(args.images, args.seconds, args.model, args.batch, threads, width, height, args.fps,
                 args.repeats, tuple(b.strip() for b in args.backends.split(",") if b.strip()))
    return markdown(rows, args.model, args.batch, threads, width, height)


def test_smoke():
    """The whole benchmark at the smoke scale: every detector, both sources, a complete table."""
    import pytest

    pytest.importorskip("cv2")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    table = run(["--images", "6", "--seconds", "0.4", "--model", "root_resnet_demo", "--size", "160x120",
                 "--repeats", "1"])
    assert table.count("\n| ") == 1 + 8 and "| openvino | video | 10 |" in table     # header + 4 x 2 rows


if __name__ == "__main__":
    print(run())
