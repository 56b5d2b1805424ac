"""Fused inference of ScratchDet300 (Root-ResNet-34 SSD, 300x300), end to end and network alone.

Anchors, same group, same run:
- eager:       the unfused model (NCHW fp32) + a torchvision-style postprocess
- torchscript: torch.jit.freeze + optimize_for_inference of the network + the same postprocess
- fused:       FastPredictor (scratchdet.fuse, channels_last) + scratchdet.ops.detect; on CPU its 3x3
               stride-1 convs run through Winograd F(4x4, 3x3) (scratchdet.ops.winograd_conv3x3) and the
               others through oneDNN-prepacked weights (scratchdet.models.onednn)
- fused_direct: the same without Winograd: every conv through oneDNN-prepacked weights (CPU)
- fused_op:    the same, each conv through the scratchdet.conv_bn_act op (CPU)
The ``network`` groups time the raw outputs only, so the conv fusion gain shows on its own.
"""
import warnings

import pytest
import torch
import torchvision

from scratchdet.models import SSDRawOutputs, build_model
from scratchdet.models.fast_inference import FastPredictor
from scratchdet.ops.reference import decode
from conftest import cuda_timer

warnings.filterwarnings("ignore")


def torchvision_postprocess(loc, logits, priors, variances=(0.1, 0.2), score_threshold=0.01, nms=0.45, top_k=400,
                            keep_top_k=200):
    """What a torchvision user writes: per image, flatten (prior, class) candidates, batched_nms."""
    out = []
    scores_all = torch.softmax(logits.float(), -1)
    boxes_all = decode(loc.float(), priors, variances).clamp(0, 1)
    for b in range(loc.shape[0]):
        scores, boxes = scores_all[b, :, 1:], boxes_all[b]
        keep_b, keep_s, keep_l = [], [], []
        for c in range(scores.shape[1]):
            s = scores[:, c]
            idx = (s > score_threshold).nonzero().squeeze(1)
            idx = idx[s[idx].argsort(descending=True)[:top_k]]
            keep_b.append(boxes[idx]), keep_s.append(s[idx]), keep_l.append(torch.full_like(idx, c + 1))
        bx, sc, lb = torch.cat(keep_b), torch.cat(keep_s), torch.cat(keep_l)
        keep = torchvision.ops.batched_nms(bx, sc, lb, nms)[:keep_top_k]
        out.append((bx[keep], sc[keep], lb[keep]))
    return out


_CACHE = {}


def _setup(device):
    if device not in _CACHE:
        torch.manual_seed(0)
        # background_prior=0: an untrained model then scores many candidates over the 0.01 threshold,
        # the worst case for the postprocess (with the prior init almost none pass)
        model = build_model("root_resnet34_ssd300", background_prior=0.0).eval().to(device)
        x = torch.randn(1, 3, 300, 300, device=device)
        with torch.no_grad():
            ts = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(SSDRawOutputs(model).eval(), x)))
        cpu = device == "cpu"
        fast_direct = FastPredictor(model, winograd=False) if cpu else None
        fast_op = FastPredictor(model, onednn_prepack=False, winograd=False) if cpu else None
        _CACHE[device] = (model, ts, FastPredictor(model), fast_direct, fast_op)
    return _CACHE[device]


def _paths(device, batch):
    model, ts, fast, fast_direct, fast_op = _setup(device)
    x = torch.randn(batch, 3, 300, 300, device=device, generator=torch.Generator(device).manual_seed(batch))
    xc = x.contiguous(memory_format=torch.channels_last)
    priors = model.priors
    end_to_end = {
        "eager": lambda: torchvision_postprocess(*model.forward_raw(x), priors),
        "torchscript": lambda: torchvision_postprocess(*ts(x), priors),
        "fused": lambda: fast(xc),
        "fused_direct": lambda: fast_direct(xc),
        "fused_op": lambda: fast_op(xc),
    }
    network = {
        "eager": lambda: model.forward_raw(x),
        "torchscript": lambda: ts(x),
        "fused": lambda: fast.model.forward_raw(xc),
        "fused_direct": lambda: fast_direct.model.forward_raw(xc),
        "fused_op": lambda: fast_op.model.forward_raw(xc),
    }
    return end_to_end, network


@pytest.mark.parametrize("impl", ["eager", "torchscript", "fused", "fused_direct", "fused_op"])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("scope", ["end_to_end", "network"])
def test_fused_inference_cpu(benchmark, scope, batch, impl):
    benchmark.group = f"fused inference cpu {scope} B={batch}"
    end_to_end, network = _paths("cpu", batch)
    fn = (end_to_end if scope == "end_to_end" else network)[impl]
    with torch.inference_mode():
        fn()
        benchmark.pedantic(fn, rounds=5 if batch == 1 else 1, iterations=1, warmup_rounds=0)


@pytest.mark.cuda
@pytest.mark.parametrize("impl", ["eager_fp32", "fused_fp16_graph"])
@pytest.mark.parametrize("batch", [1, 32])
def test_fused_inference_cuda(benchmark, batch, impl):
    """GPU: eager fp32 + torchvision postprocess vs fp16 channels_last fused + CUDA graph (network + detect).
    Images/s at B=32 = 32 / mean time."""
    benchmark.group = f"fused inference cuda end_to_end B={batch}"
    model = _setup("cuda")[0]
    x = torch.randn(batch, 3, 300, 300, device="cuda")
    if impl == "eager_fp32":
        fn = lambda: torchvision_postprocess(*model.forward_raw(x), model.priors)  # noqa: E731
    else:
        fast = FastPredictor(model, dtype=torch.float16, cuda_graph=True)
        fn = lambda: fast(x)  # noqa: E731
    with torch.inference_mode():
        for _ in range(3):
            fn()
        benchmark(cuda_timer(fn))
    benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.mean
