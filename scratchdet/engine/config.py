"""Training configuration: a flat dataclass, named presets, and `key=value` overrides."""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field

from ..models.registry import resolve_config
from ..structures.errors import ConfigError

# What ``dataset`` may say; "auto" reads the kind off ``data_root`` (engine.data_setup.resolve_data).
DATASET_KINDS = ("auto", "voc", "coco", "yolo")


@dataclass
class TrainConfig:
    # model
    model: str = "root_resnet_tiny"
    model_overrides: dict = field(default_factory=dict)
    # data: "auto" (the kind of data_root: a VOC folder, a YOLO data.yaml or a folder holding one, a
    # COCO json or a folder holding annotations/instances_<split>.json), "voc", "coco" or "yolo"; a
    # data_root ending in .yaml is read as YOLO and one ending in .json as COCO whatever this says.
    # data_root "synth:DIR" generates the synthetic data set into DIR (new or empty) once; nothing
    # else ever writes into data_root.
    dataset: str = "auto"
    data_root: str = ""
    classes: str = ""                    # "a,b,c": the class list, in label order (default: the data's)
    train_split: str = "train"
    val_split: str = "val"               # "": no validation set
    skip_bad_images: bool = False        # leave out (and list) images that are missing or do not decode
    coco_train_images: str = ""
    coco_train_json: str = ""
    coco_val_images: str = ""
    coco_val_json: str = ""
    # optimisation (the paper: SGD momentum 0.9, wd 5e-4, lr 0.05 with BN everywhere)
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    no_decay_bn_bias: bool = True
    warmup_iters: int = 500
    warmup_factor: float = 1.0 / 3.0
    schedule: str = "multistep"          # "multistep" or "cosine"
    milestones: tuple = (0.67, 0.89)     # fractions of max_iters (multistep)
    gamma: float = 0.1
    max_iters: int = 100_000
    grad_clip: float = 0.0               # 0: off; else max L2 norm
    amp: bool = True                     # float16 autocast with a gradient scaler; CUDA only
    # CPU training in bfloat16 autocast (engine/precision.py): "off", "on", "auto" (on where the
    # CPU has native bfloat16 and a timed training pass is >= 1.15x faster than float32), or "":
    # "auto" for a run with a time_budget, "off" for any other (bit-exact float32 as before)
    cpu_bf16: str = ""
    channels_last: bool = True           # NHWC activations: oneDNN's fast CPU convs, tensor cores on GPU
    max_bad_steps: int = 10              # abort after this many non-finite steps in a row
    # the fast path: fused BatchNorm + add + ReLU training kernels (scratchdet.models.BNReLU2d), the
    # decoded-image cache and persistent loader workers; false: stock nn.BatchNorm2d / ReLU ops and a
    # loader rebuilt each epoch, as before
    fast_kernels: bool = True
    cache_images: bool = True            # fast path: decode the training images once, if they fit in
    cache_max_mb: int = 2048             # ... this many MB
    # bookkeeping
    seed: int = 0
    workers: int = -1                    # DataLoader workers; -1: auto (Trainer.loader_workers)
    log_every: int = 10
    eval_every: int = 0                  # iterations; 0: only at the end
    ckpt_every: int = 1000
    keep_last: int = 3
    out_dir: str = "runs/train"
    eval_max_images: int = 0             # 0: the whole val split
    augment: dict = field(default_factory=dict)  # SSDTransform options, e.g. {"max_expand": 2.0}
    # training on tiles (YOLT, for images much larger than the network): 0 off; SIZE: each training
    # sample is a native-resolution SIZE x SIZE window of its image (SSDTransform's tile), and
    # evaluation runs tiled inference (model.predict(tile=SIZE)) on the whole validation images
    train_tile: int = 0
    # weight EMA (engine/ema.py): evaluation, best_model.pt and model_final.pt use the average.
    # decay_t = ema_decay * (1 - exp(-t / ema_warmup)) after t updates, so the averaging window,
    # about 1 / (1 - decay_t) steps, grows roughly as exp(t / ema_warmup) up to 1 / (1 - ema_decay).
    # The defaults suit short runs (hundreds to a few thousand iterations: the demo, time budgets):
    # the window at the end is then some 5-15% of the run; 0.9998 / 2000 (a 5000-step window)
    # would freeze the average on the early weights of such a run. For ~100k iterations use those.
    ema: bool = False
    ema_decay: float = 0.999
    ema_warmup: float = 200.0            # iterations; 0: no ramp
    # a wall-clock budget for the run ("10m", "1h30m", "90s", or seconds; "": none): the run lays
    # its length out to end within it, final evaluation and saving included (engine/time_budget.py);
    # max_iters then only gives the schedule's shape (warm-up and evaluation points keep their
    # fraction of it)
    time_budget: str = ""
    # fitting to the data at the start (engine/data_fit.py, docs/TRAINING.md). The priors' best
    # possible recall over the training boxes is always printed; priors "auto" refits their shapes
    # per source (k-means, 1 - IoU) when it is under prior_recall_threshold, saved in model.config.
    # image_size "auto": the smallest multiple of 32 keeping the 5th-percentile object >= 8 px, at
    # most the images' median longer side, within half to twice the preset's size ("": the model's)
    priors: str = "default"              # "default" (SSD's rule) or "auto"
    prior_recall_threshold: float = 0.98
    image_size: str = ""                 # "" or "auto"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d


