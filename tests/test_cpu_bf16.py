"""CPU training in bfloat16 autocast (``cpu_bf16``, engine/precision.py): off is float32 as before,
the default is off without a time budget and auto with one, on runs the convolutions in bfloat16 with float32 weights and resumes bit for bit, auto decides by
a measurement that leaves the run's model and random state alone, and a bad value is one line."""
import json
import os

import pytest
import torch

from scratchdet.engine import precision
from scratchdet.engine.checkpoint import load_checkpoint
from scratchdet.engine.config import make_config
from scratchdet.engine.trainer import Trainer
from test_train import assert_same_weights, synth_root, tiny_config, weights  # noqa: F401  (a fixture)
from test_train_ema_budget import cli
from test_train_hooks import crash_at


def conv_output_dtypes(trainer):
    """The dtypes the model's convolutions produce in the next training steps (the evaluation at the
    end runs in float32 and eval mode, and is not counted)."""
    seen = set()
    for module in trainer.model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(lambda mod, args, out: seen.add(out.dtype) if mod.training else None)
    return seen


def test_the_default_without_a_budget_is_off_and_trains_in_float32(synth_root, tmp_path, monkeypatch):
    assert all(make_config(p).cpu_bf16 == "" for p in ("demo", "root_resnet34_voc", "root_resnet34_coco"))
    monkeypatch.setattr(precision, "native_bf16", lambda: True)     # even where bfloat16 would pay
    monkeypatch.setattr(precision, "_interleaved", lambda *a: pytest.fail("an unbudgeted run times nothing"))
    trainer = Trainer(tiny_config(synth_root, tmp_path / "run", max_iters=2), progress=False)
    dtypes = conv_output_dtypes(trainer)
    summary = trainer.train()
    assert trainer.cpu_bf16 == "off" and trainer.bf16 is False and dtypes == {torch.float32}
    assert summary["precision"] == "float32"


@pytest.mark.parametrize("native", [True, False])
def test_the_default_with_a_budget_is_auto(synth_root, tmp_path, monkeypatch, capsys, native):
    monkeypatch.setattr(precision, "native_bf16", lambda: native)
    monkeypatch.setattr(precision, "_interleaved", lambda model, batch, size, rounds: (1.0, 0.5))
    trainer = Trainer(tiny_config(synth_root, tmp_path / "run", max_iters=2, time_budget="1h"), progress=False)
    assert trainer.cpu_bf16 == "auto" and trainer.bf16 is native
    expected = "bfloat16 autocast (auto: a training pass took" if native else "float32 (auto: this CPU has no native"
    assert trainer.precision.startswith(expected), trainer.precision
    assert f"precision: {expected}" in capsys.readouterr().out
    # an explicit off under a budget stays off
    off = Trainer(tiny_config(synth_root, tmp_path / "off", max_iters=2, time_budget="1h", cpu_bf16="off"),
                  progress=False)
    assert off.cpu_bf16 == "off" and off.bf16 is False


def test_resolve_cpu_bf16():
    assert [precision.resolve_cpu_bf16("", b) for b in (False, True)] == ["off", "auto"]
    assert all(precision.resolve_cpu_bf16(m, b) == m for m in ("off", "on", "auto") for b in (False, True))
    with pytest.raises(ValueError, match="cpu_bf16 must be one of"):
        precision.resolve_cpu_bf16("yes", True)


def test_on_trains_the_convolutions_in_bfloat16_with_float32_weights(synth_root, tmp_path):
    trainer = Trainer(tiny_config(synth_root, tmp_path / "run", max_iters=4, cpu_bf16="on"), progress=False)
    start = weights(trainer)
    dtypes = conv_output_dtypes(trainer)
    summary = trainer.train()
    guarded = [m for m in trainer.model.modules() if isinstance(m, precision.Float32Conv2d)]
    assert trainer.bf16 is True and torch.bfloat16 in dtypes
    assert dtypes == ({torch.bfloat16, torch.float32} if guarded else {torch.bfloat16})
    assert summary["precision"].startswith("bfloat16 autocast")
    after = weights(trainer)
    assert all(v.dtype == start[k].dtype for k, v in after.items()), "the weights stay float32"
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(after[k], start[k]) for k in after if after[k].is_floating_point())
    # no step skipped for a non-finite gradient: the guarded convs are what keeps it so on torch 2.14
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl") if '"loss"' in line]
    assert len(records) == 4 and not any(r["skipped"] for r in records)


