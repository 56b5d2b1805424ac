"""The trainer's hooks (a user hook with state across a kill and resume, the events' order) and
resume / checkpoint robustness: damaged checkpoints, a full disk (CPU, tiny model)."""
import errno
import os
import warnings

import pytest
import torch

import scratchdet
from scratchdet.engine.checkpoint import load_checkpoint
from scratchdet.engine.hooks import HookBase
from scratchdet.engine.trainer import Trainer
from scratchdet.structures.errors import CheckpointError
from scratchdet.structures.files import atomic_save, is_disk_full
from test_train import assert_same_weights, synth_root, tiny_config, weights  # noqa: F401  (a fixture)


class LossEveryN(HookBase):
    """A user hook: the loss of every n-th step, kept across a resume."""
    state_key = "loss_every_n"

    def __init__(self, n: int):
        self.n, self.losses = n, []

    def after_step(self):
        if self.trainer.iteration % self.n == 0:
            self.losses.append((self.trainer.iteration, self.trainer.step_record["loss"]))

    def state_dict(self):
        return {"losses": [list(x) for x in self.losses]}

    def load_state_dict(self, state):
        self.losses = [tuple(x) for x in state["losses"]]


class Events(HookBase):
    def __init__(self):
        self.seen = []

    def before_train(self):
        self.seen.append("before_train")

    def before_step(self):
        self.seen.append(f"before_step {self.trainer.iteration}")

    def after_step(self):
        self.seen.append(f"after_step {self.trainer.iteration}")

    def after_train(self):
        self.seen.append("after_train")

    def teardown(self):
        self.seen.append("teardown")


def crash_at(monkeypatch, iteration):
    real_step = Trainer._step

    def step_then_die(self, images, targets):
        if self.iteration == iteration:
            raise KeyboardInterrupt("simulated kill")
        return real_step(self, images, targets)

    monkeypatch.setattr(Trainer, "_step", step_then_die)
    return real_step


def test_a_user_hook_keeps_its_state_across_a_kill_and_resume(synth_root, tmp_path, monkeypatch):
    ref_hook = LossEveryN(2)
    ref = Trainer(tiny_config(synth_root, tmp_path / "ref", max_iters=8), progress=False, hooks=[ref_hook])
    ref.train()
    assert [it for it, _ in ref_hook.losses] == [2, 4, 6, 8]

    crashing = Trainer(tiny_config(synth_root, tmp_path / "run", max_iters=8), progress=False)
    crashing.register_hooks([LossEveryN(2)])
    real_step = crash_at(monkeypatch, 5)              # the checkpoint of step 4 holds its loss
    with pytest.raises(KeyboardInterrupt):
        crashing.train()
    monkeypatch.setattr(Trainer, "_step", real_step)

    hook = LossEveryN(2)
    resumed = Trainer(tiny_config(synth_root, tmp_path / "run", max_iters=8), progress=False, hooks=[hook])
    resumed.train(resume=True)
    assert hook.losses == ref_hook.losses
    assert_same_weights(weights(resumed), weights(ref))


def test_a_checkpoint_at_an_epochs_end_resumes_to_identical_weights(synth_root, tmp_path, monkeypatch):
    # 24 images in batches of 4: the checkpoint of step 6 ends epoch 0; the resumed run must start
    # epoch 1 exactly as the uninterrupted one did
    ref = Trainer(tiny_config(synth_root, tmp_path / "ref", max_iters=8, ckpt_every=3), progress=False)
    ref.train()
    crashing = Trainer(tiny_config(synth_root, tmp_path / "run", max_iters=8, ckpt_every=3), progress=False)
    real_step = crash_at(monkeypatch, 7)
    with pytest.raises(KeyboardInterrupt):
        crashing.train()
    monkeypatch.setattr(Trainer, "_step", real_step)
    resumed = Trainer(tiny_config(synth_root, tmp_path / "run", max_iters=8, ckpt_every=3), progress=False)
    assert resumed.resume() == 6 and resumed.epoch == 1
    resumed.train()
    assert_same_weights(weights(resumed), weights(ref))


def test_hooks_run_in_order_and_the_checkpointer_stays_last(synth_root, tmp_path):
    events = Events()
    trainer = Trainer(tiny_config(synth_root, tmp_path / "run", max_iters=2, ckpt_every=0), progress=False)
    trainer.register_hooks([events])
    names = [type(h).__name__ for h in trainer.hooks]
    assert names[-2:] == ["Events", "CheckpointHook"]
    trainer.train()
    assert events.seen == ["before_train", "before_step 0", "after_step 1", "before_step 1", "after_step 2",
                           "after_train", "teardown"]
    with pytest.raises(TypeError, match="must derive from scratchdet.engine.hooks.HookBase"):
        trainer.register_hooks([object()])
    trainer.register_hooks([LossEveryN(1)])
    with pytest.raises(ValueError, match="two hooks keep their state under 'loss_every_n'"):
        trainer.register_hooks([LossEveryN(3)])