# The paper's recipe (batch 128, lr 0.05, warmup 500 from lr/3, ~100k iterations on VOC 07+12),
# for several GPUs: BatchNorm synchronised over them under torchrun (one process: plain BN).
TRAIN_PRESETS: dict[str, dict] = {
    "root_resnet34_voc": dict(model="root_resnet34_ssd300", dataset="voc", batch_size=128, lr=0.05,
                              max_iters=100_000, milestones=(0.67, 0.89), eval_every=10_000, ckpt_every=2000,
                              model_overrides={"norm": "syncbn"}),
    "root_resnet18_voc": dict(model="root_resnet18_ssd300", dataset="voc", batch_size=128, lr=0.05,
                              max_iters=100_000, milestones=(0.67, 0.89), eval_every=10_000, ckpt_every=2000,
                              model_overrides={"norm": "syncbn"}),
    "vgg16_bn_voc": dict(model="vgg16_ssd300", dataset="voc", batch_size=128, lr=0.05, max_iters=100_000,
                         eval_every=10_000, ckpt_every=2000, model_overrides={"norm": "syncbn"}),
    "root_resnet34_coco": dict(model="root_resnet34_ssd300", dataset="coco", batch_size=128, lr=0.05,
                               max_iters=400_000, milestones=(0.7, 0.9), eval_every=20_000, ckpt_every=5000,
                               train_split="train2017", val_split="val2017",
                               model_overrides={"prior_sizes": "coco", "norm": "syncbn"}),
    # The README demo: a tiny Root-ResNet SSD on the synthetic shapes data (`--data synth:DIR`, or
    # any data set), on 2 CPU cores, at the paper's lr 0.05. Milder zoom-out than the paper's (4x):
    # at 128 px a 4x expand shrinks the 8 px objects to 2 px. Batch 16 for 2400 iterations: the
    # images of 1200 batches of 32 with twice the updates, which short runs turn into accuracy (a
    # 10-minute float32 budget on one core: 0.91 VOC07 mAP where batch 32 gave 0.89-0.90; 800
    # iterations of 32, the demo until 2026-12-05, stopped at 0.88; docs/TRAINING.md). The
    # warm-up covers the same 3200 images as the 100 iterations of batch 32 did.
    "demo": dict(model="root_resnet_demo", batch_size=16, lr=0.05, warmup_iters=200,
                 augment={"expand_prob": 0.3, "max_expand": 2.0, "min_crop": 0.5},
                 schedule="cosine", max_iters=2400, eval_every=1200, ckpt_every=1200),
}


def _parse_value(text: str, current):
    """Parse an override value with the type of the current value."""
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(current, int):
        return int(float(text)) if text.replace(".", "", 1).lstrip("-").isdigit() else int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, (tuple, list)):
        return tuple(float(x) for x in text.split(",") if x)
    if isinstance(current, dict):
        return json.loads(text)
    return text


def make_config(preset: str | None = None, overrides: list[str] | dict | None = None) -> TrainConfig:
    """A preset (or the defaults), then `key=value` overrides, with clear errors for typos."""
    cfg = TrainConfig()
    if preset:
        if preset not in TRAIN_PRESETS:
            raise ConfigError(f"unknown config preset {preset!r}; known presets: {', '.join(sorted(TRAIN_PRESETS))}")
        cfg = dataclasses.replace(cfg, **TRAIN_PRESETS[preset])
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = []
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
            key, value = item.split("=", 1)
            items.append((key.strip(), value))
    known = {f.name for f in dataclasses.fields(cfg)}
    for key, value in items:
        if key not in known:
            raise ConfigError(f"unknown training option {key!r}; known: {', '.join(sorted(known))}")
        current = getattr(cfg, key)
        try:
            parsed = _parse_value(value, current) if isinstance(value, str) else value
        except (ValueError, json.JSONDecodeError) as exc:
            raise ConfigError(f"bad value for {key}: {exc}") from None
        cfg = dataclasses.replace(cfg, **{key: parsed})
    validate(cfg)
    return cfg


_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?|\.\d+)h)?(?:(\d+(?:\.\d*)?|\.\d+)m)?(?:(\d+(?:\.\d*)?|\.\d+)s)?")


