"""Data pipeline throughput: SSDTransform against torchvision.transforms.v2's SSD recipe.

Each round transforms the same 32 in-memory synthetic images (PIL, boxes in
pixels); images/s = 32 / round time. The anchor is the augmentation torchvision's
detection references use for SSD (RandomPhotometricDistort, RandomZoomOut,
RandomIoUCrop, RandomHorizontalFlip, SanitizeBoundingBoxes, Resize, Normalize).
``getitem`` rounds read JPEG + XML-parsed targets from a generated VOC layout.
torch runs single-threaded here, as it does inside DataLoader workers.
"""
import pytest
import torch
from PIL import Image

from scratchdet.constants import MEAN, STD
from scratchdet.data import SSDTransform, VOCDataset, synth

BATCH = 32
torch.set_num_threads(1)


def samples(size):
    out = []
    for n in range(BATCH):
        pixels, objects = synth.render_image(0, 0, n, size)
        target = {"boxes": torch.tensor([o["box"] for o in objects], dtype=torch.float32).reshape(-1, 4),
                  "labels": torch.tensor([o["label"] for o in objects]),
                  "difficult": torch.tensor([o["difficult"] for o in objects]), "image_id": n}
        out.append((Image.fromarray(pixels), target))
    return out


def torchvision_ssd(size, train):
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    steps = [v2.PILToTensor()]
    if train:
        steps += [v2.RandomPhotometricDistort(p=1.0), v2.RandomZoomOut(fill=[int(255 * m) for m in MEAN], side_range=(1.0, 4.0), p=0.5),
                  v2.RandomIoUCrop(), v2.RandomHorizontalFlip(p=0.5), v2.SanitizeBoundingBoxes()]
    steps += [v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    pipeline = v2.Compose(steps)

    def run(image, target):
        boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(image.height, image.width))
        return pipeline(image, {"boxes": boxes, "labels": target["labels"]})
    return run


@pytest.mark.parametrize("size", [128, 300])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("impl", ["scratchdet", "torchvision_v2"])
def test_transform(benchmark, impl, train, size):
    data = samples(size)
    fn = SSDTransform(size, train=train, seed=0) if impl == "scratchdet" else torchvision_ssd(size, train)
    benchmark.group = f"transform {'train' if train else 'eval'} {size}px x{BATCH}"
    benchmark.extra_info["images"] = BATCH

    def run():
        return [fn(image, target) for image, target in data]
    out = benchmark(run)
    assert len(out) == BATCH


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    roots = {}
    for size in (128, 300):
        root = tmp_path_factory.mktemp(f"synth{size}")
        synth.generate(root, BATCH, 0, seed=0, image_size=size)
        roots[size] = str(root)
    return roots


@pytest.mark.parametrize("size", [128, 300])
def test_getitem(benchmark, voc_root, size):
    ds = VOCDataset(voc_root[size], split="train", transform=SSDTransform(size, seed=0))
    benchmark.group = f"getitem (JPEG decode + train transform) {size}px x{BATCH}"
    benchmark.extra_info["images"] = BATCH
    benchmark(lambda: [ds[i] for i in range(BATCH)])


def test_synth_render(benchmark):
    benchmark.group = f"synth render 128px x{BATCH}"
    benchmark(lambda: [synth.render_image(0, 0, n, 128) for n in range(BATCH)])
