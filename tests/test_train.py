"""End-to-end tests of the training engine on tiny synthetic data and a tiny model (CPU)."""
import gc
import json
import os
import socket
import subprocess
import sys
import weakref

import pytest
import torch

from scratchdet.engine.config import make_config
from scratchdet.engine.distributed import DistInfo, cleanup
from scratchdet.engine.trainer import NonFiniteTrainingError, Trainer

TINY_MODEL = {"width": 8, "extra_channels": 16, "image_size": 64}


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from scratchdet.data import synth

    root = str(tmp_path_factory.mktemp("synth") / "data")
    synth.generate(root, 24, 8, seed=0, image_size=64)
    return root


def tiny_config(root, out_dir, **overrides):
    base = {"data_root": root, "out_dir": str(out_dir), "batch_size": 4, "max_iters": 6, "warmup_iters": 2,
            "workers": 0, "ckpt_every": 2, "eval_every": 0, "log_every": 1, "model_overrides": TINY_MODEL,
            "lr": 0.02}
    base.update(overrides)
    return make_config("demo", base)


def weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_train_writes_metrics_checkpoints_and_model(synth_root, tmp_path):
    cfg = tiny_config(synth_root, tmp_path / "run", keep_last=2)
    summary = Trainer(cfg, progress=False).train()
    assert summary["iteration"] == 6 and 0.0 <= summary["map"] <= 1.0
    recs = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    steps = [r for r in recs if not r.get("eval")]
    assert [r["iter"] for r in steps] == list(range(1, 7))
    for key in ("loss", "lr", "grad_norm", "grad_fluct", "images_per_s"):
        assert all(key in r for r in steps)
    assert steps[0]["lr"] == pytest.approx(0.02 / 3)
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["iter_00000004.pt", "iter_00000006.pt"]
    import scratchdet
    model = scratchdet.load(str(tmp_path / "run" / "model_final.pt"))
    assert model.config["width"] == 8


@pytest.mark.parametrize("crash_after", [3, 5])
def test_killed_run_resumes_to_identical_weights(synth_root, tmp_path, crash_after, monkeypatch):
    ref = Trainer(tiny_config(synth_root, tmp_path / "ref", max_iters=8), progress=False)
    ref.train()
    expected = weights(ref)

    # A crash between checkpoints: the process dies inside a step, with no chance to save.
    crashing = Trainer(tiny_config(synth_root, tmp_path / "run", max_iters=8), progress=False)
    real_step = Trainer._step

    def step_then_die(self, images, targets):
        if self.iteration == crash_after:
            raise KeyboardInterrupt("simulated kill")
        return real_step(self, images, targets)

    monkeypatch.setattr(Trainer, "_step", step_then_die)
    with pytest.raises(KeyboardInterrupt):
        crashing.train()
    monkeypatch.setattr(Trainer, "_step", real_step)

    resumed = Trainer(tiny_config(synth_root, tmp_path / "run", max_iters=8), progress=False)
    resumed.train(resume=True)
    assert resumed.iteration == 8
    assert_same_weights(weights(resumed), expected)
    its = [json.loads(l)["iter"] for l in open(tmp_path / "run" / "metrics.jsonl") if "eval" not in l]
    assert its == list(range(1, 9)), "metrics of re-run steps must not be duplicated"


def test_sigterm_checkpoints_and_exits_cleanly(synth_root, tmp_path):
    cfg = tiny_config(synth_root, tmp_path / "run", max_iters=50, ckpt_every=0)
    trainer = Trainer(cfg, progress=False)
    real_step = trainer._step

    def step_and_signal(images, targets):
        out = real_step(images, targets)
        if trainer.iteration == 2:
            os.kill(os.getpid(), 15)
        return out

    trainer._step = step_and_signal
    summary = trainer.train()
    assert summary == {"iteration": 3, "interrupted": True}
    assert os.path.exists(tmp_path / "run" / "checkpoints" / "iter_00000003.pt")


def test_non_finite_guard_skips_then_aborts_naming_the_step(synth_root, tmp_path, monkeypatch):
    cfg = tiny_config(synth_root, tmp_path / "run", max_iters=20, max_bad_steps=3)
    trainer = Trainer(cfg, progress=False)
    forward = type(trainer.model).forward
    calls = {"n": 0}

    def nan_after_two(self, images, targets=None):
        out = forward(self, images, targets)
        calls["n"] += 1
        if self.training and calls["n"] > 2:
            out = dict(out, loss=out["loss"] * float("nan"))
        return out

    monkeypatch.setattr(type(trainer.model), "forward", nan_after_two)
    with pytest.raises(NonFiniteTrainingError, match=r"3 non-finite steps in a row, the last at iteration 4"):
        trainer.train()
    assert trainer.skipped == 3


def test_one_nan_step_is_skipped_without_touching_the_weights(synth_root, tmp_path, monkeypatch):
    cfg = tiny_config(synth_root, tmp_path / "run", max_iters=4)
    trainer = Trainer(cfg, progress=False)
    forward = type(trainer.model).forward
    calls = {"n": 0}
    snapshot = {}

    def nan_once(self, images, targets=None):
        out = forward(self, images, targets)
        calls["n"] += 1
        if self.training and calls["n"] == 2:
            snapshot.update({k: v.clone() for k, v in self.named_parameters()})
            out = dict(out, loss=out["loss"] + float("inf"))
        return out

    monkeypatch.setattr(type(trainer.model), "forward", nan_once)
    trainer.train(stop_after=2)
    for k, v in trainer.model.named_parameters():
        assert torch.equal(v, snapshot[k]), "a skipped step must not update the weights"
    assert trainer.skipped == 1 and trainer.bad_in_row == 1


