"""What a new user's bad input gets from the command line: one line on stderr, exit status 2, no
traceback, and their folder exactly as it was (no synthetic data written into it, no file touched)."""
import hashlib
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from scratchdet import cli
from scratchdet.data import synth

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--set', 'model_overrides={"width": 8, "extra_channels": 16, "image_size": 64}', "--set", "batch_size=2",
        "--set", "max_iters=2", "--set", "workers=0", "--no-progress"]


def snapshot(folder) -> dict:
    """Every path under `folder` -> the sha256 of its bytes ("dir" for a folder)."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames:
            state[os.path.relpath(os.path.join(dirpath, name), folder)] = "dir"
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                state[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return state


def voc_folder(root, splits=("train", "val"), bad=None):
    """A small VOC-layout folder with the given split lists; `bad`: an image id written as a zero-byte JPEG."""
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    ids = [f"im{i}" for i in range(6)]
    for image_id in ids:
        Image.new("RGB", (64, 48), (200, 10, 10)).save(os.path.join(root, "JPEGImages", image_id + ".jpg"))
        with open(os.path.join(root, "Annotations", image_id + ".xml"), "w") as f:
            f.write("<annotation><size><width>64</width><height>48</height><depth>3</depth></size>"
                    "<object><name>cat</name><difficult>0</difficult><bndbox><xmin>5</xmin><ymin>5</ymin>"
                    "<xmax>40</xmax><ymax>30</ymax></bndbox></object></annotation>")
    for split in splits:
        with open(os.path.join(root, "ImageSets", "Main", split + ".txt"), "w") as f:
            f.write("\n".join(ids[4:] if split in ("val", "test") else ids[:4]) + "\n")
    if bad:
        open(os.path.join(root, "JPEGImages", bad + ".jpg"), "wb").close()
    return str(root)


def one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"scratchdet {command}: error: "), err
    return lines[0]


def run_main(argv, capsys):
    """cli.main in this process: (exit status, the one error line)."""
    try:
        status = cli.main(argv)
    except SystemExit as exc:   # argparse's own checks exit
        status = exc.code
    return status, one_error_line(capsys.readouterr().err, argv[0])


def run_subprocess(argv):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "scratchdet", *argv], capture_output=True, text=True,
                          timeout=600, env=env)
    return proc.returncode, one_error_line(proc.stderr, argv[0])


@pytest.fixture
def user(tmp_path):
    """The user's folder: its state before and a check that it is the same after (and no run folder)."""
    class User:
        root = tmp_path
        out = str(tmp_path / "run")

        def __enter__(self):
            self.before = snapshot(tmp_path)
            return self

        def __exit__(self, *exc):
            if exc[0] is None:
                assert snapshot(tmp_path) == self.before
    return User()


# ------------------------------------------------------------------ train: what --data points at
def test_missing_path(user):
    with user:   # a subprocess, as the user runs it: no traceback anywhere on stderr
        status, line = run_subprocess(["train", "--config", "demo", "--data", str(user.root / "nope"),
                                       "--out", user.out])
    assert status == 2
    assert "nope: not found; expected a VOC-layout folder (Annotations/ JPEGImages/ ImageSets/Main/<split>.txt)" \
        in line and "YOLO data.yaml" in line and "COCO instances json" in line


def test_a_file_as_data(user, capsys):
    (user.root / "notes.txt").write_text("not data\n")
    with user:
        status, line = run_main(["train", "--data", str(user.root / "notes.txt"), "--out", user.out], capsys)
    assert status == 2 and "notes.txt: a file of no known format; expected a VOC-layout folder" in line


def test_an_empty_folder(user, capsys):
    (user.root / "empty").mkdir()
    with user:
        status, line = run_main(["train", "--config", "demo", "--data", str(user.root / "empty"),
                                 "--out", user.out], capsys)
    assert status == 2 and "empty: the folder is empty; expected a VOC-layout folder" in line


