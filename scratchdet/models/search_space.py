"""A small family of Root-ResNet SSDs for CPUs, named by a spec: ``root_resnet:w=16,d=1-1-1-1,...``.

Keys (all optional; the defaults are the demo's network, ``root_resnet_demo``):

====  ===========================================================  =======
key   what                                                         default
====  ===========================================================  =======
w     width of the first stage (stages have w, 2w, 4w, 8w)          16
d     BasicBlocks per stage, four numbers joined by ``-``           1-1-1-1
r     width of the root block (its three full-resolution convs)    w / 2
rs    stride of the root block's first conv: 1 (the paper's) or 2   1
s     backbone stages feeding the head: 1 (stage 4), 2 (3, 4) or    3
      3 (2, 3, 4); extra layers always continue down to 1x1
e     channels of the extra layers                                 2w
i     input size (square)                                          128
hbn   BatchNorm in the head: 0 or 1 (0 learns faster on short       0
      budgets: README, "What the demo does")
====  ===========================================================  =======

``root_resnet:`` alone is the demo network. ``build_model("root_resnet:w=32,d=2-2-2-2")`` builds one;
the spec is the model's name, so a saved model says what it is. The priors follow SSD's scale rule
from 0.1 of the input (the CPU presets' ``prior_sizes="ssd", s_min=0.1``), for any number of sources.

:data:`LADDER` is a list of specs from a few milliseconds per image on a CPU to the full
ScratchDet300 (``root_resnet34_ssd300``), for ``scratchdet compare --models auto:N``.
"""
from __future__ import annotations

from ..structures.errors import ConfigError
from .backbones import conv_out_size

__all__ = ["SPEC_PREFIX", "SPEC_KEYS", "LADDER", "is_root_resnet_spec", "parse_root_resnet_spec",
           "root_resnet_args", "with_input_size"]

SPEC_PREFIX = "root_resnet:"
SPEC_KEYS = {"w": "width", "d": "blocks per stage (a-b-c-d)", "r": "root width", "rs": "root stride (1 or 2)",
             "s": "backbone stages used as sources (1-3)", "e": "extra-layer channels", "i": "input size",
             "hbn": "BatchNorm in the head (0 or 1)"}
_DEFAULTS = {"w": 16, "d": (1, 1, 1, 1), "rs": 1, "s": 3, "i": 128, "hbn": 0}

# from a few ms per image to ScratchDet300 on a CPU, cheapest first (scratchdet compare --models auto:N)
LADDER = (
    "root_resnet:w=8,r=4,rs=2,s=2,i=96",
    "root_resnet:w=8,r=4,rs=2,i=128",
    "root_resnet:w=16,r=8,rs=2,i=128",
    "root_resnet:w=16,r=8,i=128",
    "root_resnet:w=24,r=12,i=160",
    "root_resnet:w=32,r=16,i=192",
    "root_resnet:w=32,d=2-2-2-2,r=16,i=256",
    "root_resnet:w=48,d=2-2-2-2,r=24,i=300",
    "root_resnet:w=64,d=2-2-2-2,r=32,s=2,i=300",
    "root_resnet18_ssd300",
    "root_resnet34_ssd300",
)


def is_root_resnet_spec(name: str) -> bool:
    return name.startswith(SPEC_PREFIX)


def _whole(key: str, text: str, spec: str, low: int, high: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigError(f"model {spec!r}: {key}={text!r} must be a whole number {bound} ({SPEC_KEYS[key]})")
    return value


def parse_root_resnet_spec(spec: str) -> dict:
    """The spec's keys with the defaults filled in: ``{"w": 16, "d": (1, 1, 1, 1), "r": 8, ...}``.
    :class:`ConfigError` naming the key for anything it cannot read."""
    if not is_root_resnet_spec(spec):
        raise ConfigError(f"not a Root-ResNet spec: {spec!r} (expected {SPEC_PREFIX}w=16,d=1-1-1-1,...)")
    values: dict = {}
    body = spec[len(SPEC_PREFIX):].strip()
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or key not in SPEC_KEYS:
            raise ConfigError(f"model {spec!r}: cannot read {item!r}; expected KEY=VALUE with KEY one of "
                              + ", ".join(f"{k} ({v})" for k, v in SPEC_KEYS.items()))
        if key in values:
            raise ConfigError(f"model {spec!r}: {key} is given twice")
        if key == "d":
            parts = text.split("-")
            if len(parts) != 4:
                raise ConfigError(f"model {spec!r}: d={text!r} must be four block counts joined by '-', e.g. 1-1-1-1")
            values[key] = tuple(_whole(key, p, spec, 1, 16) for p in parts)
        else:
            low, high = {"rs": (1, 2), "s": (1, 3), "hbn": (0, 1), "i": (32, 1024)}.get(key, (1, 1024))
            values[key] = _whole(key, text, spec, low, high)
    values = {**_DEFAULTS, **values}
    values.setdefault("r", max(1, values["w"] // 2))
    values.setdefault("e", 2 * values["w"])
    return values


def _extra_paddings(size: int) -> tuple[int, ...]:
    """Extra layers from a source of ``size`` down to 1x1: halve (padding 1), 3x3 -> 1x1 valid (padding 0)."""
    paddings = []
    while size > 1:
        p = 0 if size == 3 else 1
        paddings.append(p)
        size = (size + 2 * p - 3) // 2 + 1
    return tuple(paddings)


def root_resnet_args(spec: str) -> dict:
    """The :class:`~scratchdet.models.config.SSDConfig` fields of a spec."""
    v = parse_root_resnet_spec(spec)
    n = conv_out_size(conv_out_size(v["i"], 3, v["rs"], 1), 2, 2)     # after the root block and its pool
    for _ in range(3):                                                    # stages 2-4: stride 2
        n = conv_out_size(n, 3, 2, 1)
    if n < 1:
        raise ConfigError(f"model {spec!r}: input size i={v['i']} is too small for root stride {v['rs']}")
    return dict(arch="resnet", stem="root", blocks=v["d"], width=v["w"], root_width=v["r"], root_stride=v["rs"],
                extra_channels=v["e"], image_size=v["i"], source_stages=tuple(range(5 - v["s"], 5)),
                extra_paddings=_extra_paddings(n), bn_head=bool(v["hbn"]), prior_sizes="ssd", s_min=0.1)


def with_input_size(spec: str, size: int) -> str:
    """``spec`` at input ``size`` (its ``i`` set), so the extra layers are laid out for that size."""
    parse_root_resnet_spec(spec)
    body = spec[len(SPEC_PREFIX):]
    items = [item for item in (part.strip() for part in body.split(",")) if item and item.partition("=")[0].strip() != "i"]
    return SPEC_PREFIX + ",".join([*items, f"i={int(size)}"])
