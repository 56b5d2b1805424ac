"""A synthetic detection data set: shapes on cluttered backgrounds, in VOC and COCO layouts.

``generate(out_dir, num_train, num_val, seed)`` writes::

    out_dir/JPEGImages/<split>_<n>.jpg
    out_dir/Annotations/<split>_<n>.xml          VOC XML (1-based inclusive pixel boxes)
    out_dir/ImageSets/Main/{train,val,trainval}.txt
    out_dir/annotations/instances_{train,val}.json   COCO (continuous [x, y, w, h])
    out_dir/classes.txt                          so VOCDataset(out_dir) finds the classes
    out_dir/synth.json                           the parameters it was made with

Each image holds 1-5 objects of six shape classes (:data:`CLASSES`) with random
colour and texture (solid, stripes, noise, gradient), rotation, and sizes from
8 px to about half the image (tiny ones, under 12 px, are about one in ten).
Later objects may overlap earlier ones (an object keeps at least half of itself
visible) and objects may be cut by the border. The background is a colour
gradient with smooth and pixel noise, lines and faint irregular blobs that are
not objects. Boxes cover the visible part. An object is ``difficult`` when it is
tiny or less than 60% visible. Everything is drawn from
``numpy.random.default_rng((seed, split, n))``, so a seed fixes the data set
whatever the worker count, and the train images do not depend on ``num_val``.

Other statistics, for data sets unlike the demo's (``generate(..., object_size=(6, 40),
aspect=(4, 6), objects=(20, 40), tiny=0)``, ``scratchdet synth --object-size 6:40 --aspect 4:6``):
sizes drawn log-uniformly from a range in px, objects stretched to an aspect ratio along x or y,
more objects per image, and a different "tiny, so difficult" size. Left at their defaults the
files are byte-identical to those earlier versions wrote.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "star", "ring", "cross")
DEFAULT_IMAGE_SIZE = 128
SPLITS = ("train", "val")
TINY = 12            # objects smaller than this (longest side, px) are difficult
MIN_VISIBLE = 0.6    # objects less visible than this are difficult
_SUPERSAMPLE = 4


def _shape_polygons(name, r, angle):
    """Outlines of a shape of radius r centred at 0: list of (polygon, fill) with fill 255 or 0."""
    def poly(radii, count, offset):
        t = angle + offset + np.arange(count) * 2 * np.pi / count
        rad = np.resize(np.asarray(radii, float), count)
        return list(zip(rad * np.cos(t), rad * np.sin(t)))

    if name == "square":
        return [(poly([r * 0.92], 4, np.pi / 4), 255)]
    if name == "triangle":
        return [(poly([r], 3, -np.pi / 2), 255)]
    if name == "star":
        return [(poly([r, r * 0.42], 10, -np.pi / 2), 255)]
    if name == "cross":
        a, b = r * 0.95, r * 0.3
        pts = np.array([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b),
                        (-a, b), (-a, -b), (-b, -b)])
        c, s = math.cos(angle), math.sin(angle)
        return [(list(map(tuple, pts @ np.array([[c, s], [-s, c]]))), 255)]
    raise ValueError(name)


def _render_mask(name, cx, cy, r, angle, stretch=(1.0, 1.0)):
    """Anti-aliased alpha mask of the shape, scaled by ``stretch`` = (sx, sy) after rotation:
    (x0, y0, float32 [h, w] in 0..1)."""
    sx, sy = stretch
    rx, ry = r * sx, r * sy
    x0, y0 = math.floor(cx - rx) - 1, math.floor(cy - ry) - 1
    if sx == sy == 1.0:  # the original square window (keeps the default data set byte-identical)
        side = math.ceil(cx + r) + 2 - x0
        side = max(side, math.ceil(cy + r) + 2 - y0)
        width = height = side
    else:
        width, height = math.ceil(cx + rx) + 2 - x0, math.ceil(cy + ry) + 2 - y0
    k = _SUPERSAMPLE
    mask = Image.new("L", (width * k, height * k), 0)
    draw = ImageDraw.Draw(mask)
    ox, oy = (cx - x0) * k, (cy - y0) * k
    if name in ("circle", "ring"):
        draw.ellipse([ox - rx * k, oy - ry * k, ox + rx * k, oy + ry * k], fill=255)
        if name == "ring":
            hx, hy = rx * 0.55 * k, ry * 0.55 * k
            draw.ellipse([ox - hx, oy - hy, ox + hx, oy + hy], fill=0)
    else:
        for pts, fill in _shape_polygons(name, r, angle):
            draw.polygon([(ox + x * sx * k, oy + y * sy * k) for x, y in pts], fill=fill)
    small = mask.resize((width, height), Image.BOX)
    return x0, y0, np.asarray(small, np.float32) / 255.0


def _luma(rgb):
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def _random_colour(rng):
    return rng.uniform(0, 255, 3)


def _background(rng, s):
    c1, c2 = _random_colour(rng).astype(np.float32), _random_colour(rng).astype(np.float32)
    phi = rng.uniform(0, 2 * np.pi)
    ramp = (np.arange(s, dtype=np.float32) / s - 0.5)
    t = np.clip(0.5 + ramp[None, :] * math.cos(phi) + ramp[:, None] * math.sin(phi), 0, 1)[..., None]
    img = c1 + (c2 - c1) * t
    low = rng.normal(0, 1, (6, 6, 3))
    smooth = np.asarray(Image.fromarray((low * 40 + 128).clip(0, 255).astype(np.uint8)).resize((s, s), Image.BICUBIC),
                        np.float32) - 128
    img += smooth * np.float32(rng.uniform(0.3, 1.0))
    img += rng.standard_normal((s, s, 3), dtype=np.float32) * np.float32(rng.uniform(2, 10))
    return img


def _clutter(rng, img):
    """Lines, scribbles and faint irregular blobs: structure that is not an object."""
    s = img.shape[0]
    layer = Image.new("RGB", (s, s))
    alpha = Image.new("L", (s, s), 0)
    d, da = ImageDraw.Draw(layer), ImageDraw.Draw(alpha)
    for _ in range(rng.integers(1, 6)):
        pts = [tuple(p) for p in rng.uniform(-0.1 * s, 1.1 * s, (rng.integers(2, 5), 2))]
        colour, width = tuple(int(v) for v in _random_colour(rng)), int(rng.integers(1, 3))
        d.line(pts, fill=colour, width=width)
        da.line(pts, fill=int(rng.uniform(120, 255)), width=width)
    for _ in range(rng.integers(0, 3)):
        n = int(rng.integers(6, 11))
        centre, radius = rng.uniform(0, s, 2), rng.uniform(0.05, 0.2) * s
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = radius * rng.uniform(0.3, 1.0, n)
        pts = [(centre[0] + a * math.cos(b), centre[1] + a * math.sin(b)) for a, b in zip(rad, t)]
        d.polygon(pts, fill=tuple(int(v) for v in _random_colour(rng)))
        da.polygon(pts, fill=int(rng.uniform(40, 110)))
    a = np.asarray(alpha, np.float32)[..., None] / 255.0
    return img * (1 - a) + np.asarray(layer, np.float32) * a


def _texture(rng, colour, h, w):
    kind = rng.choice(4, p=[0.4, 0.2, 0.2, 0.2])
    if kind == 0:  # solid
        return colour + 3 * rng.standard_normal((h, w, 3), dtype=np.float32)
    other = np.clip(colour + rng.choice([-1, 1]) * rng.uniform(50, 110), 0, 255)
    phi = rng.uniform(0, np.pi)
    proj = (np.arange(w, dtype=np.float32)[None, :] * math.cos(phi)
            + np.arange(h, dtype=np.float32)[:, None] * math.sin(phi))
    if kind == 1:  # stripes
        period = rng.uniform(3, 8)
        on = (np.sin(2 * np.pi * proj / period) > 0)[..., None]
        return np.where(on, colour, other)
    if kind == 2:  # noise
        return colour + 28 * rng.standard_normal((h, w, 3), dtype=np.float32)
    t = ((proj - proj.min()) / max(float(proj.max() - proj.min()), 1.0))[..., None]  # gradient
    return colour * (1 - t) + other * t


def _object_size(rng, s, size_range=None):
    if size_range is not None:
        low, high = size_range
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    if rng.random() < 0.1:
        return rng.uniform(8, TINY)
    return math.exp(rng.uniform(math.log(16), math.log(0.55 * s)))


def _stretch(rng, aspect):
    """(sx, sy) for an object of aspect ratio drawn log-uniformly from ``aspect`` = (lo, hi) (>= 1),
    lying along x or y with equal odds; the area stays that of the unstretched shape."""
    if aspect is None:
        return 1.0, 1.0
    ratio = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
    long, short = math.sqrt(ratio), 1 / math.sqrt(ratio)
    return (long, short) if rng.random() < 0.5 else (short, long)


def render_image(seed, split_index, n, image_size=DEFAULT_IMAGE_SIZE, object_size=None, aspect=None,
                 objects=None, tiny=TINY):
    """One image and its objects: (uint8 [s, s, 3], list of dicts with label, box, difficult, area).

    ``object_size`` = (min, max) px draws sizes log-uniformly in that range (default: the demo's
    mix, see the module docstring); ``aspect`` = (lo, hi) stretches each object to an aspect ratio
    in that range (default: the shapes' own, about 1); ``objects`` = (lo, hi) objects per image
    (default (1, 5)); objects whose longest side is under ``tiny`` px are difficult. With every
    option at its default the image is the one earlier versions wrote."""
    rng = np.random.default_rng((int(seed), split_index, n))
    s = image_size
    img = _clutter(rng, _background(rng, s))
    owner = np.full((s, s), -1, np.int32)
    placed = []  # (label, full pixel count)
    low, high = objects if objects is not None else (1, 5)
    for _ in range(int(rng.integers(low, high + 1))):
        label = int(rng.integers(len(CLASSES)))
        size = _object_size(rng, s, object_size)
        r = size / 2
        stretch = _stretch(rng, aspect)
        for _attempt in range(10):
            cx, cy = rng.uniform(0.3 * size, s - 0.3 * size, 2)  # up to ~20% may fall off the border
            x0, y0, alpha = _render_mask(CLASSES[label], cx, cy, r, rng.uniform(0, 2 * np.pi), stretch)
            solid = alpha > 0.5
            # the image window of the mask
            ix0, iy0 = max(x0, 0), max(y0, 0)
            ix1, iy1 = min(x0 + alpha.shape[1], s), min(y0 + alpha.shape[0], s)
            sub = solid[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
            covered = owner[iy0:iy1, ix0:ix1][sub]
            counts = np.bincount(covered[covered >= 0], minlength=len(placed))
            visible_now = np.bincount(owner[owner >= 0], minlength=len(placed))
            # keep every earlier object at least half visible
            if len(placed) and np.any(visible_now - counts < 0.5 * np.array([p[1] for p in placed])):
                continue
            break
        else:
            continue
        lum = float(_luma(img[iy0:iy1, ix0:ix1].mean(axis=(0, 1))))
        colour = _random_colour(rng)
        for _try in range(8):  # the fill must stand out from what is behind it
            if abs(float(_luma(colour)) - lum) >= 60:
                break
            colour = _random_colour(rng)
        else:
            colour = np.full(3, 20.0 if lum > 128 else 235.0)
        h, w = iy1 - iy0, ix1 - ix0
        tex = _texture(rng, colour, h, w)
        a = alpha[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0][..., None]
        img[iy0:iy1, ix0:ix1] = img[iy0:iy1, ix0:ix1] * (1 - a) + tex * a
        owner[iy0:iy1, ix0:ix1][sub] = len(placed)
        placed.append((label, int(solid.sum())))
    objects = []
    for k, (label, full) in enumerate(placed):
        ys, xs = np.nonzero(owner == k)
        if len(xs) < 4:
            continue
        x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        visible = len(xs) / max(full, 1)
        difficult = max(x2 - x1, y2 - y1) < tiny or visible < MIN_VISIBLE
        objects.append({"label": label + 1, "box": (x1, y1, x2, y2), "difficult": bool(difficult),
                        "area": int(len(xs))})
    return np.clip(img, 0, 255).astype(np.uint8), objects


def _voc_xml(image_name, s, objects):
    parts = [f"<annotation>\n  <folder>synth</folder>\n  <filename>{image_name}</filename>\n"
             f"  <size><width>{s}</width><height>{s}</height><depth>3</depth></size>\n"]
    for obj in objects:
        x1, y1, x2, y2 = obj["box"]
        # VOC is 1-based inclusive: continuous [x1, x2) covers pixels x1+1 .. x2
        parts.append(f"  <object>\n    <name>{CLASSES[obj['label'] - 1]}</name>\n    <pose>Unspecified</pose>\n"
                     f"    <truncated>0</truncated>\n    <difficult>{int(obj['difficult'])}</difficult>\n"
                     f"    <bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
                     f"</bndbox>\n  </object>\n")
    parts.append("</annotation>\n")
    return "".join(parts)


def _write_chunk(args):
    out_dir, seed, split_index, indices, image_size, options = args
    split = SPLITS[split_index]
    results = []
    for n in indices:
        name = f"{split}_{n:06d}"
        pixels, objects = render_image(seed, split_index, n, image_size, **options)
        Image.fromarray(pixels).save(os.path.join(out_dir, "JPEGImages", name + ".jpg"), quality=92)
        with open(os.path.join(out_dir, "Annotations", name + ".xml"), "w", encoding="utf-8") as f:
            f.write(_voc_xml(name + ".jpg", image_size, objects))
        results.append((n, name, objects))
    return results


def _coco_json(split, image_size, rows):
    images, annotations = [], []
    for n, name, objects in rows:
        images.append({"id": n + 1, "file_name": name + ".jpg", "width": image_size, "height": image_size})
        for obj in objects:
            x1, y1, x2, y2 = obj["box"]
            annotations.append({"id": len(annotations) + 1, "image_id": n + 1, "category_id": obj["label"],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": obj["area"], "iscrowd": 0,
                                "difficult": int(obj["difficult"])})
    return {"info": {"description": f"scratchdet synthetic shapes, {split}"},
            "images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(CLASSES)]}


_OUTPUTS = ("JPEGImages", "Annotations", "ImageSets", "annotations", "classes.txt", "synth.json")


def _check_range(name, value, lowest, kind=float):
    """``None`` or a (lo, hi) pair with lowest <= lo <= hi, both finite."""
    if value is None:
        return None
    try:
        low, high = (kind(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high), got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and lowest <= low <= high):
        raise ValueError(f"{name} must satisfy {lowest} <= low <= high, got ({low}, {high})")
    return low, high


def generate(out_dir, num_train, num_val, seed=0, image_size=DEFAULT_IMAGE_SIZE, workers=1, overwrite=False,
             object_size=None, aspect=None, objects=None, tiny=TINY):
    """Write the synthetic data set (see the module docstring). Returns a dict of paths and counts.

    ``object_size`` (min, max px), ``aspect`` (lo, hi >= 1), ``objects`` (per image) and ``tiny``
    change the statistics as :func:`render_image` says; left at their defaults the data set is the
    demo's.

    ``workers`` > 1 renders in that many processes (same output). An existing
    non-empty ``out_dir`` is an error unless ``overwrite=True``, which replaces
    only what a previous generate wrote there.
    """
    num_train, num_val, image_size = int(num_train), int(num_val), int(image_size)
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise ValueError(f"need a non-negative number of images and at least one in all "
                         f"(train={num_train}, val={num_val})")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 px, got {image_size}")
    options = {"object_size": _check_range("object_size", object_size, 2.0),
               "aspect": _check_range("aspect", aspect, 1.0),
               "objects": _check_range("objects", objects, 0, int), "tiny": float(tiny)}
    if options["object_size"] is not None and options["object_size"][1] > image_size:
        raise ValueError(f"object_size {options['object_size']} does not fit in {image_size} px images")
    if options["objects"] is not None and options["objects"][1] > 500:
        raise ValueError(f"objects per image must be at most 500, got {options['objects'][1]}")
    if not (math.isfinite(options["tiny"]) and options["tiny"] >= 0):
        raise ValueError(f"tiny must be a size in px >= 0, got {tiny}")
    out_dir = os.fspath(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise FileExistsError(f"{out_dir} exists and is not empty (pass overwrite=True / --overwrite)")
        for entry in _OUTPUTS:
            path = os.path.join(out_dir, entry)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main"), "annotations"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)

    counts = {"train": num_train, "val": num_val}
    jobs = []
    for split_index, split in enumerate(SPLITS):
        ids = list(range(counts[split]))
        chunk = max(1, math.ceil(len(ids) / max(1, workers * 4)))
        jobs += [(out_dir, seed, split_index, ids[i:i + chunk], image_size, options)
                 for i in range(0, len(ids), chunk)]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_write_chunk, jobs))
    else:
        results = [_write_chunk(job) for job in jobs]
    rows = {split: [] for split in SPLITS}
    for job, res in zip(jobs, results):
        rows[SPLITS[job[2]]] += res

    main = os.path.join(out_dir, "ImageSets", "Main")
    for split in SPLITS:
        with open(os.path.join(main, f"{split}.txt"), "w") as f:
            f.writelines(name + "\n" for _, name, _ in rows[split])
        with open(os.path.join(out_dir, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump(_coco_json(split, image_size, rows[split]), f)
    with open(os.path.join(main, "trainval.txt"), "w") as f:
        f.writelines(name + "\n" for split in SPLITS for _, name, _ in rows[split])
    with open(os.path.join(out_dir, "classes.txt"), "w") as f:
        f.writelines(c + "\n" for c in CLASSES)
    params = {"num_train": num_train, "num_val": num_val, "seed": seed, "image_size": image_size,
              "classes": list(CLASSES)}
    params.update({k: v for k, v in options.items() if v is not None and not (k == "tiny" and v == TINY)})
    with open(os.path.join(out_dir, "synth.json"), "w") as f:
        json.dump(params, f, indent=1)
    objects = {split: sum(len(o) for _, _, o in rows[split]) for split in SPLITS}
    return {"root": out_dir, "classes": list(CLASSES), "image_size": image_size,
            "image_dir": os.path.join(out_dir, "JPEGImages"),
            "coco": {split: os.path.join(out_dir, "annotations", f"instances_{split}.json") for split in SPLITS},
            "images": counts, "objects": objects}
