"""The Winograd convolution's GEMMs on each path (``SCRATCHDET_WINOGRAD_GEMM``: our kernel, BLAS), per
layer of ScratchDet300, F(4x4, 3x3) and F(6x6, 3x3), fused bias + residual + ReLU, channels_last fp32.

The GEMM path is read once per process, so each path runs in its own process; processes alternate
path by path for ``--rounds`` rounds and the table gives each layer's median over the rounds of
each round's median call. Outputs of every path are checked against the direct conv first.

    python benchmarks/bench_winograd_gemm.py [--batch 1] [--rounds 3] [--threads 2] [--paths native,blas]
    pytest benchmarks/bench_winograd_gemm.py      # one short round on the smallest layer: cannot rot
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

# (H = W, C_in, C_out): ScratchDet300's 3x3 stride-1 conv shapes, root block to the last stage
LAYERS = [(300, 32, 64), (300, 64, 64), (150, 64, 64), (75, 128, 128), (38, 256, 256), (19, 512, 512),
          (10, 512, 512)]
TILES = ("f43", "f63")
PATHS = ("auto", "native", "blas", "aten")   # what SCRATCHDET_WINOGRAD_GEMM accepts

_WORKER = r"""
import json, statistics, sys, time
import torch
import torch.nn.functional as F
from scratchdet import ops
batch, threads, calls, layers = json.loads(sys.argv[1])
torch.set_num_threads(threads)
out = {}
for h, ci, co in layers:
    g = torch.Generator().manual_seed(h * 1000 + ci)
    x = torch.randn(batch, ci, h, h, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(co, ci, 3, 3, generator=g) / (9 * ci) ** 0.5
    b = torch.randn(co, generator=g)
    r = torch.randn(batch, co, h, h, generator=g).contiguous(memory_format=torch.channels_last)
    want = torch.relu(F.conv2d(x, w, b, padding=1) + r)
    for name, pack in (("f43", ops.winograd_f43_pack), ("f63", ops.winograd_f63_pack)):
        packed = pack(w)
        got = ops.winograd_conv3x3(x, packed, b, r, True)
        err = float((got - want).abs().max() / want.abs().max())
        if err > 1e-4:
            raise SystemExit(f"{name} {h}x{h} {ci}->{co}: relative error {err:.2e} against the direct conv")
        ops.winograd_conv3x3(x, packed, b, r, True)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            ops.winograd_conv3x3(x, packed, b, r, True)
            times.append(time.perf_counter() - start)
        out[f"{h}:{ci}->{co}:{name}"] = statistics.median(times) * 1e3
print(json.dumps(out))
"""


def run_path(path: str, batch: int, threads: int, calls: int, layers: list) -> dict[str, float]:
    """Median ms per call of each layer and tile size, on GEMM path ``path``, in a fresh process."""
    env = dict(os.environ, SCRATCHDET_WINOGRAD_GEMM=path)
    args = json.dumps([batch, threads, calls, layers])
    done = subprocess.run([sys.executable, "-c", _WORKER, args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"GEMM path {path}: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(paths: list[str], batch: int, threads: int, rounds: int, calls: int, layers: list) -> dict:
    """{path: {layer key: median over rounds}}, the paths' processes alternating round by round."""
    runs: dict[str, list[dict[str, float]]] = {p: [] for p in paths}
    for r in range(rounds):
        for path in paths if r % 2 == 0 else paths[::-1]:
            runs[path].append(run_path(path, batch, threads, calls, layers))
    return {p: {k: statistics.median(run[k] for run in runs[p]) for k in runs[p][0]} for p in paths}


def table(result: dict, layers: list) -> str:
    paths = list(result)
    lines = ["| layer | tiles | " + " | ".join(f"{p} ms" for p in paths) + " |",
             "|---|---|" + "--:|" * len(paths)]
    for h, ci, co in layers:
        for tile in TILES:
            key = f"{h}:{ci}->{co}:{tile}"
            lines.append(f"| {ci}->{co} @{h}x{h} | {tile} | " + " | ".join(f"{result[p][key]:.2f}" for p in paths)
                         + " |")
    for tile in TILES:
        sums = [sum(v for k, v in result[p].items() if k.endswith(tile)) for p in paths]
        lines.append(f"| sum | {tile} | " + " | ".join(f"**{s:.1f}**" for s in sums) + " |")
    return "\n".join(lines)


def test_gemm_paths_run_and_agree():
    # one small layer: every path's output is checked against the direct conv in its worker
    result = compare(["native", "blas"], batch=1, threads=1, rounds=1, calls=1, layers=[[10, 16, 24]])
    assert all(len(r) == len(TILES) for r in result.values())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=11)
    parser.add_argument("--paths", default="native,blas")
    args = parser.parse_args(argv)
    paths = [p for p in args.paths.split(",") if p]
    if not paths or any(p not in PATHS for p in paths):
        parser.error(f"--paths: a comma-separated list of {', '.join(PATHS)}; got {args.paths!r}")
    for name in ("batch", "threads", "rounds", "calls"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected a positive integer, got {getattr(args, name)}")
    import torch

    from scratchdet.engine.compare import cpu_name
    print(f"B={args.batch}, {args.threads} threads, medians of {args.calls} calls, median of {args.rounds} "
          f"process rounds per path; torch {torch.__version__}; CPU: {cpu_name()}, "
          f"{torch.backends.cpu.get_cpu_capability()}")
    print(table(compare(paths, args.batch, args.threads, args.rounds, args.calls, [list(t) for t in LAYERS]),
                LAYERS))


if __name__ == "__main__":
    main()
