"""CPU inference of ScratchDet300 against ONNX Runtime and OpenVINO on the same network, same threads.

One process, one exported network (the project's own ONNX export of root_resnet34_ssd300, 21
classes, 300x300, BatchNorm statistics randomised so folding matters), the same thread count for
every runtime (torch.get_num_threads()):

- eager:            the unfused model's forward_raw, NCHW fp32
- fast_network:     FastPredictor's network as shipped (fused, channels_last, prepacked oneDNN, and per
                    3x3 conv Winograd or direct, whichever its first call timed faster on this machine)
- fast_direct:      the same without Winograd (winograd=False): what the tuning buys
- fast_end_to_end:  FastPredictor(batch): the network + scratchdet.ops.detect
- onnxruntime:      CPU execution provider, ORT_ENABLE_ALL
- openvino:         CPU plugin, LATENCY hint, f32 precision hint

Every runtime's outputs are compared with eager's (max relative error <= 1e-4) before anything is
timed. Then warm-up, then interleaved rounds in a shuffled order, and the medians, recorded in the
test's ``extra_info`` and printed as a table (benchmarks/RESULTS.md, "CPU runtimes"). With
``--benchmark-disable`` (CI) one round runs, so the comparison itself cannot rot.
"""
import os
import warnings

import pytest
import torch
import torch.nn as nn

from scratchdet.models import build_model
from scratchdet.models.export import export_onnx
from scratchdet.engine.timing import medians_ms, onnxruntime_session, openvino_model, time_interleaved
from scratchdet.models.fast_inference import FastPredictor

warnings.filterwarnings("ignore")

ROUNDS = 9                       # timed rounds per path (interleaved)
_CACHE = {}


def _model():
    if "model" not in _CACHE:
        torch.manual_seed(0)
        model = build_model("root_resnet34_ssd300", background_prior=0.0).eval()
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        _CACHE["model"] = model
    return _CACHE["model"]


def _onnx_path(tmp_path_factory):
    if "onnx" not in _CACHE:
        _CACHE["onnx"] = export_onnx(_model(), str(tmp_path_factory.mktemp("onnx") / "scratchdet300.onnx"))
    return _CACHE["onnx"]


def _runners(onnx_path, threads):
    """name -> callable(batch as numpy / torch) returning (loc, logits) as torch tensors (or detect output)."""
    model = _model()
    fast = FastPredictor(model)
    direct = FastPredictor(model, winograd=False)
    runners = {
        "eager": lambda x: model.forward_raw(x),
        "fast_network": lambda x: fast.model.forward_raw(fast._prepare(x)),
        "fast_direct": lambda x: direct.model.forward_raw(direct._prepare(x)),
        "fast_end_to_end": lambda x: fast(x),
    }
    try:
        session = onnxruntime_session(onnx_path, threads)
        runners["onnxruntime"] = lambda x: tuple(torch.from_numpy(o) for o in session.run(None, {"images": x.numpy()}))
    except ImportError:
        pass
    try:
        compiled = openvino_model(onnx_path, threads)
        request = compiled.create_infer_request()

        def openvino_run(x):
            result = request.infer({"images": x.numpy()})
            return tuple(torch.from_numpy(result[compiled.output(name)].copy()) for name in ("loc", "logits"))

        runners["openvino"] = openvino_run
    except ImportError:
        pass
    return runners


def _rel_err(a, b):
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


@pytest.mark.parametrize("batch", [1, 8])
def test_cpu_runtimes_same_network_same_threads(benchmark, tmp_path_factory, batch):
    benchmark.group = f"CPU runtimes: ScratchDet300 B={batch}"
    threads = torch.get_num_threads()
    runners = _runners(_onnx_path(tmp_path_factory), threads)
    if set(runners) == {"eager", "fast_network", "fast_direct", "fast_end_to_end"}:
        pytest.skip("neither onnxruntime nor openvino is installed (pip install 'scratchdet[test]')")
    x = torch.randn(batch, 3, 300, 300, generator=torch.Generator().manual_seed(batch))
    with torch.inference_mode():
        want = runners["eager"](x)
        for name, run in runners.items():    # outputs agree before anything is timed
            if name in ("eager", "fast_end_to_end"):
                continue
            got = run(x)
            for a, b in zip(got, want):
                assert _rel_err(a, b) <= 1e-4, (name, _rel_err(a, b))
        boxes, scores, labels, num = runners["fast_end_to_end"](x)
        assert num.shape == (batch,) and (num > 0).all()

    rounds = 1 if benchmark.disabled else ROUNDS
    times = {}

    def interleaved():     # the package's one timing helper (scratchdet compare times with it too)
        times.update(time_interleaved({name: (lambda run=run: run(x)) for name, run in runners.items()},
                                      rounds, seed=batch))

    benchmark.pedantic(interleaved, rounds=1, iterations=1)
    medians = medians_ms(times)
    benchmark.extra_info.update({f"{k}_ms": round(v, 1) for k, v in medians.items()})
    benchmark.extra_info["threads"] = threads
    best_other = min(medians[k] for k in ("onnxruntime", "openvino") if k in medians)
    benchmark.extra_info["fast_network_vs_best_runtime"] = round(best_other / medians["fast_network"], 3)
    lines = [f"B={batch}, {threads} threads, median of {rounds} interleaved rounds:"]
    lines += [f"  {name:<16} {ms:8.1f} ms  ({best_other / ms:.2f}x the best runtime)" for name, ms in medians.items()]
    print("\n" + "\n".join(lines))
    if os.environ.get("SCRATCHDET_RUNTIMES_REPORT"):
        with open(os.environ["SCRATCHDET_RUNTIMES_REPORT"], "a") as f:
            f.write("\n".join(lines) + "\n")