def test_bfloat16_gradients_of_the_guarded_model_match_float32(synth_root, tmp_path):
    """Every parameter's gradient of one training pass in bfloat16 autocast is within a few percent
    of its float32 gradient, on the tiny model whose 1x1-input stride-2 conv torch gets wrong."""
    trainer = Trainer(tiny_config(synth_root, tmp_path / "run", max_iters=1, cpu_bf16="on"), progress=False)
    images, targets, _ = next(iter(trainer._loader()))
    images = images.contiguous(memory_format=trainer.memory_format)
    model = trainer.model
    model.eval()                                 # the same BN normalisation in both passes
    grads = []
    for bf16 in (True, False):
        model.zero_grad(set_to_none=True)
        with precision.training_autocast("cpu", bf16):
            model(images, targets)["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for name, want in grads[1].items():
        got = grads[0][name]
        assert torch.isfinite(got).all(), name
        error = float((got - want).abs().max() / want.abs().max().clamp(min=1e-6))
        assert error < 0.2, f"{name}: {error:.3g}"


def test_the_guard_keeps_the_wrong_convs_in_float32_and_leaves_the_rest(monkeypatch):
    from scratchdet.models import build_model
    model = build_model("root_resnet_demo", num_classes=3, width=8, extra_channels=16, image_size=64)
    # a torch whose bfloat16 backward is wrong exactly for strided convs on 1x1 inputs
    monkeypatch.setattr(precision, "_bf16_backward_is_right",
                        lambda conv, batch, shape, seed=0: not (conv.stride[0] > 1 and shape[1:] == (1, 1)))
    shapes = precision._conv_inputs(model, 64)
    wrong = {n for n, shape in shapes.items() if dict(model.named_modules())[n].stride[0] > 1 and shape[1:] == (1, 1)}
    assert wrong, "the tiny model at 64 px has a strided conv on a 1x1 map"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kept = precision.guard_bf16_convs(model, 2, 64)
    assert {k.split(" ")[0] for k in kept} == wrong
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            assert isinstance(module, precision.Float32Conv2d) == (name in wrong), name
    assert_same_weights(model.state_dict(), before)          # the same parameters, the same state dict
    conv = dict(model.named_modules())[sorted(wrong)[0]]
    with precision.training_autocast("cpu", True):
        assert conv(torch.randn(1, conv.in_channels, 4, 4)).dtype == torch.float32


def test_bf16_check_catches_torchs_wrong_1x1_stride2_backward_when_present():
    """The check itself, on the shape torch 2.14 gets wrong (3x3, stride 2, padding 1, 1x1 input)
    and one it gets right. The wrong gradient comes from oneDNN's native bfloat16 kernels (AVX512_BF16
    / AMX); where bfloat16 is emulated (AVX2-only CPUs, e.g. AMD Zen 2) the same conv is right, and
    the check must not flag it there."""
    conv = torch.nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False)
    right = torch.nn.Conv2d(16, 16, 3, stride=1, padding=1, bias=False)
    assert precision._bf16_backward_is_right(right, 4, (16, 8, 8))
    verdicts = [precision._bf16_backward_is_right(conv, 4, (16, 1, 1), seed=s) for s in range(12)]
    if not precision.native_bf16():
        assert all(verdicts), "emulated bfloat16 (no AVX512_BF16) computed this conv's backward right on Zen 2"
    elif torch.__version__.startswith("2.14"):
        assert not all(verdicts), "torch 2.14's bfloat16 backward of this conv was wrong in 10-16 of 20 draws"


