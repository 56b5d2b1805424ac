"""The `scratchdet` command: help, errors for bad arguments, and each subcommand end to end (tiny, CPU)."""
import json
import os
import importlib.util
import subprocess
import sys

import pytest

from scratchdet.cli import COMMANDS, main

TINY = '{"width": 8, "extra_channels": 16, "image_size": 64}'


def run_cli(*args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "scratchdet", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_every_command_has_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    top = capsys.readouterr().out
    for name in COMMANDS:
        assert name in top
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert f"usage: scratchdet {name}" in text and len(text) > 200


@pytest.mark.parametrize("args,message", [
    (["train", "--config", "nope", "--data", "."], "unknown config preset 'nope'; known presets"),
    (["train", "--config", "demo", "--data", "/does/not/exist", "--set", "dataset=voc"],
     "--data /does/not/exist: not found; expected a VOC-layout folder"),
    (["train", "--config", "demo", "--set", "lrr=3", "--data", "."], "unknown training option 'lrr'"),
    (["eval", "--weights", "/no/such/file.pt", "--data", "."], "weights file not found"),
    (["detect", "--weights", "x.pt", "--out", "/tmp", "/no/image.png"], "image not found"),
    (["plot", "/no/run/dir"], "no training metrics"),
    (["export", "--weights", "x.pt", "--out", "/tmp/x", "--format", "tflite"], "unknown --format"),
])
def test_bad_arguments_give_one_line_errors(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["demo", "--quick", "--out", str(blocker / "out")]) == 2
    assert "is not writable" in capsys.readouterr().err


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = run_cli("demo", "--quick", "--out", str(out), "--set", f"model_overrides={TINY}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_demo_smoke_writes_summary_picture_and_curves(demo_run):
    out, proc = demo_run
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["voc07_map"] <= 1.0 and summary["wall_seconds"] > 0
    assert summary["iterations"] == 6
    assert "VOC07 mAP" in proc.stdout
    from PIL import Image
    assert Image.open(out / "detections.png").size[0] > 64
    for name in ("loss", "grad_norm", "grad_fluct", "figure1"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000


def test_eval_detect_export_plot_on_the_demo_model(demo_run, tmp_path):
    out, _ = demo_run
    weights = str(out / "run" / "model_final.pt")
    data = str(out / "data")
    proc = run_cli("eval", "--weights", weights, "--data", data, "--split", "val", "--out", str(tmp_path / "ev"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert set(res["ap"]) <= {"circle", "square", "triangle", "star", "ring", "cross"}
    assert (tmp_path / "ev" / "pr_curves.png").exists()
    assert any(d["scores"] for d in json.loads((tmp_path / "ev" / "detections.json").read_text()))
    # the model's detection settings, overridden for this evaluation: nothing scores 1
    proc = run_cli("eval", "--weights", weights, "--data", data, "--split", "val", "--out", str(tmp_path / "ev1"),
                   "--score-threshold", "1", "--nms-threshold", "0.3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not any(d["scores"] for d in json.loads((tmp_path / "ev1" / "detections.json").read_text()))

    if importlib.util.find_spec("pycocotools") is not None:    # COCO AP needs it (a GPU machine may lack it)
        proc = run_cli("eval", "--weights", weights, "--coco-images", os.path.join(data, "JPEGImages"),
                       "--coco-json", os.path.join(data, "annotations", "instances_val.json"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert '"AP50"' in proc.stdout

    images = os.path.join(data, "JPEGImages")
    one = sorted(os.listdir(images))[0]
    proc = run_cli("detect", os.path.join(images, one), "--weights", weights, "--out", str(tmp_path / "det"),
                   "--score-threshold", "0.0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "det" / (os.path.splitext(one)[0] + "_det.png")).exists()
    plain = json.loads((tmp_path / "det" / "detections.json").read_text())
    assert plain
    proc = run_cli("detect", os.path.join(images, one), "--weights", weights, "--out", str(tmp_path / "fast"),
                   "--score-threshold", "0.0", "--fast")
    assert proc.returncode == 0, proc.stderr[-3000:]
    fast = json.loads((tmp_path / "fast" / "detections.json").read_text())
    assert len(fast[os.path.join(images, one)]) == len(plain[os.path.join(images, one)])

    proc = run_cli("export", "--weights", weights, "--out", str(tmp_path / "exp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "exp" / "model.onnx").stat().st_size > 10_000
    assert (tmp_path / "exp" / "model.pt2").exists()

    proc = run_cli("plot", str(out / "run"), "--out", str(tmp_path / "plots"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "plots" / "figure1.png").exists()


def test_synth_and_info_commands(tmp_path):
    proc = run_cli("synth", "--out", str(tmp_path / "s"), "--train", "4", "--val", "2", "--seed", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "s" / "annotations" / "instances_val.json").exists()
    proc = run_cli("info", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["cpu_kernels"] is True


def test_commands_do_not_import_the_cli():
    """No cycle: cli imports the commands, a command never imports cli (CLIError is in commands._common)."""
    code = ("import sys, scratchdet.commands.train, scratchdet.commands.eval, scratchdet.commands.demo; "
            "assert 'scratchdet.cli' not in sys.modules, 'a command imported scratchdet.cli'; "
            "from scratchdet.commands._common import CLIError; from scratchdet.structures.errors import UserError; "
            "assert issubclass(CLIError, UserError)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1",
                                   PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert proc.returncode == 0, proc.stderr[-3000:]