def test_teardown_runs_after_an_error_and_after_train_does_not(synth_root, tmp_path, monkeypatch):
    events = Events()
    trainer = Trainer(tiny_config(synth_root, tmp_path / "run", max_iters=4), progress=False, hooks=[events])
    crash_at(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert events.seen == ["before_train", "before_step 0", "after_step 1", "before_step 1", "teardown"]


def test_resume_skips_a_damaged_newest_checkpoint_with_one_warning(synth_root, tmp_path):
    cfg = tiny_config(synth_root, tmp_path / "run", max_iters=6, keep_last=2)
    first = Trainer(cfg, progress=False)
    first.train()
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(os.listdir(ckpts)) == ["iter_00000004.pt", "iter_00000006.pt"]
    newest = ckpts / "iter_00000006.pt"
    newest.write_bytes(newest.read_bytes()[:1000])                        # a write cut short

    resumed = Trainer(cfg, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = resumed.train(resume=True)
    messages = [str(w.message) for w in caught if "--resume" in str(w.message)]
    assert len(messages) == 1
    assert str(newest) in messages[0] and "truncated" in messages[0]
    assert f"resuming from {ckpts / 'iter_00000004.pt'}" in messages[0]
    assert summary["iteration"] == 6 and resumed.resumed_from == str(ckpts / "iter_00000004.pt")
    assert_same_weights(weights(resumed), weights(first))


def test_resume_from_an_explicit_damaged_checkpoint_names_it(synth_root, tmp_path):
    cfg = tiny_config(synth_root, tmp_path / "run", max_iters=2)
    Trainer(cfg, progress=False).train()
    path = tmp_path / "run" / "checkpoints" / "iter_00000002.pt"
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(CheckpointError) as info:
        Trainer(cfg, progress=False).train(resume=str(path))
    message = str(info.value)
    assert str(path) in message and "truncated" in message and "\n" not in message


def test_a_full_disk_keeps_the_last_good_checkpoint(synth_root, tmp_path, monkeypatch):
    cfg = tiny_config(synth_root, tmp_path / "run", max_iters=6, ckpt_every=2)
    real_save, calls = torch.save, {"n": 0}

    def disk_fills_up(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= 2:                                # iter_2.pt and last.pt fit
            return real_save(obj, f, *args, **kwargs)
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_fills_up)
    with pytest.raises(CheckpointError) as info:
        Trainer(cfg, progress=False).train()
    monkeypatch.setattr(torch, "save", real_save)
    message, ckpts = str(info.value), tmp_path / "run" / "checkpoints"
    assert "disk is full" in message and str(ckpts) in message
    assert f"the last good checkpoint is {ckpts / 'iter_00000002.pt'}" in message
    assert os.listdir(ckpts) == ["iter_00000002.pt"], "no half-written or temporary file is left"
    assert load_checkpoint(str(ckpts / "iter_00000002.pt"))["iteration"] == 2
    assert Trainer(cfg, progress=False).train(resume=True)["iteration"] == 6


def test_full_disk_errors_of_torch_and_scratchdet_save(tmp_path, monkeypatch):
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(RuntimeError("[enforce fail at inline_container.cc:778] . unexpected pos 64 vs 0"))
    assert is_disk_full(RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(RuntimeError("boom"))

    model = scratchdet.build_model("root_resnet_demo", num_classes=3, width=4, extra_channels=8, image_size=64)
    path = tmp_path / "m.pt"
    scratchdet.save(model, path)
    before = path.read_bytes()

    def torch_zip_writer_fails(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . unexpected pos 4544 vs 4434")

    monkeypatch.setattr(torch, "save", torch_zip_writer_fails)
    with pytest.raises(CheckpointError, match=f"disk is full: no space left in {tmp_path}"):
        scratchdet.save(model, path)
    with pytest.raises(RuntimeError, match="boom"):             # other failures keep their type
        monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
        atomic_save({}, tmp_path / "x.pt")
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["m.pt"]


def test_scratchdet_load_of_a_damaged_file_is_a_checkpoint_error(tmp_path):
    model = scratchdet.build_model("root_resnet_demo", num_classes=3, width=4, extra_channels=8, image_size=64)
    path = tmp_path / "m.pt"
    scratchdet.save(model, path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=f"{path} is not a valid scratchdet checkpoint: the file is corrupt"):
        scratchdet.load(path)
    path.write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError, match=str(path)):
        scratchdet.load(path)


def test_a_checkpoint_of_the_earlier_layout_still_resumes(synth_root, tmp_path):
    """Checkpoints written before the hooks kept the guard's, the log's and the evaluation's state
    at the top level; they resume into the hooks."""
    cfg = tiny_config(synth_root, tmp_path / "run", max_iters=4)
    first = Trainer(cfg, progress=False)
    first.train(stop_after=2)
    path = tmp_path / "run" / "checkpoints" / "iter_00000002.pt"
    ckpt = load_checkpoint(str(path))
    hooks = ckpt.pop("hooks")
    del ckpt["format"], ckpt["version"]
    ckpt.update(fluct=hooks["training_log"]["grad_fluct"], bad_in_row=1, skipped=3, best_map=0.25,
                history_map=[[2, 0.25]])
    torch.save(ckpt, path)
    resumed = Trainer(cfg, progress=False)
    assert resumed.resume(str(path)) == 2
    assert (resumed.skipped, resumed.bad_in_row, resumed.best_map) == (3, 1, 0.25)
    assert resumed.state_dict()["hooks"]["training_log"] == hooks["training_log"]
