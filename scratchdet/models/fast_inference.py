"""The fast inference path: fused network + ``scratchdet.ops.detect``, channels_last,
optional fp16/bf16 and CUDA-graph capture on CUDA.

    predictor = FastPredictor(model)                      # CPU: fp32, channels_last
    predictor = FastPredictor(model.cuda(), dtype=torch.float16, cuda_graph=True)
    boxes, scores, labels, num = predictor(batch)         # normalised [B, 3, S, S] batch
    results = predictor.predict(pil_images)               # like SSD.predict

This is the documented equivalent of ``model.predict(..., fast=True)``.
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F

from .. import ops
from ..constants import MEAN, STD
from . import onednn
from .fuse import fuse, use_onednn_prepack, use_winograd

__all__ = ["FastPredictor"]


class FastPredictor:
    """Inference-only wrapper of an SSD (the original model is not modified).

    Args:
        model: an SSD in eval mode (fused with :func:`scratchdet.fuse` unless it already is).
        dtype: network dtype; float16/bfloat16 are for CUDA (the raw outputs are cast
            to float32 before ``detect``). Default float32.
        channels_last: run the network in channels_last (default True).
        cuda_graph: on CUDA, capture network + detect in one CUDA graph per batch shape
            and replay it. If ``detect`` cannot be captured (the reference fallback
            synchronises), only the network is captured and ``graph_scope`` says so.
        onednn_prepack: on CPU in float32, run the fused convs through weights prepacked
            once in oneDNN's layout (:mod:`scratchdet.models.onednn`) instead of the
            ``conv_bn_act`` op. ``None`` (default): whenever this torch build has oneDNN.
        winograd: on CPU in float32, run the 3x3 stride-1 convs (most of the network's
            time) through Winograd F(4x4, 3x3) (:func:`scratchdet.ops.winograd_conv3x3`):
            1.6-2x faster than oneDNN on those layers (benchmarks/RESULTS.md), outputs
            equal to the direct conv's within ~1e-5 relative (rounding). ``None``
            (default): on CPU float32. ``conv_backend`` says what runs.
    """

    def __init__(self, model, dtype: torch.dtype = torch.float32, channels_last: bool = True,
                 cuda_graph: bool = False, onednn_prepack: bool | None = None, winograd: bool | None = None):
        self.model = model if hasattr(model, "fuse_report") else fuse(model)
        self.device = self.model.priors.device
        if dtype != torch.float32 and self.device.type != "cuda":
            warnings.warn(f"FastPredictor: {dtype} on {self.device.type} is slow or unsupported; "
                          "it is meant for CUDA", UserWarning, stacklevel=2)
        if cuda_graph and self.device.type != "cuda":
            raise ValueError("FastPredictor: cuda_graph=True needs a model on a CUDA device")
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(dtype=dtype, memory_format=self.memory_format)
        self.model.priors = self.model.priors.float()
        cpu_fp32 = self.device.type == "cpu" and dtype == torch.float32
        if onednn_prepack is None:
            onednn_prepack = cpu_fp32 and onednn.available()
        elif onednn_prepack and not cpu_fp32:
            raise ValueError(f"FastPredictor: onednn_prepack=True is for float32 on CPU, got {dtype} on "
                             f"{self.device.type}")
        if winograd is None:
            winograd = cpu_fp32
        elif winograd and not cpu_fp32:
            raise ValueError(f"FastPredictor: winograd=True is for float32 on CPU, got {dtype} on {self.device.type}")
        if (onednn_prepack or winograd) and self.model is model:   # never switch the caller's own fused model
            self.model = copy.deepcopy(self.model)
        use_onednn_prepack(self.model, bool(onednn_prepack))
        n_winograd = use_winograd(self.model, bool(winograd))
        backends = (["winograd"] if n_winograd else []) + ["onednn-prepacked" if onednn_prepack else "conv_bn_act"]
        self.conv_backend = "+".join(backends)
        self.cuda_graph = cuda_graph
        self.graph_scope: str | None = None
        self._graphs: dict = {}

    # ------------------------------------------------------------------ core
    def _run(self, batch: torch.Tensor):
        loc, logits = self.model.forward_raw(batch)
        return self.model.detect(loc.float(), logits.float())

    def _prepare(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.to(device=self.device, dtype=self.dtype).contiguous(memory_format=self.memory_format)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor):
        """Normalised ``[B, 3, S, S]`` batch -> ``detect`` output ``(boxes, scores, labels, num)``."""
        batch = self._prepare(batch)
        if not self.cuda_graph:
            return self._run(batch)
        key = tuple(batch.shape)
        if key not in self._graphs:
            self._graphs[key] = self._capture(batch)
        static_in, graph, static_out, detect_outside = self._graphs[key]
        static_in.copy_(batch)
        graph.replay()
        if detect_outside:
            loc, logits = static_out
            return self.model.detect(loc.float(), logits.float())
        return tuple(t.clone() for t in static_out)

    def _capture(self, batch: torch.Tensor):
        static_in = batch.clone()
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm up cuDNN algorithm choice and allocator outside the capture
                self._run(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._run(static_in)
            self.graph_scope = "network+detect"
            return static_in, graph, static_out, False
        except RuntimeError as exc:  # detect synchronises with the host: capture the network alone
            warnings.warn(f"FastPredictor: detect could not be captured in a CUDA graph ({exc}); "
                          "capturing the network only", UserWarning, stacklevel=3)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.model.forward_raw(static_in)
            self.graph_scope = "network"
            return static_in, graph, static_out, True

    # ------------------------------------------------------------------ images in, detections out
    @torch.inference_mode()
    def predict(self, images, batch_size: int = 16) -> list[dict]:
        """Like ``SSD.predict``: PIL images or ``[3, H, W]`` tensors -> one dict per image with
        ``boxes`` (pixels of that image), ``scores`` and ``labels``."""
        from .ssd import _to_chw_float

        if not isinstance(images, (list, tuple)):
            images = [images]
        size = self.model.image_size
        mean = torch.tensor(MEAN, device=self.device).view(3, 1, 1)
        std = torch.tensor(STD, device=self.device).view(3, 1, 1)
        results = []
        for start in range(0, len(images), batch_size):
            chunk = [_to_chw_float(img).to(self.device) for img in images[start:start + batch_size]]
            sizes = [(t.shape[2], t.shape[1]) for t in chunk]
            batch = torch.stack([(F.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False,
                                                antialias=True)[0] - mean) / std for t in chunk])
            boxes, scores, labels, num = self(batch)
            for i, (w, h) in enumerate(sizes):
                n = int(num[i])
                scale = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
                results.append({"boxes": (boxes[i, :n] * scale).cpu(), "scores": scores[i, :n].cpu(),
                                "labels": labels[i, :n].cpu()})
        return results