@pytest.mark.parametrize("extra", [[], ["--set", "dataset=voc"]], ids=["auto", "dataset=voc"])
def test_a_voc_folder_with_only_trainval_and_test(user, capsys, extra):
    data = voc_folder(user.root / "VOC2007", splits=("trainval", "test"))
    with user:
        status, line = run_main(["train", "--config", "demo", "--data", data, "--out", user.out, *extra], capsys)
    assert status == 2
    assert "train_split 'train': the VOC folder" in line and "has no ImageSets/Main/train.txt" in line
    assert "its splits: test, trainval" in line and "--set train_split=... / --set val_split=..." in line


def test_a_voc_folder_is_read_with_the_splits_it_has(user, capsys):
    data = voc_folder(user.root / "VOC2007", splits=("trainval", "test"))
    with user:   # an error after the splits are found, so nothing trains: the folder is still only read
        status, line = run_main(["train", "--data", data, "--out", user.out, "--set", "train_split=trainval",
                                 "--set", "val_split=val"], capsys)
    assert status == 2 and "val_split 'val'" in line and "its splits: test, trainval" in line


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_lr(user, capsys, value):
    data = voc_folder(user.root / "voc")
    with user:
        status, line = run_main(["train", "--data", data, "--out", user.out, "--set", f"lr={value}"], capsys)
    assert status == 2 and line.endswith(f"lr must be a finite number, got {float(value)}")


@pytest.mark.parametrize("option", ["momentum=nan", "weight_decay=inf", "milestones=0.5,nan",
                                    'augment={"max_expand": NaN}'])
def test_every_float_option_refuses_non_finite_values(user, capsys, option):
    data = voc_folder(user.root / "voc")
    with user:
        status, line = run_main(["train", "--data", data, "--out", user.out, "--set", option], capsys)
    name = {"milestones": "milestones[1]", "augment": "augment.max_expand"}.get(option.split("=")[0],
                                                                              option.split("=")[0])
    assert status == 2 and f"{name} must be a finite number" in line


def test_synth_never_writes_into_other_data(user, capsys):
    data = voc_folder(user.root / "voc", splits=("trainval", "test"))
    with user:
        status, line = run_main(["train", "--data", f"synth:{data}", "--out", user.out], capsys)
    assert status == 2 and "holds no finished synthetic data set" in line
    with user:
        status, line = run_main(["train", "--data", data, "--out", user.out, "--set", "dataset=synth"], capsys)
    assert status == 2 and "--data synth:DIR" in line


def test_a_zero_byte_jpeg_in_the_training_split(user):
    data = voc_folder(user.root / "voc", bad="im2")
    before = snapshot(data)
    # a subprocess: the model is built and the images are read (decoded once into the cache)
    status, line = run_subprocess(["train", "--data", data, "--out", user.out, *TINY])
    assert snapshot(data) == before
    assert status == 2
    assert f"cannot decode image {os.path.join(data, 'JPEGImages', 'im2.jpg')}" in line
    assert line.endswith("pass --set skip_bad_images=true")


def test_a_zero_byte_jpeg_read_by_a_loader_worker(user, capsys):
    data = voc_folder(user.root / "voc", bad="im2")
    before = snapshot(data)
    # no image cache: the worker process meets the bad file and the error comes back with its traceback
    status, line = run_main(["train", "--data", data, "--out", user.out, *TINY, "--set", "max_iters=4",
                             "--set", "fast_kernels=false", "--set", "workers=1"], capsys)
    assert snapshot(data) == before
    assert status == 2 and "im2.jpg" in line and line.endswith("pass --set skip_bad_images=true")


def test_skip_bad_images_trains_without_the_bad_file(user, capsys):
    data = voc_folder(user.root / "voc", bad="im2")
    before = snapshot(data)
    with pytest.warns(UserWarning, match=r"skipping bad image .*im2\.jpg"):
        assert cli.main(["train", "--data", data, "--out", user.out, *TINY, "--set", "skip_bad_images=true"]) == 0
    assert snapshot(data) == before and os.path.isfile(os.path.join(user.out, "model_final.pt"))
    out = capsys.readouterr().out
    summary = json.loads(out[("\n" + out).rindex("\n{"):])    # the run summary, printed last
    assert summary["skipped_images"] == 1


