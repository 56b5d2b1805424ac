import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def cuda_timer(fn):
    """Wrap fn so that pytest-benchmark's wall clock includes the GPU work."""
    def run():
        out = fn()
        torch.cuda.synchronize()
        return out
    return run
