"""Run an exported detector without torch: ``load("model.onnx" | "model.xml").predict(images)``.

The file is one written by ``scratchdet export`` (the whole detector, see
:mod:`scratchdet.models.export`): uint8 images at the input size in, fixed-shape detections out. This
module needs numpy, Pillow and ONNX Runtime (``.onnx``) or OpenVINO (``.xml``), nothing else: of the
package it imports only :mod:`scratchdet.structures.image_io` (and the error types), which need no torch,
so it works where torch is not installed.

Images are read and brought to 8-bit RGB by the same functions ``model.predict`` and ``scratchdet detect``
use (``image_io``: EXIF orientation applied, 16-bit images stretched by their range, alpha dropped), and
resized to the input size as :func:`scratchdet.structures.image.resize_and_normalise` does (PIL ``resize``
with the model's filter, bilinear by default), so the pixels, and hence the detections, are those of
``model.predict``; the graph itself normalises with the model's mean and std.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .structures.image_io import array_to_rgb, read_image, resize_rgb, to_rgb8

__all__ = ["DETECTOR_FORMAT", "Detector", "load", "to_rgb", "resize_to_input"]

DETECTOR_FORMAT = "scratchdet.detector.v1"     # the same string as scratchdet.models.export.DETECTOR_FORMAT
OUTPUTS = ("num_detections", "boxes", "scores", "labels")


def to_rgb(image) -> Image.Image:
    """An image file path, a PIL image (any mode) or a uint8 ``[H, W]`` / ``[H, W, C]`` array (C in 1, 3, 4)
    -> PIL RGB, by the package's own reader and conversion (``scratchdet.structures.image_io``): a file is
    read upright per its EXIF orientation, 16-bit and float images are stretched by their range, alpha is
    dropped and grey repeated, exactly as for ``model.predict`` and ``scratchdet detect``."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return to_rgb8(image)
    if isinstance(image, np.ndarray):
        return array_to_rgb(image)
    raise TypeError(f"expected a PIL image, a uint8 HxWx3 array or an image path, got {type(image).__name__}")


def resize_to_input(image: Image.Image, input_size: Sequence[int], resize: str = "bilinear") -> np.ndarray:
    """RGB PIL image -> uint8 ``[3, H, W]`` at ``input_size`` (height, width), PIL's filter ``resize``."""
    resized = np.asarray(resize_rgb(image, int(input_size[0]), int(input_size[1]), resize), dtype=np.uint8)
    return np.ascontiguousarray(resized.transpose(2, 0, 1))


class Detector:
    """An exported detector and its metadata (``metadata``: the JSON-decoded export metadata:
    ``input_size``, ``mean``, ``std``, thresholds, ``class_names``, ...).

    ``detector(batch)`` runs the graph on uint8 ``[B, 3, H, W]`` at the input size and returns its raw
    fixed-shape outputs; :meth:`predict` takes images of any size.
    """

    def __init__(self, run: Callable[[np.ndarray], dict], metadata: dict, batch_size: int | None, backend: str):
        if metadata.get("format") != DETECTOR_FORMAT:
            raise ValueError(f"not a scratchdet detector export: metadata format {metadata.get('format')!r} "
                             f"(expected {DETECTOR_FORMAT!r}; export with `scratchdet export --nms`)")
        self._run = run
        self.metadata = metadata
        self.input_size = tuple(int(v) for v in metadata["input_size"])
        self.resize = metadata.get("resize", "bilinear")
        self.class_names = metadata.get("class_names")
        self.fixed_batch = batch_size      # None: dynamic batch
        self.backend = backend

    def __call__(self, batch: np.ndarray) -> dict:
        return self._run(np.ascontiguousarray(batch, dtype=np.uint8))

    def predict(self, images, batch_size: int = 16) -> list[dict]:
        """Detect objects in images of any size (PIL images, uint8 ``HxW[x3]`` arrays, paths).

        Returns one dict per image, like ``SSD.predict`` but with numpy arrays: ``boxes [n, 4]`` float32
        (x1, y1, x2, y2 in the image's own pixels), ``scores [n]`` float32, ``labels [n]`` int64 (1..C-1),
        best first.
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
        chunk = self.fixed_batch or int(batch_size)
        if chunk < 1:
            raise ValueError(f"predict: batch_size must be >= 1, got {batch_size}")
        h, w = self.input_size
        results = []
        for start in range(0, len(images), chunk):
            pils = [to_rgb(im) for im in images[start:start + chunk]]
            batch = np.stack([resize_to_input(p, self.input_size, self.resize) for p in pils])
            if self.fixed_batch and len(batch) < self.fixed_batch:      # a fixed-batch graph: pad with black images
                batch = np.concatenate([batch, np.zeros((self.fixed_batch - len(batch), 3, h, w), np.uint8)])
            out = self(batch)
            for i, p in enumerate(pils):
                n = int(out["num_detections"][i])
                iw, ih = p.size
                # input pixels -> normalised -> this image's pixels, as SSD.postprocess scales normalised boxes
                unit = out["boxes"][i, :n].astype(np.float32) / np.array([w, h, w, h], np.float32)
                results.append({"boxes": unit * np.array([iw, ih, iw, ih], np.float32),
                                "scores": out["scores"][i, :n].astype(np.float32),
                                "labels": out["labels"][i, :n].astype(np.int64)})
        return results


def _load_onnx(path: str, threads: int | None) -> Detector:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    metadata = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    first = session.get_inputs()[0]
    batch = first.shape[0] if isinstance(first.shape[0], int) else None
    return Detector(lambda x: dict(zip(OUTPUTS, session.run(list(OUTPUTS), {first.name: x}))), metadata, batch,
                    "onnxruntime")


def _load_openvino(path: str, device: str, threads: int | None) -> Detector:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path)
    metadata = {}
    if model.has_rt_info(["scratchdet"]):
        for key in model.get_rt_info()["scratchdet"]:
            metadata[key] = json.loads(model.get_rt_info(["scratchdet", key]).astype(str))
    shape = model.input(0).get_partial_shape()
    batch = None if shape[0].is_dynamic else shape[0].get_length()
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = core.compile_model(model, device, config)
    outputs = {name: compiled.output(name) for name in OUTPUTS}

    def run(x):
        result = compiled(x)
        return {name: result[port] for name, port in outputs.items()}
    return Detector(run, metadata, batch, "openvino")


def load(path: str | os.PathLike, device: str = "CPU", threads: int | None = None) -> Detector:
    """A whole-detector export: ``.onnx`` (ONNX Runtime, CPU) or ``.xml`` (OpenVINO on ``device``, float32
    precision so results match the eager model). ``threads``: the runtime's intra-op threads (default: the
    runtime's own choice, one per physical core)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"scratchdet.runtime.load: no such file: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".onnx":
        return _load_onnx(path, threads)
    if ext == ".xml":
        return _load_openvino(path, device, threads)
    raise ValueError(f"scratchdet.runtime.load: expected a .onnx or OpenVINO .xml file, got {path}")