def test_a_bfloat16_loss_is_close_to_the_float32_one(synth_root, tmp_path):
    trainer = Trainer(tiny_config(synth_root, tmp_path / "run", max_iters=1), progress=False)
    images, targets, _ = next(iter(trainer._loader()))
    images = images.contiguous(memory_format=trainer.memory_format)
    trainer.model.eval()                         # BN with its running statistics: both passes see the same model
    with torch.no_grad():
        fp32 = trainer.model(images, targets)["loss"]
        with precision.training_autocast("cpu", True):
            bf16 = trainer.model(images, targets)["loss"]
    assert torch.isfinite(bf16) and fp32 > 0
    assert float(bf16) == pytest.approx(float(fp32), rel=0.05)


def test_a_bfloat16_run_killed_and_resumed_equals_the_uninterrupted_one(synth_root, tmp_path, monkeypatch):
    options = {"cpu_bf16": "on", "max_iters": 6}
    ref = Trainer(tiny_config(synth_root, tmp_path / "ref", **options), progress=False)
    ref.train()
    crashing = Trainer(tiny_config(synth_root, tmp_path / "run", **options), progress=False)
    real_step = crash_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        crashing.train()
    monkeypatch.setattr(Trainer, "_step", real_step)
    assert load_checkpoint(str(tmp_path / "run" / "checkpoints" / "iter_00000002.pt"))
    resumed = Trainer(tiny_config(synth_root, tmp_path / "run", **options), progress=False)
    resumed.train(resume=True)
    assert_same_weights(weights(resumed), weights(ref))


@pytest.mark.parametrize("fp32,bf16,chosen", [(1.0, 0.5, True), (1.0, 0.95, False), (1.0, 1.0 / 1.15, True)])
def test_auto_takes_bfloat16_only_when_it_measures_faster(synth_root, tmp_path, monkeypatch, fp32, bf16, chosen):
    monkeypatch.setattr(precision, "native_bf16", lambda: True)
    monkeypatch.setattr(precision, "_interleaved", lambda model, batch, size, rounds: (fp32, bf16))
    reference = Trainer(tiny_config(synth_root, tmp_path / "off", max_iters=1), progress=False)
    auto = Trainer(tiny_config(synth_root, tmp_path / "auto", max_iters=1, cpu_bf16="auto"), progress=False)
    assert auto.bf16 is chosen
    assert ("at least" if chosen else "under") in auto.precision
    # the throwaway model auto times is built outside the run's random streams: same initial weights
    assert_same_weights(weights(auto), weights(reference))


def test_auto_stays_in_float32_without_native_bfloat16(synth_root, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda: False)
    monkeypatch.setattr(precision, "_interleaved", lambda *a: pytest.fail("nothing is timed without native bf16"))
    trainer = Trainer(tiny_config(synth_root, tmp_path / "run", max_iters=1, cpu_bf16="auto"), progress=False)
    assert trainer.bf16 is False and "no native bfloat16" in trainer.precision


def test_auto_really_times_both_precisions():
    from scratchdet.models import build_model
    model = build_model("root_resnet_demo", num_classes=3, width=8, extra_channels=16, image_size=64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    chosen, why = precision.choose_cpu_bf16("auto", model, 2, 64, rounds=1)
    assert_same_weights(model.state_dict(), before)       # a copy was timed: no BN statistic moved
    if precision.native_bf16():
        assert why.startswith("bfloat16" if chosen else "float32") and "ms in float32" in why, why
    else:
        assert not chosen and "no native bfloat16" in why, why
    fp32, bf16 = precision._interleaved(model, 2, 64, rounds=1)
    assert 0 < fp32 < 60 and 0 < bf16 < 60


@pytest.mark.parametrize("value", ["maybe", "true", "1"])
def test_a_bad_cpu_bf16_is_one_line_and_writes_nothing(value, tmp_path):
    out = cli("train", "--set", f"cpu_bf16={value}", "--out", str(tmp_path / "out"))
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cpu_bf16 must be" in lines[0] and "Traceback" not in out.stderr, out.stderr
    assert not os.path.exists(tmp_path / "out")
