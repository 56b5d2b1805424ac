"""Model benchmarks: CPU training step of root_resnet18_ssd300 (B=4) and MultiBoxLoss with kernel vs reference matching."""
import pytest
import torch

import scratchdet
from scratchdet.models import build_model
from scratchdet.ops import reference
from scratchdet.ops._extension import has_op

pytestmark = pytest.mark.filterwarnings("ignore:scratchdet. the compiled extension")


def _targets(B, G=8, num_classes=21, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(B, G, 2, generator=g) * 0.6
    wh = torch.rand(B, G, 2, generator=g) * 0.35 + 0.05
    return {"boxes": torch.cat([xy, xy + wh], -1), "labels": torch.randint(1, num_classes, (B, G), generator=g)}


def test_train_step_root_resnet18_ssd300_cpu(benchmark):
    benchmark.group = "train step root_resnet18_ssd300 cpu B=4"
    torch.manual_seed(0)
    model = build_model("root_resnet18_ssd300").train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    images, targets = torch.randn(4, 3, 300, 300), _targets(4)

    def step():
        loss = model(images, targets)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    benchmark.pedantic(step, rounds=3, warmup_rounds=1)


MATCHERS = {
    "kernel": scratchdet.ops.match_priors,
    "reference": reference.match_priors,       # the anchor
}


@pytest.mark.parametrize("matcher", list(MATCHERS))
@pytest.mark.parametrize("batch", [4, 32])
def test_multibox_loss_cpu(benchmark, monkeypatch, matcher, batch):
    """MultiBoxLoss (matching + smooth L1 + mined CE) on SSD300 outputs: 8732 priors, 21 classes, 8 GT/image."""
    if matcher == "kernel" and not has_op("match_priors"):
        pytest.skip("the match_priors kernel is not in this build (scratchdet.ops.match_priors would fall "
                    "back to the reference, so this row would only repeat the anchor)")
    benchmark.group = f"MultiBoxLoss cpu B={batch}, 8732 priors"
    model = build_model("root_resnet18_ssd300", width=8, extra_channels=16)
    monkeypatch.setattr(scratchdet.ops, "match_priors", MATCHERS[matcher])
    g = torch.Generator().manual_seed(1)
    loc = torch.randn(batch, 8732, 4, generator=g)
    logits = torch.randn(batch, 8732, 21, generator=g)
    t = _targets(batch)
    benchmark(model.criterion, loc, logits, model.priors, t["boxes"], t["labels"])


@pytest.mark.parametrize("batch", [4, 32])
def test_match_only_reference_cpu(benchmark, batch):
    """Matching alone (the reference), to see its share of the loss time."""
    benchmark.group = f"MultiBoxLoss cpu B={batch}, 8732 priors"
    model = build_model("root_resnet18_ssd300", width=8, extra_channels=16)
    t = _targets(batch)
    benchmark(reference.match_priors, model.priors, t["boxes"], t["labels"])
