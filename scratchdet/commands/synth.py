"""`scratchdet synth`: write the synthetic shapes data set in VOC and COCO layouts."""
import argparse
import time

from ..data import synth
from ..data.synth import CLASSES, DEFAULT_IMAGE_SIZE
from ._common import CLIError


def register(sub):
    p = sub.add_parser("synth", help="generate the synthetic shapes data set (VOC + COCO layouts)",
                       description="Write a deterministic synthetic detection data set: "
                                   f"{len(CLASSES)} shape classes ({', '.join(CLASSES)}) with textures, "
                                   "occlusion and cluttered backgrounds. Writes JPEGImages/, Annotations/, "
                                   "ImageSets/Main/{train,val,trainval}.txt and "
                                   "annotations/instances_{train,val}.json under --out.")
    p.add_argument("--out", required=True, help="output folder (must be empty or new unless --overwrite)")
    p.add_argument("--train", type=int, default=1000, help="number of training images (default 1000)")
    p.add_argument("--val", type=int, default=200, help="number of validation images (default 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    p.add_argument("--size", type=int, default=DEFAULT_IMAGE_SIZE,
                   help=f"image side in pixels (default {DEFAULT_IMAGE_SIZE})")
    p.add_argument("--object-size", metavar="MIN:MAX", type=_pair(float),
                   help="object sizes in px, drawn log-uniformly (default: the demo's mix, 8 px to about half "
                        "the image)")
    p.add_argument("--aspect", metavar="LO:HI", type=_pair(float),
                   help="stretch objects to an aspect ratio in LO:HI (>= 1), lying along x or y (default: 1)")
    p.add_argument("--objects", metavar="LO:HI", type=_pair(int), help="objects per image (default 1:5)")
    p.add_argument("--tiny", type=float, default=synth.TINY,
                   help=f"objects under this many px (longest side) are marked difficult (default {synth.TINY})")
    p.add_argument("--workers", type=int, default=1, help="processes to render with (same output)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous synth output in --out")
    p.set_defaults(func=run)


def _pair(kind):
    """argparse type for ``A:B`` (or ``A``, meaning ``A:A``)."""
    def parse(text: str):
        parts = text.split(":")
        try:
            values = tuple(kind(v) for v in parts)
        except ValueError:
            values = ()
        if len(values) == 1:
            values = values * 2
        if len(values) != 2:
            raise argparse.ArgumentTypeError(f"expected LOW:HIGH numbers, got {text!r}")
        return values
    return parse


def run(args):
    if args.train < 0 or args.val < 0 or args.train + args.val == 0:
        raise CLIError(f"--train and --val must be >= 0 and not both 0 (got {args.train}, {args.val})")
    if args.size < 32:
        raise CLIError(f"--size must be at least 32, got {args.size}")
    if args.workers < 1:
        raise CLIError(f"--workers must be at least 1, got {args.workers}")
    start = time.perf_counter()
    try:
        info = synth.generate(args.out, args.train, args.val, seed=args.seed, image_size=args.size,
                              workers=args.workers, overwrite=args.overwrite, object_size=args.object_size,
                              aspect=args.aspect, objects=args.objects, tiny=args.tiny)
    except FileExistsError:
        raise CLIError(f"--out {args.out} exists and is not empty; give a new or empty folder, or --overwrite "
                       "to replace a previous synth output there") from None
    except OSError as exc:
        raise CLIError(f"cannot write {args.out}: {exc}") from None
    except ValueError as exc:  # a range the generator refuses, checked before anything is written
        raise CLIError(f"{exc}".replace("object_size", "--object-size").replace("aspect", "--aspect")
                       .replace("objects per image", "--objects").replace("objects must", "--objects must")
                       .replace("tiny must", "--tiny must")) from None
    seconds = time.perf_counter() - start
    print(f"wrote {info['images']['train']} train + {info['images']['val']} val images "
          f"({info['objects']['train']} + {info['objects']['val']} objects) of {info['image_size']} px "
          f"to {info['root']} in {seconds:.1f} s")
    print(f"  VOC:  VOCDataset({info['root']!r}, split='train' | 'val')")
    print(f"  COCO: {info['coco']['train']}, {info['coco']['val']} (images in {info['image_dir']})")
    return 0
