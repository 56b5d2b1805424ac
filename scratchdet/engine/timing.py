"""The one timing helper of every speed figure: interleaved rounds, medians, the same threads.

Timing paths one after the other lets a slow phase of a shared machine (another process, a
frequency change) land on one of them; :func:`time_interleaved` runs every path once per round
in a shuffled order instead, after a warm-up, and keeps every round's seconds, so the medians of
the paths saw the same conditions. Each timed call comes after untimed calls of the same path for
``settle_s`` seconds: a runtime's worker threads spin-wait after a call (ONNX Runtime's for tens of
milliseconds), and without the settling that spinning lands on the next path's timed calls
(measured on 2 cores: the demo network's torch paths took 2.5x their back-to-back time for ~100 ms
after an ONNX Runtime call, so interleaved medians said 7 ms where a user sees 3 ms).
:func:`onnxruntime_session` and :func:`openvino_model` open an exported graph with the thread count
torch uses, so every runtime gets the same cores.

Used by ``benchmarks/bench_runtimes.py`` and ``scratchdet compare``.
"""
from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Mapping

import torch

__all__ = ["time_interleaved", "medians_ms", "onnxruntime_session", "openvino_model", "runtime_threads"]


def runtime_threads() -> int:
    """The threads every runtime is given: torch's intra-op thread count."""
    return torch.get_num_threads()


def time_interleaved(runners: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1,
                     seed: int = 0, settle_s: float = 0.15) -> dict[str, list[float]]:
    """Seconds of each call of each runner: ``warmup`` untimed calls each, then ``rounds`` rounds,
    each calling every runner in a shuffled order (seeded): untimed calls for ``settle_s`` seconds
    (at least one call unless it is 0), then the timed one, so no path is timed while the previous
    path's threads still spin. Runs under ``torch.inference_mode``."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if settle_s < 0:
        raise ValueError(f"settle_s must be >= 0, got {settle_s}")
    times: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners)
    rng = random.Random(seed)
    with torch.inference_mode():
        for _ in range(warmup):
            for run in runners.values():
                run()
        for _ in range(rounds):
            rng.shuffle(order)
            for name in order:
                run = runners[name]
                if settle_s > 0:
                    settled = time.perf_counter() + settle_s
                    run()
                    while time.perf_counter() < settled:
                        run()
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
    return times


def medians_ms(times: Mapping[str, list[float]]) -> dict[str, float]:
    """The median of each runner's seconds, in milliseconds."""
    return {name: statistics.median(seconds) * 1000 for name, seconds in times.items()}


def onnxruntime_session(path: str, threads: int | None = None):
    """An ONNX Runtime CPU session of ``path``, all graph optimisations, ``threads`` intra-op
    threads (default :func:`runtime_threads`) and one inter-op thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads or runtime_threads(), 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def openvino_model(path: str, threads: int | None = None):
    """``path`` compiled by OpenVINO for the CPU: latency hint, f32, ``threads`` inference threads."""
    import openvino as ov

    core = ov.Core()
    return core.compile_model(core.read_model(path), "CPU", {
        "INFERENCE_NUM_THREADS": threads or runtime_threads(), "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32"})