def parse_duration(value, name: str = "time_budget") -> float | None:
    """Seconds of ``value``: "10m", "1h30m", "90s", "1.5h", plain seconds ("600", 600); None for "".
    A ConfigError for anything else, NaN, infinite or <= 0."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    how = f'use e.g. {name}=10m, 1h30m, 90s or 600 (seconds)'
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{name} must be a duration, got {value!r}; {how}")
    text = str(value).strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        match = _DURATION.fullmatch(text.replace(" ", ""))
        if not match or not any(match.groups()):
            raise ConfigError(f"{name}: cannot read {value!r} as a duration; {how}") from None
        h, m, s = (float(g) if g else 0.0 for g in match.groups())
        seconds = 3600 * h + 60 * m + s
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{name} must be a finite duration > 0, got {value!r}; {how}")
    return seconds


def _non_finite(value, name: str) -> tuple[str, float] | None:
    """``(name, value)`` of the first NaN or infinite float in ``value`` (a number, or a tuple or dict of
    them, nested), or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (name, value)
    if isinstance(value, (tuple, list)):
        items = ((f"{name}[{i}]", v) for i, v in enumerate(value))
    elif isinstance(value, dict):
        items = ((f"{name}.{k}", v) for k, v in value.items())
    else:
        return None
    return next((bad for path, v in items if (bad := _non_finite(v, path))), None)


def check_finite(options: dict) -> None:
    """ConfigError naming the first option whose number (also inside a tuple or dict: milestones,
    augment, model_overrides) is NaN or infinite."""
    for name, value in options.items():
        bad = _non_finite(value, name)
        if bad:
            raise ConfigError(f"{bad[0]} must be a finite number, got {bad[1]}")


def validate(cfg: TrainConfig) -> None:
    """ConfigError naming the first option that is out of range, NaN or infinite."""
    check_finite({f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.lr <= 0:
        raise ConfigError(f"lr must be > 0, got {cfg.lr}")
    for name in ("momentum", "weight_decay", "grad_clip"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.max_iters < 1:
        raise ConfigError(f"max_iters must be >= 1, got {cfg.max_iters}")
    if cfg.schedule not in ("multistep", "cosine"):
        raise ConfigError(f"schedule must be 'multistep' or 'cosine', got {cfg.schedule!r}")
    if cfg.dataset == "synth":
        raise ConfigError("dataset 'synth' is not a reader: generate the synthetic data set with "
                          "--data synth:DIR (DIR new or empty), or `scratchdet synth --out DIR`")
    if cfg.dataset not in DATASET_KINDS:
        raise ConfigError(f"dataset must be one of {', '.join(DATASET_KINDS)}, got {cfg.dataset!r}")
    if cfg.workers < -1:
        raise ConfigError(f"workers must be >= 0, or -1 for auto, got {cfg.workers}")
    if cfg.keep_last < 1:
        raise ConfigError(f"keep_last must be >= 1, got {cfg.keep_last}")
    if not 0 <= cfg.ema_decay < 1:
        raise ConfigError(f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    if cfg.ema_warmup < 0:
        raise ConfigError(f"ema_warmup must be >= 0 (iterations; 0: no ramp), got {cfg.ema_warmup}")
    parse_duration(cfg.time_budget)
    if cfg.cpu_bf16 not in ("", "off", "on", "auto"):
        raise ConfigError(f"cpu_bf16 must be 'off' (float32), 'on' (bfloat16 autocast), 'auto' (bfloat16 where this "
                          f"CPU does it natively and it measures faster) or '' (auto with a time_budget, else off), "
                          f"got {cfg.cpu_bf16!r}")
    if cfg.priors not in ("default", "auto"):
        raise ConfigError(f"priors must be 'default' (SSD's rule) or 'auto' (refit to the training boxes when "
                          f"their best possible recall is under prior_recall_threshold), got {cfg.priors!r}")
    if not 0 < cfg.prior_recall_threshold <= 1:
        raise ConfigError(f"prior_recall_threshold must be in (0, 1], got {cfg.prior_recall_threshold}")
    if cfg.image_size not in ("", "auto"):
        raise ConfigError(f"image_size must be 'auto' (from the training data) or empty (the model's), got "
                          f"{cfg.image_size!r}; set a fixed size with model_overrides='{{\"image_size\": 320}}'")
    if cfg.train_tile != 0 and cfg.train_tile < 32:
        raise ConfigError(f"train_tile must be 0 (off) or a window side >= 32 px, got {cfg.train_tile}")
    try:  # a typo in the model or its overrides fails here, not after the data set is built
        resolve_config(cfg.model, **cfg.model_overrides)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model / model_overrides: {exc}") from None

