"""`scratchdet compare`: a two-candidate comparison through the CLI, resume after a kill, the Root-ResNet
specs and auto:N, the Pareto fronts, the one timing helper, and bad arguments (one line, exit 2)."""
import json
import os
import time
import subprocess
import sys

import pytest
import torch

import scratchdet.engine.compare as compare_module
from scratchdet.cli import main
from scratchdet.data import synth
from scratchdet.engine.compare import (Comparison, CompareError, _split_models, parse_budget, parse_candidates,
                                       pareto_fronts)
from scratchdet.engine.timing import medians_ms, time_interleaved
from scratchdet.engine.trainer import Trainer
from scratchdet.models import build_model
from scratchdet.models.registry import resolve_config
from scratchdet.models.search_space import LADDER, parse_root_resnet_spec, root_resnet_args
from scratchdet.structures.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_MODULE = os.path.join(REPO, "docs", "compare_user_backbone.py")
TINY_SPEC = "root_resnet:w=8,r=4,rs=2,i=64"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("compare") / "data")
    synth.generate(root, 12, 6, seed=0, image_size=64)
    return root


def cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "scratchdet", "compare", *args], capture_output=True, text=True,
                          timeout=900, env=env)


def test_two_candidates_through_the_cli_write_report_plot_and_json(tiny_data, tmp_path):
    out = tmp_path / "cmp"
    proc = cli("--data", tiny_data, "--models", f"{TINY_SPEC},{USER_MODULE}:TinyPlainNet", "--input-size", "64",
               "--budget", "10it", "--batch-size", "4", "--workers", "0", "--timing-rounds", "2",
               "--runtimes", "eager,fast,onnxruntime", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[1/2] root_resnet:w=8,r=4,rs=2,i=64 @64, seed 0: training for 10it" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["budget"] == "10it" and len(results["runs"]) == 2 and len(results["rows"]) == 2
    for run in results["runs"]:
        assert run["status"] == "done" and run["iterations"] == 10 and 0.0 <= run["map"] <= 1.0
        assert run["ap"] and set(run["ap"]) <= set(synth.CLASSES) and "map_small" in run   # classes in val
        assert run["params"] > 0 and run["flops"] > 0 and run["train_peak_mb"] > run["infer_peak_mb"] > 0
        assert set(run["latency_ms"]) >= {"eager", "fast"} and all(v > 0 for v in run["latency_ms"].values())
        assert set(run["throughput"]) == set(run["latency_ms"]) and run["threads"] >= 1
        assert "onnxruntime" in run["latency_ms"] or "onnx" in run["timing_errors"]
    assert all(row["front"] >= 0 for row in results["rows"])
    assert [row["front"] for row in results["rows"]] == sorted(row["front"] for row in results["rows"])
    report = (out / "report.md").read_text()
    assert "| Front | Model | Input | mAP | AP small | Params (M) | GFLOPs | Best latency B=1 (ms) |" in report
    assert "`root_resnet:w=8,r=4,rs=2,i=64 @64`" in report and "TinyPlainNet @64`" in report
    assert "AP per class (%)" in report and "![mAP against latency](pareto.png)" in report
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG" and (out / "pareto.png").stat().st_size > 10_000
    run_dirs = sorted(os.listdir(out / "runs"))
    assert len(run_dirs) == 2
    for d in run_dirs:
        assert (out / "runs" / d / "result.json").exists() and (out / "runs" / d / "model_final.pt").exists()


def _fake_timer(runners, rounds, warmup=1, seed=0):
    """Deterministic seconds, so two comparisons' reports can be compared byte for byte."""
    return {name: [0.001 * (1 + i)] * rounds for i, name in enumerate(runners)}


def test_a_killed_comparison_resumes_to_the_same_report(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(compare_module, "time_interleaved", _fake_timer)
    candidates = parse_candidates(f"{TINY_SPEC},root_resnet:w=8,r=4,i=64", [None])
    common = dict(batch_size=4, workers=0, runtimes=("eager", "fast"), timing_rounds=1, log=lambda *_: None,
                  train_overrides={"ckpt_every": 4})
    budget = parse_budget("10it")
    reference = Comparison(tiny_data, candidates, budget, str(tmp_path / "ref"), **common).run()

    real_step, calls = Trainer._step, {"n": 0}

    def dies_in_the_second_run(self, images, targets):
        calls["n"] += 1
        if calls["n"] == 10 + 6:                     # run 2, after its checkpoint at iteration 4
            raise KeyboardInterrupt("simulated kill")
        return real_step(self, images, targets)

    monkeypatch.setattr(Trainer, "_step", dies_in_the_second_run)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        Comparison(tiny_data, candidates, budget, str(out), **common).run()
    monkeypatch.setattr(Trainer, "_step", real_step)
    first, second = (out / "runs" / f"{c.key}_seed0" for c in candidates)
    assert (first / "result.json").exists() and not (second / "result.json").exists()
    assert not (out / "report.md").exists()
    with pytest.raises(CompareError, match="already holds comparison runs: pass --resume"):
        Comparison(tiny_data, candidates, budget, str(out), **common).run()
    seen = []
    resumed = Comparison(tiny_data, candidates, budget, str(out), resume=True,
                         **{**common, "log": seen.append}).run()
    assert "finished earlier" in seen[0] and "finished earlier" not in seen[1]
    assert resumed["report"] == reference["report"]
    assert (out / "report.md").read_text() == (tmp_path / "ref" / "report.md").read_text()
    assert [r["map"] for r in resumed["runs"]] == [r["map"] for r in reference["runs"]]
    with pytest.raises(CompareError, match="trained with --budget 10it, not 12it: resume with --budget 10it"):
        Comparison(tiny_data, candidates, parse_budget("12it"), str(out), resume=True, **common).run()


def test_latency_comes_from_the_one_timing_helper():
    calls = []
    times = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=5, warmup=2,
                             settle_s=0)
    assert calls[:4] == ["a", "b", "a", "b"] and len(calls) == 4 + 10          # warm-up, then 5 rounds of each
    assert all(sorted(calls[4 + 2 * i:6 + 2 * i]) == ["a", "b"] for i in range(5))   # each once per round
    assert {k: len(v) for k, v in times.items()} == {"a": 5, "b": 5}
    calls.clear()       # each timed call follows untimed calls of the same path for settle_s seconds
    runs = {name: (lambda name=name: (calls.append(name), time.sleep(0.002))) for name in "ab"}
    times = time_interleaved(runs, rounds=3, warmup=1, settle_s=0.02)
    assert calls[:2] == ["a", "b"] and calls.count("a") >= 1 + 3 * 6 and calls.count("b") >= 1 + 3 * 6
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    with pytest.raises(ValueError, match="settle_s must be >= 0"):
        time_interleaved({"a": lambda: None}, rounds=1, settle_s=-1)
    assert medians_ms({"x": [0.001, 0.003, 0.002]}) == {"x": pytest.approx(2.0)}
    with open(os.path.join(REPO, "benchmarks", "bench_runtimes.py"), encoding="utf-8") as f:
        bench = f.read()
    assert "from scratchdet.engine.timing import" in bench and "time_interleaved(" in bench
    assert "perf_counter" not in bench            # no second timing loop
    assert compare_module.time_interleaved is time_interleaved


def test_root_resnet_specs_build_and_keep_their_shapes():
    assert parse_root_resnet_spec("root_resnet:") == {"w": 16, "d": (1, 1, 1, 1), "rs": 1, "s": 3, "i": 128,
                                                      "hbn": 0, "r": 8, "e": 32}
    for spec, priors in [("root_resnet:w=8,d=1-2-1-1,r=4,rs=2,s=2,i=96", None), ("root_resnet:w=8,i=128", None),
                         ("root_resnet:w=8,rs=2,s=1,e=24,hbn=1,i=160", None)]:
        model = build_model(spec, num_classes=3).eval()
        assert model.config.name == spec
        size = model.config.image_size
        with torch.no_grad():
            loc, logits = model.forward_raw(torch.zeros(1, 3, size, size))
        assert loc.shape[1] == logits.shape[1] == model.priors.shape[0]     # the layout matches the network
    args = root_resnet_args("root_resnet:w=8,rs=2,s=1,i=128")
    assert args["source_stages"] == (4,) and args["root_stride"] == 2 and args["extra_paddings"] == (1, 1)
    assert root_resnet_args("root_resnet:i=300")["extra_paddings"] == (1, 1, 1, 0)     # 19 -> 10 -> 5 -> 3 -> 1
    for spec in LADDER:
        resolve_config(spec)
    for bad, message in [("root_resnet:q=3", "cannot read 'q=3'"), ("root_resnet:d=1-1-1", "four block counts"),
                         ("root_resnet:rs=3", "rs='3' must be a whole number between 1 and 2"),
                         ("root_resnet:w=0", "w='0' must be"), ("root_resnet:w=8,w=9", "w is given twice")]:
        with pytest.raises(ConfigError, match=message):
            resolve_config(bad)


def test_models_split_auto_and_fronts():
    assert _split_models("root_resnet:w=16,d=1-1-1-1,root_resnet_demo,timm:x,a.py:F,root_resnet:i=96") == [
        "root_resnet:w=16,d=1-1-1-1", "root_resnet_demo", "timm:x", "a.py:F", "root_resnet:i=96"]
    picks = [c.name for c in parse_candidates("auto:4", [None])]
    assert len(picks) == 4 and picks[0] == LADDER[0] and picks[-1] == LADDER[-1]
    spec = parse_candidates("root_resnet:w=8,i=300", [96])[0]      # the spec's layout follows the size
    assert spec.model == "root_resnet:w=8,i=96" and resolve_config(spec.model)["extra_paddings"] == (1, 0)
    sized = parse_candidates("root_resnet_demo,timm:mobilenetv3_small_050", [96, 128])
    assert [(c.name, c.image_size) for c in sized] == [("root_resnet_demo", 96), ("root_resnet_demo", 128),
                                                        ("timm:mobilenetv3_small_050", 96),
                                                        ("timm:mobilenetv3_small_050", 128)]
    # (accuracy, latency): the second dominates the first; the third is on the front by its speed
    assert pareto_fronts([(0.5, 10.0), (0.6, 8.0), (0.3, 2.0), (0.6, 8.0)]) == [1, 0, 0, 0]
    assert parse_budget("10m").seconds == 600 and parse_budget("2000it").iterations == 2000


@pytest.mark.parametrize("args, message", [
    (["--models", "nosuchmodel"], "unknown model 'nosuchmodel'"),
    (["--models", "foo:bar"], "unknown model 'foo:bar'"),
    (["--models", "missing_module.py:Net"], "user module not found: missing_module.py"),
    (["--models", "BROKEN:Net"], "cannot import user module"),
    (["--models", "EMPTY:Net"], "has no callable 'Net'"),
    (["--models", "root_resnet:q=1"], "cannot read 'q=1'"),
    (["--models", "auto:0"], "expected auto:N"),
    (["--models", "root_resnet18_ssd300", "--input-size", "256"], "does not fit --input-size 256"),
    (["--budget", "5it"], "too small to evaluate"),
    (["--budget", "3s"], "too small to evaluate"),
    (["--budget", "soon"], "cannot read 'soon' as a duration"),
    (["--input-size", "12"], "--input-size: each size must be between 32 and 2048"),
    (["--runtimes", "tensorrt"], "--runtimes: unknown ['tensorrt']"),
    (["--seeds", "0,0"], "--seeds: expected distinct"),
    (["--set", "nope=1"], "--set 'nope=1': expected KEY=VALUE"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--data", "no/such/folder"], "no/such/folder"),
])
def test_bad_arguments_are_one_line_exit_2_and_write_nothing(args, message, tiny_data, tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("def Net(:\n    pass\n")
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    args = [str(broken) + ":Net" if a == "BROKEN:Net" else str(empty) + ":Net" if a == "EMPTY:Net" else a
            for a in args]
    options = {"--data": tiny_data, "--models": TINY_SPEC, "--budget": "10it"}
    for key, value in zip(args[::2], args[1::2]):
        options[key] = value
    out = tmp_path / "out"
    argv = ["compare", *[x for kv in options.items() for x in kv], "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("scratchdet compare: error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_a_bad_user_module_through_the_cli_has_no_traceback(tmp_path, tiny_data):
    bad = tmp_path / "bad.py"
    bad.write_text("import no_such_package_here\n")
    proc = cli("--data", tiny_data, "--models", f"{bad}:Net", "--budget", "10it", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "cannot import user module" in proc.stderr and "ModuleNotFoundError" in proc.stderr
    assert not (tmp_path / "o").exists()
