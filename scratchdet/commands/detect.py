"""`scratchdet detect`: run a detector on images, folders, globs, videos, cameras or streams.

Frames are decoded in a background thread (:mod:`scratchdet.engine.sources`), batched for the network,
and each one's detections are appended to ``detections.jsonl`` as soon as they are known (one whole
line per frame, flushed, so a run that is killed leaves a valid prefix). Images are written with their
labelled boxes; a video source becomes an annotated video at its own frame rate.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from ..engine.sources import Frame, Source, SourceError, batched, open_sources, prefetch
from ..engine.visualize import draw_detections
from ..models.fast_inference import FastPredictor
from ..models.tiling import DEFAULT_OVERLAP, MIN_TILE
from ..runtime import load as load_runtime
from ._common import CLIError, existing_file, finite_float, pick_device, threshold, writable_dir
from .quantize import load_fp32, load_int8

JSONL = "detections.jsonl"


def register(sub):
    p = sub.add_parser(
        "detect", help="detect objects in images, videos, cameras or streams and draw labelled boxes",
        description="Run a saved detector (--weights) or an exported one (--runtime) on images, folders "
                    "(recursive), glob patterns, video files (.mp4 .avi .mkv .mov), a camera index (0) or a "
                    "stream URL (rtsp://, http://). Writes each image with its labelled boxes, an annotated "
                    f"video per video source, and {JSONL}: one JSON line per image or frame.")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="image or video files, folders, quoted glob patterns, a camera index or a stream URL")
    p.add_argument("--weights", help="a model saved by scratchdet")
    p.add_argument("--runtime", metavar="FILE",
                   help="an exported whole detector (.onnx or OpenVINO .xml from `scratchdet export`) "
                        "run by scratchdet.runtime instead of --weights")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--score-threshold", type=threshold, default=0.3,
                   help="keep (draw and list) boxes scoring at least this, in [0, 1] (0.3)")
    p.add_argument("--batch", type=_positive_int, default=8, help="frames per network call (8)")
    p.add_argument("--device", default="auto", help="for --weights: cpu, cuda, cuda:1, ... (auto: a GPU if "
                                                    "there is one); --runtime runs on the CPU")
    p.add_argument("--fast", action="store_true", help="use the fused inference path (scratchdet.FastPredictor)")
    p.add_argument("--tile", type=_tile_size, metavar="SIZE",
                   help=f"detect in SIZE x SIZE windows of the image at its native resolution (>= {MIN_TILE}), "
                        "merged by class-wise NMS: for images much larger than the network")
    p.add_argument("--overlap", type=_overlap, default=DEFAULT_OVERLAP, metavar="F",
                   help=f"with --tile: the windows' overlap, a fraction in [0, 1) ({DEFAULT_OVERLAP})")
    p.add_argument("--int8", action="store_true",
                   help="--weights is an int8 file written by scratchdet quantize (CPU)")
    save = p.add_mutually_exclusive_group()
    save.add_argument("--save-video", action="store_true",
                      help="also write annotated videos of cameras and streams (video files always are, "
                           "unless --no-save)")
    save.add_argument("--no-save", action="store_true", help=f"write only {JSONL}: no pictures, no videos")
    p.set_defaults(func=run)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _tile_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < MIN_TILE:
        raise argparse.ArgumentTypeError(f"expected a tile size in pixels, a whole number >= {MIN_TILE}, got {text!r}")
    return value


def _overlap(text: str) -> float:
    value = finite_float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1), got {text!r}")
    return value


class _Predictor:
    """images (RGB uint8 HxWx3 arrays) -> per image (boxes, scores, labels) as CPU tensors."""

    @staticmethod
    def check(args) -> None:
        """The detector options, checked before any source is opened."""
        if args.runtime and args.weights:
            raise CLIError("give --weights (a saved model) or --runtime (an exported detector), not both")
        if not (args.runtime or args.weights):
            raise CLIError("say which detector to run: --weights FILE (saved model) or --runtime FILE (exported)")
        if args.runtime and args.fast:
            raise CLIError("--fast applies to --weights; an exported detector (--runtime) is already fused")
        if args.runtime and args.tile:
            raise CLIError("--tile applies to --weights; run the saved model to detect in tiles")
        if args.int8 and (args.runtime or args.fast):
            raise CLIError("--int8 runs an int8 file given as --weights; drop --runtime / --fast")

    def __init__(self, args):
        if args.runtime:
            existing_file(args.runtime, "exported detector")
            try:
                self._detector = load_runtime(args.runtime)
            except ValueError as exc:
                raise CLIError(f"--runtime {args.runtime}: {exc}") from None
            except ImportError as exc:     # onnxruntime (.onnx) or openvino (.xml) is not installed
                raise CLIError(f"--runtime {args.runtime} needs {exc.name or 'its runtime'}: "
                               f"pip install {exc.name or 'onnxruntime'}") from None
            self._predict = self._detector.predict
            names = self._detector.class_names
        else:
            model = load_int8(args.weights) if args.int8 else load_fp32(args.weights, pick_device(args.device))
            names = getattr(model, "class_names", None) or [str(i) for i in range(1, model.num_classes)]
            # FastPredictor: BN folded, conv+residual+ReLU fused, channels_last
            self._predict = (FastPredictor(model) if args.fast else model).predict
        self.names = list(names or [])
        self.batch = args.batch
        self._tiling = {"tile": args.tile, "tile_overlap": args.overlap} if args.tile else {}

    def __call__(self, images: list[np.ndarray]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        out = []
        for pred in self._predict(images, batch_size=self.batch, **self._tiling):
            out.append(tuple(torch.as_tensor(pred[k]).cpu() for k in ("boxes", "scores", "labels")))
        return out

    def name(self, label: int) -> str:
        return self.names[label - 1] if 0 < label <= len(self.names) else str(label)


class _Lines:
    """``detections.jsonl``: each record one whole line in one write, on an unbuffered file, so a run
    that is killed leaves only complete lines."""

    def __init__(self, path: str):
        self._file = open(path, "wb", buffering=0)

    def write(self, record: dict) -> None:
        data = memoryview((json.dumps(record) + "\n").encode())
        while data:
            data = data[self._file.write(data):]

    def close(self) -> None:
        self._file.close()


class _Videos:
    """Annotated videos, one per video source, opened at its first frame and closed at its last."""

    def __init__(self, out: str):
        self.out = out
        self._open: dict[str, object] = {}
        self.written: list[str] = []

    def write(self, source: Source, picture: np.ndarray) -> None:
        import cv2
        writer = self._open.get(source.output_name)
        if writer is None:
            self.close()       # sources come one after another: the previous video is complete
            path = os.path.join(self.out, source.output_name + "_det.mp4")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            h, w = picture.shape[:2]
            writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), source.fps or 30.0, (w, h))
            if not writer.isOpened():
                raise CLIError(f"cannot write video {path} (OpenCV has no mp4v encoder here)")
            self._open[source.output_name] = writer
            self.written.append(path)
        writer.write(cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        for writer in self._open.values():
            writer.release()
        self._open.clear()


class _Pictures:
    """Draws and writes pictures and video frames in one worker thread (in order), so PNG and video
    encoding overlap the network; at most ``pending`` frames wait, and the worker's errors surface here."""

    def __init__(self, out: str, names: list[str], score_threshold: float, pending: int):
        self.out, self.names, self.score_threshold, self.pending = out, names, score_threshold, pending
        self.videos = _Videos(out)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scratchdet-draw")
        self._futures: deque = deque()

    def submit(self, frame: Frame, source: Source, boxes, scores, labels) -> None:
        self._futures.append(self._worker.submit(self._draw, frame, source, boxes, scores, labels))
        while len(self._futures) > self.pending or (self._futures and self._futures[0].done()):
            self._futures.popleft().result()

    def _draw(self, frame: Frame, source: Source, boxes, scores, labels) -> None:
        drawn = draw_detections(torch.from_numpy(frame.image).permute(2, 0, 1), boxes, labels, scores,
                                self.names, self.score_threshold)
        picture = drawn.permute(1, 2, 0).numpy()
        if source.is_video:
            self.videos.write(source, picture)
        else:
            target = os.path.join(self.out, frame.output_name + "_det.png")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            Image.fromarray(picture).save(target)

    def close(self) -> None:
        """Wait for what was submitted (its first error is raised), then close the videos."""
        try:
            while self._futures:
                self._futures.popleft().result()
        finally:
            self._worker.shutdown(wait=True, cancel_futures=True)
            self.videos.close()


