"""The package's layers: models, data and evaluation are siblings that never import one another, and
the bottom layer (structures, constants) imports none of them."""
import subprocess
import sys

import pytest

SIBLINGS = ["scratchdet.models", "scratchdet.data", "scratchdet.evaluation"]


@pytest.mark.parametrize("module, forbidden", [
    ("scratchdet.models", ["scratchdet.data", "scratchdet.evaluation", "scratchdet.engine"]),
    ("scratchdet.models.io", ["scratchdet.data", "scratchdet.evaluation", "scratchdet.engine"]),
    ("scratchdet.data", ["scratchdet.models", "scratchdet.evaluation", "scratchdet.engine"]),
    ("scratchdet.evaluation", ["scratchdet.models", "scratchdet.data", "scratchdet.engine"]),
    ("scratchdet.evaluation.evaluate", ["scratchdet.models", "scratchdet.data", "scratchdet.engine"]),
    ("scratchdet.structures", SIBLINGS + ["scratchdet.engine"]),
])
def test_a_layer_does_not_import_its_siblings_or_those_above(module, forbidden):
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            f"print(sorted(m for m in sys.modules if m.split('.')[:2] in [f.split('.') for f in {forbidden!r}]))")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"{module} imports {out.stdout.strip()}"