# ------------------------------------------------------------------ detect / eval: thresholds
@pytest.mark.parametrize("argv", [
    ["detect", "--weights", "w.pt", "--out", "OUT", "--score-threshold", "nan", "IMAGE"],
    ["detect", "--weights", "w.pt", "--out", "OUT", "--score-threshold", "inf", "IMAGE"],
    ["eval", "--weights", "w.pt", "--data", "DATA", "--score-threshold", "nan"],
    ["eval", "--weights", "w.pt", "--data", "DATA", "--nms-threshold", "inf"],
    ["eval", "--weights", "w.pt", "--data", "DATA", "--nms-threshold", "1.5"],
])
def test_non_finite_thresholds(user, capsys, argv):
    data = voc_folder(user.root / "voc")
    image = os.path.join(data, "JPEGImages", "im0.jpg")
    argv = [{"OUT": user.out, "DATA": data, "IMAGE": image}.get(a, a) for a in argv]
    with user:
        status, line = run_main(argv, capsys)
    value = argv[argv.index(next(a for a in argv if a.endswith("-threshold"))) + 1]
    assert status == 2 and "threshold: must be" in line and repr(value) in line


# ------------------------------------------------------------------ the rule itself
def test_user_path_oserrors_are_one_line_and_bugs_keep_their_traceback(capsys, monkeypatch):
    import errno

    def full_disk(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/run/checkpoint_100.pt")

    def bug(args):
        raise KeyError("not a user error")

    monkeypatch.setattr(cli.plot, "run", full_disk)
    parser_args = ["plot", "/some/run"]
    assert cli.main(parser_args) == 2
    line = one_error_line(capsys.readouterr().err, "plot")
    assert line == "scratchdet plot: error: /data/run/checkpoint_100.pt: the disk is full"
    monkeypatch.setattr(cli.plot, "run", bug)
    with pytest.raises(KeyError):
        cli.main(parser_args)


def test_synth_data_is_generated_only_into_a_new_folder_and_reused(tmp_path, capsys):
    data = str(tmp_path / "shapes")
    synth.generate(data, 4, 2, seed=0, image_size=64)
    before = snapshot(data)
    # a finished synthetic set (synth.json) is reused as it is, the splits it has are read
    status, line = run_main(["train", "--data", f"synth:{data}", "--out", str(tmp_path / "run"),
                             "--set", "val_split=test"], capsys)
    assert status == 2 and "val_split 'test'" in line and "its splits: train, trainval, val" in line
    assert snapshot(data) == before


# ------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    data = voc_folder(root / "voc")
    out = str(root / "run")
    assert cli.main(["train", "--data", data, "--out", out, *TINY, "--set", "ckpt_every=1"]) == 0
    return data, out


def test_resume_from_a_truncated_checkpoint(trained_run, tmp_path, capsys):
    data, out = trained_run
    checkpoints = os.path.join(out, "checkpoints")
    newest = os.path.join(checkpoints, sorted(os.listdir(checkpoints))[-1])
    truncated = tmp_path / "truncated.pt"
    with open(newest, "rb") as f:
        truncated.write_bytes(f.read()[:1000])
    before = snapshot(tmp_path)
    status, line = run_main(["train", "--data", data, "--out", out, *TINY, "--resume", str(truncated)], capsys)
    assert status == 2 and str(truncated) in line
    assert snapshot(tmp_path) == before


def test_a_full_disk_while_writing_a_checkpoint(trained_run, tmp_path, capsys, monkeypatch):
    import errno

    import torch

    from scratchdet.engine import checkpoint

    data, _ = trained_run

    def full_disk(obj, f, *args, **kwargs):   # what torch.save raises when the file's write fails
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    try:
        status, line = run_main(["train", "--data", data, "--out", str(tmp_path / "run"), *TINY,
                                 "--set", "ckpt_every=1"], capsys)
    finally:
        monkeypatch.setattr(checkpoint.torch, "save", torch.save)
    assert status == 2 and "the disk is full" in line and os.path.join(str(tmp_path / "run"), "checkpoints") in line
