"""The fast inference path: fused network + ``scratchdet.ops.detect``, channels_last,
optional fp16/bf16 and CUDA-graph capture on CUDA.

    predictor = FastPredictor(model)                      # CPU: fp32, channels_last
    predictor = FastPredictor(model.cuda(), dtype=torch.float16, cuda_graph=True)
    boxes, scores, labels, num = predictor(batch)         # normalised [B, 3, S, S] batch
    results = predictor.predict(pil_images)               # the same arguments and results as SSD.predict
"""
from __future__ import annotations

import copy
import warnings

import torch

from . import onednn
from . import conv_backends
from .conv_backends import use_onednn_prepack, use_tuned_backends, use_winograd
from .fuse import fuse
from .ssd import predict_images
from .tiling import DEFAULT_OVERLAP, tiling_plan

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
            time) through Winograd F(4x4, 3x3) (:func:`scratchdet.ops.winograd_conv3x3`),
            outputs equal to the direct conv's within ~1e-5 relative (rounding). ``None``
            (default, CPU float32): each of those convs times Winograd F(4x4, 3x3), Winograd
            F(6x6, 3x3) and the direct conv the first time it sees an input shape and keeps the
            fastest
            (``conv_backends.use_tuned_backends``; which wins depends on the CPU and the layer:
            benchmarks/RESULTS.md), so the first call of a batch shape costs a few network runs
            more. ``conv_backend`` says what runs, :meth:`tactics` what each conv chose.
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
        if winograd and not cpu_fp32:
            raise ValueError(f"FastPredictor: winograd=True is for float32 on CPU, got {dtype} on {self.device.type}")
        tune = winograd is None and cpu_fp32
        if (onednn_prepack or winograd or tune) and self.model is model:   # never switch the caller's fused model
            self.model = copy.deepcopy(self.model)
        use_onednn_prepack(self.model, bool(onednn_prepack))
        direct = "onednn-prepacked" if onednn_prepack else "conv_bn_act"
        if tune and use_tuned_backends(self.model):
            self.conv_backend = f"tuned(winograd|winograd-f63|{direct})+{direct}"
        else:
            n_winograd = use_winograd(self.model, bool(winograd))
            self.conv_backend = "+".join((["winograd"] if n_winograd else []) + [direct])
        self.cuda_graph = cuda_graph
        self.graph_scope: str | None = None
        self._graphs: dict = {}

    def tactics(self) -> dict[tuple, str]:
        """What the tuned convs chose so far (empty before the first call, or when ``winograd``
        was given): ``{(weight shape, input shape, has residual): backend}``."""
        return conv_backends.tactics(self.model)

    # ------------------------------------------------------------------ core
    def _run(self, batch: torch.Tensor, settings: dict):
        loc, logits = self.model.forward_raw(batch)
        return self.model.detect(loc.float(), logits.float(), **settings)

    def _prepare(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.to(device=self.device, dtype=self.dtype).contiguous(memory_format=self.memory_format)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor, score_threshold: float | None = None,
                 nms_threshold: float | None = None, top_k: int | None = None, keep_top_k: int | None = None):
        """Normalised ``[B, 3, S, S]`` batch -> ``detect`` output ``(boxes, scores, labels, num)``,
        with the model's detection settings unless given here."""
        given = dict(score_threshold=score_threshold, nms_threshold=nms_threshold, top_k=top_k,
                     keep_top_k=keep_top_k)
        settings = {**self.model.detect_settings, **{k: v for k, v in given.items() if v is not None}}
        batch = self._prepare(batch)
        if not self.cuda_graph:
            return self._run(batch, settings)
        key = (tuple(batch.shape), tuple(sorted(settings.items())))
        if key not in self._graphs:
            self._graphs[key] = self._capture(batch, settings)
        static_in, graph, static_out, detect_outside = self._graphs[key]
        static_in.copy_(batch)
        graph.replay()
        if detect_outside:
            loc, logits = static_out
            return self.model.detect(loc.float(), logits.float(), **settings)
        return tuple(t.clone() for t in static_out)

    def _capture(self, batch: torch.Tensor, settings: dict):
        static_in = batch.clone()
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm up cuDNN algorithm choice and allocator outside the capture
                self._run(static_in, settings)
        torch.cuda.current_stream(self.device).wait_stream(side)
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._run(static_in, settings)
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
    def predict(self, images, score_threshold: float | None = None, nms_threshold: float | None = None,
                top_k: int | None = None, keep_top_k: int | None = None, batch_size: int = 16,
                tile: int | None = None, tile_overlap: float = DEFAULT_OVERLAP,
                tile_whole_image: bool = False) -> list[dict]:
        """``SSD.predict`` on the fused network: the same arguments (tiling included), preprocessing and results."""
        settings = self.model.resolve_detect_settings(score_threshold=score_threshold, nms_threshold=nms_threshold,
                                                      top_k=top_k, keep_top_k=keep_top_k)
        tiling = tiling_plan(tile, tile_overlap, tile_whole_image, settings)

        def detect_batch(batch):
            return self(batch, score_threshold=score_threshold, nms_threshold=nms_threshold, top_k=top_k,
                        keep_top_k=keep_top_k)
        return predict_images(detect_batch, self.model.preprocess, images, batch_size, tiling)
