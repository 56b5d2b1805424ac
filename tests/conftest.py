import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# Packages some machines lack (the GPU machine has no pycocotools, maybe no timm / onnx / hypothesis):
# a test that dies importing one of them is reported as skipped, naming it, not as a failure.
OPTIONAL_PACKAGES = {"pycocotools", "timm", "onnx", "onnxscript", "onnxruntime", "openvino", "hypothesis"}


def _missing_optional_package(exc):
    while exc is not None:
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in OPTIONAL_PACKAGES:
            return exc.name.split(".")[0]
        exc = exc.__cause__ or exc.__context__
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.excinfo is not None:
        name = _missing_optional_package(call.excinfo.value)
        if name:
            report.outcome = "skipped"
            report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: needs {name}, which is not installed")


def _tf32_flags():
    """The TF32 switches of cuDNN convolutions and cuBLAS matmuls, in whichever API this torch has
    (torch >= 2.9: ``fp32_precision``; the legacy ``allow_tf32`` must not be mixed with it)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return [(conv, "fp32_precision", "ieee"), (torch.backends.cuda.matmul, "fp32_precision", "ieee")]
    return [(torch.backends.cudnn, "allow_tf32", False), (torch.backends.cuda.matmul, "allow_tf32", False)]


@pytest.fixture
def no_tf32():
    """fp32 convolutions and matmuls in full fp32 for the test. cuDNN runs fp32 convolutions in TF32
    by default on Ampere and later (10 mantissa bits, ~1e-3 relative), so two correct fp32 paths
    that pick different cuDNN algorithms would differ by far more than an fp32 tolerance."""
    flags = _tf32_flags()
    saved = [getattr(obj, name) for obj, name, _ in flags]
    for obj, name, value in flags:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for (obj, name, _), value in zip(flags, saved):
            setattr(obj, name, value)


def random_boxes(n, generator=None, dtype=torch.float32, device="cpu", min_size=1e-3):
    """n valid (x1, y1, x2, y2) boxes in [0, 1]."""
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * (1 - xy) + min_size
    return torch.cat([xy, xy + wh], dim=1).to(dtype=dtype, device=device)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
