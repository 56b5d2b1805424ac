"""How tests/data/checkpoint_v1.pt and its predictions were made (with the code of commit 29513d2, format 1,
before the typed SSDConfig); kept for the record, not run by the tests."""
import numpy as np
import torch
import scratchdet
from scratchdet.models import build_model
torch.manual_seed(0)
model = build_model("root_resnet_demo", num_classes=7, background_prior=0.0, keep_top_k=20).eval()
model.class_names = [f"class{i}" for i in range(1, 7)]
scratchdet.save(model, "tests/data/checkpoint_v1.pt")
rng = np.random.default_rng(0)
image = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
pred = model.predict([image])[0]
batch, _ = model.preprocess([image])
loc, logits = model.forward_raw(batch)
torch.save({"image": torch.from_numpy(image), "boxes": pred["boxes"], "scores": pred["scores"],
            "labels": pred["labels"], "loc": loc.detach(), "logits": logits.detach(),
            "config": dict(model.config)}, "tests/data/checkpoint_v1_predictions.pt")
print(len(pred["boxes"]), pred["scores"][:5])
print(model.config)
