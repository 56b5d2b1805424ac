"""scripts/training_study.py refuses a bad --set before any data set is made or run started."""
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "training_study.py")


@pytest.mark.parametrize("item,message", [
    ("nope=1", "unknown training option 'nope'"),
    ("ema_decay", "override 'ema_decay' is not of the form key=value"),
    ("ema_decay=abc", "bad value for ema_decay"),
])
def test_bad_override_fails_in_one_line_before_any_run(tmp_path, item, message):
    out = tmp_path / "study"
    proc = subprocess.run([sys.executable, SCRIPT, "--out", str(out), "--set", item],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr.strip().splitlines()[-1] and "Traceback" not in proc.stderr
    assert not out.exists()