def _progress(total: int | None):
    from tqdm import tqdm
    return tqdm(total=total, unit="frame", desc="detect", dynamic_ncols=True, file=sys.stderr,
                disable=None)     # None: no bar when stderr is not a terminal (logs, tests)


def _record(frame: Frame, boxes, scores, labels, predictor: _Predictor) -> dict:
    h, w = frame.image.shape[:2]
    return {"source": frame.source, "frame": frame.index,
            "timestamp": None if frame.timestamp is None else round(frame.timestamp, 6),
            "width": int(w), "height": int(h),
            "boxes": [[round(float(v), 1) for v in box] for box in boxes.tolist()],
            "scores": [round(float(s), 4) for s in scores.tolist()],
            "labels": [int(l) for l in labels.tolist()],
            "names": [predictor.name(int(l)) for l in labels.tolist()]}


def run(args):
    _Predictor.check(args)
    try:
        sources = open_sources(args.sources)      # bad sources fail here, before a model is loaded
    except SourceError as exc:
        raise CLIError(str(exc)) from None
    try:
        predictor = _Predictor(args)
        out = writable_dir(args.out)
    except BaseException:
        for source in sources:
            source.close()
        raise
    by_output = {s.output_name: s for s in sources}    # unique, unlike names (a file given twice)
    lengths = [s.length for s in sources]
    total = None if any(n is None for n in lengths) else sum(lengths)
    only_images = not any(s.is_video for s in sources)
    save_images = not args.no_save
    save_videos = {s.output_name for s in sources
                   if s.is_video and not args.no_save and (not s.is_live or args.save_video)}

    lines = _Lines(os.path.join(out, JSONL))
    pictures = _Pictures(out, predictor.names, args.score_threshold, pending=max(2 * args.batch, 8))
    summary = {}    # detections.json for image-only runs, as earlier versions wrote it
    count, start = 0, time.perf_counter()
    bar = _progress(total)
    frames = prefetch(sources, maxsize=max(2 * args.batch, 8))
    try:
        for batch in batched(frames, args.batch):
            for frame, (boxes, scores, labels) in zip(batch, predictor([f.image for f in batch])):
                keep = scores >= args.score_threshold
                boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
                record = _record(frame, boxes, scores, labels, predictor)
                lines.write(record)
                source = by_output[frame.output_name]
                if (save_images and not source.is_video) or source.output_name in save_videos:
                    pictures.submit(frame, source, boxes, scores, labels)
                if only_images:
                    summary[frame.source] = [{"label": n, "score": s, "box": b} for n, s, b in
                                             zip(record["names"], record["scores"], record["boxes"])]
                count += 1
                bar.update(1)
    except SourceError as exc:
        raise CLIError(str(exc)) from None
    finally:
        frames.close()      # stops the decoder thread (an error or Ctrl-C here)
        bar.close()
        lines.close()
        for source in sources:
            source.close()
        pictures.close()
    if only_images:
        with open(os.path.join(out, "detections.json"), "w") as f:
            json.dump(summary, f, indent=2)
    seconds = time.perf_counter() - start
    print(f"{count} frames from {len(sources)} source(s) in {seconds:.1f} s ({count / max(seconds, 1e-9):.1f} frames/s)"
          f" -> {os.path.join(out, JSONL)}" + "".join(f"\n  video: {p}" for p in pictures.videos.written))
    return 0
