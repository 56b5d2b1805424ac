"""Weight EMA and the time budget of the trainer (CPU, tiny model): the EMA's arithmetic and its
resume bit for bit, the budget's plan under a fake clock, bad budgets as one-line errors, and both
off leaving the trainer as it was."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import scratchdet
from scratchdet.engine.checkpoint import load_checkpoint
from scratchdet.engine.config import make_config, parse_duration
from scratchdet.engine.ema import EMAHook, ModelEMA
from scratchdet.engine.hooks import EvaluationHook
from scratchdet.engine.time_budget import TimeBudgetHook, plan_iterations
from scratchdet.engine.trainer import Trainer
from scratchdet.structures.errors import ConfigError
from test_train import assert_same_weights, synth_root, tiny_config, weights  # noqa: F401  (a fixture)
from test_train_hooks import crash_at

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------- EMA
def toy_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))


@pytest.mark.parametrize("warmup", [0.0, 3.0])
def test_ema_after_n_updates_equals_the_closed_form(warmup):
    model = toy_model()
    decay, n = 0.9, 7
    ema = ModelEMA(model, decay, warmup)
    start = {k: v.double().clone() for k, v in model.named_parameters()}
    seen = []
    for step in range(1, n + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * step)               # the weights move; the average follows
        seen.append({k: v.double().clone() for k, v in model.named_parameters()})
        ema.update(model)
    # e_n = prod(d_t) e_0 + sum_k (1 - d_k) prod_{t > k} d_t p_k, with d_t = decay (1 - exp(-t / warmup))
    d = [decay * (1 - math.exp(-t / warmup)) if warmup else decay for t in range(1, n + 1)]
    for name, avg in ema.module.named_parameters():
        expected = start[name] * math.prod(d)
        for k in range(n):
            expected = expected + (1 - d[k]) * math.prod(d[k + 1:]) * seen[k][name]
        torch.testing.assert_close(avg.double(), expected, rtol=1e-6, atol=1e-6)
    assert ema.updates == n
    if warmup:
        assert ema.decay_at(1) < 0.3 * decay and ema.decay_at(100) == pytest.approx(decay)


def test_ema_copies_the_buffers_and_leaves_the_model_alone():
    model = toy_model()
    ema = ModelEMA(model, 0.99, 0.0)
    model.train()
    model(torch.randn(8, 3))                     # BatchNorm's running statistics move
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ema.update(model)
    bn, avg_bn = model[1], ema.module[1]
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(avg_bn, name), getattr(bn, name)), f"{name} is copied, not averaged"
    assert_same_weights(model.state_dict(), before)
    assert not any(p.requires_grad for p in ema.module.parameters())


def ema_weights(trainer):
    return {k: v.clone() for k, v in trainer.evaluation_model().state_dict().items()}


def test_a_run_with_ema_killed_and_resumed_equals_the_uninterrupted_one(synth_root, tmp_path, monkeypatch):
    ema = {"ema": True, "ema_decay": 0.9, "ema_warmup": 2.0, "max_iters": 8}
    ref = Trainer(tiny_config(synth_root, tmp_path / "ref", **ema), progress=False)
    ref.train()
    raw, averaged = weights(ref), ema_weights(ref)
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw if raw[k].is_floating_point())

    crashing = Trainer(tiny_config(synth_root, tmp_path / "run", **ema), progress=False)
    real_step = crash_at(monkeypatch, 5)         # between the checkpoints of steps 4 and 6
    with pytest.raises(KeyboardInterrupt):
        crashing.train()
    monkeypatch.setattr(Trainer, "_step", real_step)
    ckpt = load_checkpoint(str(tmp_path / "run" / "checkpoints" / "iter_00000004.pt"))
    assert ckpt["hooks"]["ema"]["updates"] == 4

    resumed = Trainer(tiny_config(synth_root, tmp_path / "run", **ema), progress=False)
    resumed.train(resume=True)
    assert_same_weights(weights(resumed), raw)
    assert_same_weights(ema_weights(resumed), averaged)
    # the saved models are the average
    for name in ("model_final.pt", "best_model.pt"):
        saved = scratchdet.load(str(tmp_path / "run" / name)).state_dict()
        assert_same_weights(saved, averaged)


def test_the_evaluation_scores_the_average(synth_root, tmp_path, monkeypatch):
    scored = []
    real = scratchdet.engine.hooks.evaluate_model

    def spy(model, *args, **kwargs):
        scored.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(scratchdet.engine.hooks, "evaluate_model", spy)
    trainer = Trainer(tiny_config(synth_root, tmp_path / "run", ema=True, max_iters=4, eval_every=2,
                                  ckpt_every=0), progress=False)
    trainer.train()
    hook = next(h for h in trainer.hooks if isinstance(h, EMAHook))
    assert len(scored) == 2 and all(m is hook.ema.module for m in scored)
    assert hook.ema.updates == 4


def test_ema_and_budget_off_is_the_trainer_as_before(synth_root, tmp_path):
    cfg = tiny_config(synth_root, tmp_path / "run", max_iters=2)
    assert (cfg.ema, cfg.time_budget) == (False, "")
    assert all(not make_config(p).ema and not make_config(p).time_budget
               for p in ("demo", "root_resnet34_voc", "root_resnet34_coco"))
    trainer = Trainer(cfg, progress=False)
    assert [type(h).__name__ for h in trainer.hooks] == ["LRScheduleHook", "NonFiniteGuard", "TrainingLogHook",
                                                         "ProgressHook", "EvaluationHook", "CheckpointHook"]
    assert (trainer.horizon.max_iters, trainer.horizon.warmup_iters) == (cfg.max_iters, cfg.warmup_iters)
    assert trainer.evaluation_model() is trainer.model
    summary = trainer.train()
    assert "time_budget" not in summary
    ckpt = load_checkpoint(str(tmp_path / "run" / "checkpoints" / "iter_00000002.pt"))
    assert sorted(ckpt["hooks"]) == ["evaluation", "nonfinite_guard", "training_log"]


# ------------------------------------------------------------------------------- time budget
@pytest.mark.parametrize("text,seconds", [("10m", 600), ("1h30m", 5400), ("90s", 90), ("600", 600),
                                          ("1.5h", 5400), (45, 45)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds
    assert make_config("demo", {"time_budget": text}).time_budget == text


@pytest.mark.parametrize("text", ["abc", "nan", "inf", "0", "-5", "10x", "1h30", "m"])
def test_bad_durations_are_one_line_config_errors(text):
    with pytest.raises(ConfigError) as info:
        make_config("demo", [f"time_budget={text}"])
    assert "time_budget" in str(info.value) and "\n" not in str(info.value)


def test_plan_leaves_room_for_the_evaluations_and_checkpoints():
    # 100 s left at 1 s a step, from step 10: 100 more steps if nothing else ran
    assert plan_iterations(10, 100.0, 1.0, 0.0, 0.0, lambda h: 0, 0) == 110

    # evaluations of 10 s at a third and two thirds of the run, checkpoints (1 s) every 20 steps
    def evals_ahead(h):
        return sum(1 for k in (1, 2) if 10 < round(k * h / 3) < h)

    def cost(h):
        return (h - 10) + 10 * evals_ahead(h) + (h - 1) // 20 - 10 // 20

    horizon = plan_iterations(10, 100.0, 1.0, 10.0, 1.0, evals_ahead, 20)
    assert cost(horizon) <= 100 < cost(horizon + 1) and horizon == 86   # fits, and one more does not
    assert plan_iterations(10, -5.0, 1.0, 0.0, 0.0, lambda h: 0, 0) == 10, "no time left: stop now"


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def run_on_a_fake_clock(root, out_dir, monkeypatch, budget, step_seconds, eval_seconds=3.0, **overrides):
    """Train with a time budget where a step takes ``step_seconds(iteration)`` fake seconds and an
    evaluation ``eval_seconds``; returns (trainer, summary, fake seconds from start to end). The
    steps only take fake time and record the lr (the plan does not look at the weights): fast."""
    clock = FakeClock()
    options = {"max_iters": 10, "warmup_iters": 2, "eval_every": 5, "ckpt_every": 10, **overrides}
    cfg = tiny_config(root, out_dir, time_budget=str(budget), **options)
    trainer = Trainer(cfg, progress=False)
    budget_hook = trainer.hooks[0]
    assert isinstance(budget_hook, TimeBudgetHook)
    budget_hook.clock = clock
    real_eval = EvaluationHook.evaluate

    def timed_step(self, images, targets):
        clock.now += step_seconds(self.iteration)
        return {"epoch": self.epoch, "lr": self.optimizer.param_groups[0]["lr"], "loss": 1.0, "loss_loc": 0.5,
                "loss_conf": 0.5, "grad_norm": 1.0, "skipped": False}

    def timed_eval(self):
        clock.now += eval_seconds
        return real_eval(self)

    monkeypatch.setattr(Trainer, "_step", timed_step)
    monkeypatch.setattr(EvaluationHook, "evaluate", timed_eval)
    start = clock.now
    summary = trainer.train()
    return trainer, summary, clock.now - start


def test_a_time_budget_ends_the_run_within_it(synth_root, tmp_path, monkeypatch):
    trainer, summary, spent = run_on_a_fake_clock(synth_root, tmp_path / "run", monkeypatch, 60, lambda it: 1.0)
    assert 0.95 * 60 <= spent <= 60, spent
    info = summary["time_budget"]
    assert info["budget_seconds"] == 60 and info["planned_iterations"] == summary["iteration"] == trainer.iteration
    assert info["seconds_per_iteration"] == 1.0 and info["eval_seconds"] == 3.0
    assert info["elapsed_seconds"] == pytest.approx(spent)
    # the schedule follows the plan: warm-up and the evaluation point keep their fraction of
    # max_iters (2 and 5 of 10), the cosine ends near 0 on the last planned step
    planned = info["planned_iterations"]
    assert trainer.horizon.max_iters == planned and trainer.horizon.warmup_iters == round(2 * planned / 10)
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    steps = [r for r in records if not r.get("eval")]
    assert [r["iter"] for r in steps] == list(range(1, planned + 1))
    assert steps[-1]["lr"] < 0.02 * 0.02
    # one evaluation about half-way (where the plan of that moment put it; a re-plan after it, with
    # the evaluation's measured cost, does not repeat it) and the final one
    mid, last = [r["iter"] for r in records if r.get("eval")]
    assert 0.4 * planned <= mid <= 0.6 * planned and last == planned
    assert os.path.exists(tmp_path / "run" / "model_final.pt")


@pytest.mark.parametrize("later", [0.75, 1.6])
def test_a_time_budget_re_plans_when_the_rate_changes(synth_root, tmp_path, monkeypatch, later):
    trainer, summary, spent = run_on_a_fake_clock(synth_root, tmp_path / "run", monkeypatch, 80,
                                                  lambda it: 1.0 if it < 10 else later)
    info = summary["time_budget"]
    assert info["replans"] >= 1 and info["seconds_per_iteration"] == pytest.approx(later)
    assert 0.95 * 80 <= spent <= 80, spent
    assert info["planned_iterations"] == summary["iteration"]


def test_a_budget_shorter_than_the_measuring_still_ends_in_time(synth_root, tmp_path, monkeypatch):
    trainer, summary, spent = run_on_a_fake_clock(synth_root, tmp_path / "run", monkeypatch, 8, lambda it: 1.0,
                                                  eval_seconds=1.0)
    assert spent <= 8 and summary["iteration"] >= 1
    assert os.path.exists(tmp_path / "run" / "model_final.pt")


def test_a_resumed_budget_counts_the_time_already_spent(synth_root, tmp_path, monkeypatch):
    cfg = tiny_config(synth_root, tmp_path / "run", time_budget="1h", max_iters=10, ckpt_every=2)
    first = Trainer(cfg, progress=False)
    hook = first.hooks[0]
    clock = FakeClock()
    hook.clock = clock
    real_step = Trainer._step

    def timed_step(self, images, targets):
        clock.now += 60.0
        return real_step(self, images, targets)

    monkeypatch.setattr(Trainer, "_step", timed_step)
    first.train(stop_after=6)
    state = load_checkpoint(str(tmp_path / "run" / "checkpoints" / "iter_00000006.pt"))["hooks"]["time_budget"]
    assert state["spent"] == 360.0 and state["planned"] is not None
    resumed = Trainer(cfg, progress=False)
    resumed.hooks[0].clock = FakeClock()
    resumed.resume()
    assert resumed.hooks[0].spent_before == 360.0 and resumed.horizon.max_iters == state["planned"]


def cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "scratchdet", *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=ROOT)


@pytest.mark.parametrize("argv", [["train", "--set", "time_budget=abc"], ["train", "--set", "time_budget=nan"],
                                  ["train", "--set", "time_budget=-1m"], ["demo", "--time", "0s"]])
def test_bad_time_budgets_on_the_command_line(argv, tmp_path):
    out = cli(*argv, "--out", str(tmp_path / "out"))
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "time_budget" in lines[0] and "Traceback" not in out.stderr, out.stderr
    assert not os.path.exists(tmp_path / "out"), "a bad option leaves nothing behind"


def _ddp_worker(rank, world, port, root, out_dir, result_dir):
    import torch.distributed as dist

    from scratchdet.engine.distributed import DistInfo, cleanup

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    info = DistInfo(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"))
    finished = False
    try:
        # a real clock: each rank measures its own rate, rank 0's plan is the one every rank follows
        cfg = tiny_config(root, out_dir, max_iters=20, batch_size=2, ema=True, ema_decay=0.9, ema_warmup=2.0,
                          time_budget="20s", ckpt_every=0)
        with Trainer(cfg, dist_info=info, progress=False) as trainer:
            summary = trainer.train()
        torch.save({"raw": trainer.model.state_dict(), "ema": trainer.evaluation_model().state_dict(),
                    "iteration": summary["iteration"]}, os.path.join(result_dir, f"rank{rank}.pt"))
        finished = True
    finally:
        cleanup(info, finished=finished)


@pytest.mark.slow
def test_ddp_ranks_keep_the_same_average_and_follow_one_plan(synth_root, tmp_path):
    import torch.multiprocessing as mp

    from test_train import _free_port

    mp.spawn(_ddp_worker, args=(2, _free_port(), synth_root, str(tmp_path / "run"), str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["iteration"] == r1["iteration"] >= 1
    assert_same_weights(r0["raw"], r1["raw"])
    assert_same_weights(r0["ema"], r1["ema"])
    saved = scratchdet.load(str(tmp_path / "run" / "model_final.pt")).state_dict()
    assert_same_weights(saved, r0["ema"])


def test_a_short_budget_keeps_the_configs_warmup(synth_root, tmp_path, monkeypatch):
    """A plan shorter than max_iters does not shrink the warm-up below the config's (steps at a large
    lr need it whatever the run's length); under three warm-ups it takes a third of the run."""
    trainer, summary, _ = run_on_a_fake_clock(synth_root, tmp_path / "a", monkeypatch, 100, lambda it: 1.0,
                                              max_iters=400, warmup_iters=12, eval_every=400, ckpt_every=400)
    planned = summary["time_budget"]["planned_iterations"]
    assert planned < 400 and trainer.horizon.warmup_iters == 12
    trainer, summary, _ = run_on_a_fake_clock(synth_root, tmp_path / "b", monkeypatch, 60, lambda it: 1.0,
                                              max_iters=400, warmup_iters=40, eval_every=400, ckpt_every=400)
    planned = summary["time_budget"]["planned_iterations"]
    assert trainer.horizon.warmup_iters == planned // 3 < 40