def test_close_stops_the_persistent_loader_workers(synth_root, tmp_path):
    import multiprocessing

    gc.collect()                        # loaders other tests left to the garbage collector
    before = set(multiprocessing.active_children())
    cfg = tiny_config(synth_root, tmp_path / "run", max_iters=2, workers=2, fast_kernels=True, ckpt_every=0)
    with Trainer(cfg, progress=False) as trainer:
        trainer.train()
        ours = set(multiprocessing.active_children()) - before
        assert len(ours) == 2, "the fast path keeps its two workers alive"
    assert not ours & set(multiprocessing.active_children()), "close() must end the loader's worker processes"
    assert trainer.model.eval()(torch.zeros(1, 3, 64, 64)) is not None, "the model stays usable after close()"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, root, out_dir, result_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    world_group = weakref.ref(dist.group.WORLD)
    info = DistInfo(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"))
    finished = False
    try:
        cfg = tiny_config(root, out_dir, max_iters=3, batch_size=2)
        with Trainer(cfg, dist_info=info, progress=False) as trainer:
            trainer.train()
            ddp = weakref.ref(trainer.net)
        assert ddp() is None, "close() must release the DDP wrapper before the process group goes"
        torch.save(trainer.model.state_dict(), os.path.join(result_dir, f"rank{rank}.pt"))
        finished = True
    finally:
        cleanup(info, finished=finished)            # the CLI's teardown
    gc.collect()
    # a group that outlives destroy_process_group is torn down at interpreter exit, where gloo can abort
    assert world_group() is None, "something still holds the process group after destroy_process_group"


def test_ddp_gloo_two_processes_end_with_identical_weights(synth_root, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), synth_root, str(tmp_path / "run"), str(tmp_path)), nprocs=2)
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert_same_weights(w0, w1)
    assert os.path.exists(tmp_path / "run" / "model_final.pt"), "rank 0 saves the model"
    fresh = Trainer(tiny_config(synth_root, tmp_path / "other"), progress=False).model.state_dict()
    assert any(not torch.equal(w0[k], fresh[k]) for k in w0 if w0[k].is_floating_point())


def test_torchrun_cli_runs_ddp(synth_root, tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    overrides = ["--set", "max_iters=2", "--set", "batch_size=2", "--set", "workers=0", "--set", "ckpt_every=0",
                 "--set", f"model_overrides={json.dumps(TINY_MODEL)}"]
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "scratchdet", "train", "--config", "demo",
           "--data", synth_root, "--out", str(tmp_path / "run"), "--no-progress", *overrides]
    # the fault handler names the frame if a rank dies in native code
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, f"stdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-6000:]}"
    assert json.loads(out.stdout[out.stdout.index("{"):])["iteration"] == 2
    assert os.path.exists(tmp_path / "run" / "model_final.pt")


def test_resume_refuses_another_model_and_warns_about_changed_options(synth_root, tmp_path):
    Trainer(tiny_config(synth_root, tmp_path / "run", max_iters=2), progress=False).train()
    wider = tiny_config(synth_root, tmp_path / "run", max_iters=4, model_overrides={**TINY_MODEL, "width": 16})
    with pytest.raises(ValueError, match=r"holds another model \(width: 8 -> 16\)"):
        Trainer(wider, progress=False).train(resume=True)
    longer = tiny_config(synth_root, tmp_path / "run", max_iters=4, lr=0.01)
    with pytest.warns(UserWarning, match=r"changed training options: lr 0.02 -> 0.01, max_iters 2 -> 4"):
        summary = Trainer(longer, progress=False).train(resume=True)
    assert summary["iteration"] == 4


def test_fast_and_stock_paths_learn_alike(synth_root, tmp_path):
    """The fused kernels round differently from the stock ops, so after a few steps a near-tied
    hard-negative ranking can flip and the losses part by a small jump; the first steps agree
    closely, and the image cache changes nothing at all."""
    losses = {}
    for fast, cache, workers in ((True, True, 2), (True, False, 0), (False, False, 2)):
        cfg = tiny_config(synth_root, tmp_path / f"run{fast}{cache}", max_iters=8, fast_kernels=fast,
                          cache_images=cache, workers=workers, ckpt_every=0)
        trainer = Trainer(cfg, progress=False)
        assert (trainer.train_set._cache is not None) == (fast and cache)
        trainer.train()
        losses[fast, cache] = [json.loads(l)["loss"] for l in open(tmp_path / f"run{fast}{cache}" / "metrics.jsonl")
                               if "eval" not in l]
    fast, stock = losses[True, True], losses[False, False]
    assert fast == losses[True, False] and len(fast) == 8
    for a, b in zip(fast[:4], stock[:4]):
        assert a == pytest.approx(b, rel=1e-4)
    for a, b in zip(fast, stock):
        assert a == pytest.approx(b, rel=2e-2)
