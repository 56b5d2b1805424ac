"""Property tests of the annotation readers (VOC XML, YOLO txt + data.yaml, COCO json).

Whatever an annotation file holds (missing fields, NaN/inf/huge/negative coordinates, x2 < x1,
zero-size boxes, unknown classes, unicode names, wrong types, truncation, BOMs, CRLF, extra
columns), a reader gives either a valid data set (finite boxes inside the image with x1 < x2 and
y1 < y2, labels in 1..K) or one :class:`DataError` whose one-line message names the file. Never a
KeyError / TypeError / IndexError / OverflowError from deep inside, and never a NaN box.
"""
import json
import os
import re
import tempfile
import warnings
from xml.sax.saxutils import escape

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings, strategies as st
from PIL import Image

from scratchdet.data import COCODataset, VOCDataset, YOLODataset
from scratchdet.data._xml import UnsafeXMLError
from scratchdet.structures.errors import DataError

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLASSES = ["cat", "dög", "日本 猫"]          # unicode, and a space inside a name
BOM = "\ufeff"


# ------------------------------------------------------------------ what every outcome must satisfy
def check_boxes(boxes, labels, difficult, num_classes, width, height):
    boxes, labels, difficult = np.asarray(boxes), np.asarray(labels), np.asarray(difficult)
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert len(labels) == len(difficult) == len(boxes)
    assert labels.dtype == np.int64 and difficult.dtype == bool
    assert np.isfinite(boxes).all(), boxes
    assert (boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all(), boxes
    assert (boxes >= 0).all(), boxes
    if width is not None:
        assert (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all(), (boxes, width, height)
    assert ((labels >= 1) & (labels <= num_classes)).all(), labels


def check_dataset(ds):
    """Every record, and every sample whose image exists, is valid."""
    assert all(isinstance(c, str) and c for c in ds.classes)
    for i, rec in enumerate(ds.records):
        assert rec.width is None or (isinstance(rec.width, int) and rec.width > 0 and rec.height > 0)
        check_boxes(rec.boxes, rec.labels, rec.difficult, ds.num_classes, rec.width, rec.height)
        if os.path.isfile(rec.image_path):
            image, target = ds[i]
            check_boxes(target["boxes"].numpy(), target["labels"].numpy(), target["difficult"].numpy(),
                        ds.num_classes, image.width, image.height)


def build_or_data_error(build, names, also=()):
    """``build()`` gives a valid data set, or raises one DataError (or a type in ``also``) whose
    one-line message names one of ``names``. Numpy's overflow/invalid warnings count as failures:
    they mean a NaN or an overflow reached the box arithmetic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)       # the dropped-box warnings; checked by the examples
        warnings.simplefilter("error", RuntimeWarning)
        try:
            ds = build()
            check_dataset(ds)
        except (DataError, *also) as exc:
            message = str(exc)
            assert "\n" not in message, message
            assert any(name in message for name in names), (message, names)
            note(f"refused: {type(exc).__name__}")
            return exc
    note("read, with boxes" if any(len(r.boxes) for r in ds.records) else "read, no boxes")
    return ds


def note(outcome: str) -> None:
    """Count the outcomes of a property test (pytest --hypothesis-show-statistics shows the mix)."""
    if currently_in_test_context():
        event(outcome)


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def save_image(path, size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, (90, 30, 200)).save(path)


# ------------------------------------------------------------------ shared strategies
WEIRD_NUMBERS = st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1e400", "1e39", "-1e39",
                                 "1e308", "", " ", "abc", "1,5", "0x10", "１２", "10\u00a0", "--1", "1e", "0"])
NUMBER_TEXT = st.one_of(
    st.integers(-20, 120).map(str),
    st.floats(-50, 150).map(repr),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    WEIRD_NUMBERS,
    st.text(max_size=4),
)
FILE_STEM = st.text(st.characters(categories=("L", "N"), include_characters="-_"), min_size=1, max_size=6)
IMAGE_SIZE = st.tuples(st.integers(1, 48), st.integers(1, 48))
NEWLINE = st.sampled_from(["\n", "\r\n", "\r"])


class Damage:
    """How damaged one generated example is. Level 0 writes well-formed files, with only the harmless
    variations (BOMs, CRLF or CR line ends, unicode names, encodings); at level L each field is
    damaged with probability L/10. Hypothesis shrinks towards level 0, so a failure is shown with
    as little damage as it needs."""

    def __init__(self, draw):
        self.draw = draw
        self.level = draw(st.sampled_from([0, 0, 1, 2, 4]))

    def hit(self) -> bool:
        return self.level > 0 and self.draw(st.integers(1, 10)) <= self.level

    def pick(self, good, bad):
        return self.draw(bad) if self.hit() else self.draw(good)


def finish_text(draw, damage: Damage, text: str, encoding: str = "utf-8") -> bytes:
    """Line ends, a BOM, truncation: the ways a text file is saved or damaged."""
    text = text.replace("\n", draw(NEWLINE))
    data = text.encode(encoding, errors="xmlcharrefreplace")
    if encoding == "utf-8" and draw(st.booleans()):
        data = BOM.encode() + data
    if damage.hit():
        data = data[:draw(st.integers(0, len(data)))]
    return data


# ------------------------------------------------------------------ VOC
BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")


@st.composite
def voc_xml(draw) -> bytes:
    damage = Damage(draw)
    if damage.hit() and damage.hit():
        return draw(st.binary(max_size=80))
    parts = []
    if draw(st.integers(0, 3)):
        side = st.integers(1, 64).map(str)
        bad_side = st.integers(-2, 0).map(str) | NUMBER_TEXT
        size = "".join(f"<{tag}>{escape(damage.pick(side, bad_side))}</{tag}>"
                       for tag in ("width", "height") if not damage.hit())
        parts.append(f"<size>{size}<depth>3</depth></size>")
    for _ in range(draw(st.integers(0, 4))):
        obj = []
        name = damage.pick(st.sampled_from(CLASSES), st.none() | st.sampled_from(["zebra", "", "  ", " cat ", "CAT"])
                           | st.text(max_size=5))
        if name is not None:
            obj.append(f"<name>{escape(name)}</name>")
        if draw(st.booleans()):
            flag = damage.pick(st.sampled_from(["0", "1"]), st.sampled_from(["", "true", "2", "x"]))
            obj.append(f"<difficult>{escape(flag)}</difficult>")
        if not damage.hit():
            x1, y1 = draw(st.integers(-10, 50)), draw(st.integers(-10, 50))
            good = dict(zip(BOX_TAGS, map(str, (x1, y1, x1 + draw(st.integers(1, 40)), y1 + draw(st.integers(1, 40))))))
            box = "".join(f"<{tag}>{escape(damage.pick(st.just(good[tag]), NUMBER_TEXT))}</{tag}>"
                          for tag in BOX_TAGS if not damage.hit())
            obj.append(f"<bndbox>{box}</bndbox>")
        parts.append("<object>" + "\n".join(obj) + "</object>")
    text = "<annotation>\n" + "\n".join(parts) + "\n</annotation>\n"
    encoding = damage.pick(st.sampled_from(["utf-8", "utf-8", "latin-1", "utf-16"]),
                           st.sampled_from(["shift_jis", "bogus"]))
    if encoding != "utf-8" or draw(st.booleans()):
        text = f'<?xml version="1.0" encoding="{encoding}"?>\n' + text
    if damage.hit() and damage.hit():
        text = "<!DOCTYPE annotation>\n" + text
    return finish_text(draw, damage, text, encoding if encoding in ("latin-1", "utf-16") else "utf-8")


@st.composite
def voc_folder(draw):
    ids = draw(st.lists(FILE_STEM, min_size=1, max_size=3, unique_by=str.lower))
    return {
        "ids": ids,
        "xml": [draw(voc_xml()) for _ in ids],
        "sizes": [draw(IMAGE_SIZE) for _ in ids],
        "classes": draw(st.sampled_from(["file", "given", "discover"])),
        "classes_file": draw(st.builds(lambda text: text, st.just("\n".join(CLASSES) + "\n")).flatmap(
            lambda text: st.builds(lambda bom, nl: ((BOM if bom else "") + text.replace("\n", nl)).encode(),
                                   st.booleans(), NEWLINE))),
        "split_file": draw(st.builds(lambda bom, nl: ((BOM if bom else "") + nl.join(ids) + nl).encode(),
                                     st.booleans(), NEWLINE)),
    }


def make_voc_folder(root, spec, given=CLASSES):
    for image_id, xml, size in zip(spec["ids"], spec["xml"], spec["sizes"]):
        write(os.path.join(root, "Annotations", image_id + ".xml"), xml)
        save_image(os.path.join(root, "JPEGImages", image_id + ".png"), size)
    write(os.path.join(root, "ImageSets", "Main", "train.txt"), spec["split_file"])
    if spec["classes"] == "file":
        write(os.path.join(root, "classes.txt"), spec["classes_file"])
    classes = given if spec["classes"] == "given" else None
    return lambda: VOCDataset(root, split="train", classes=classes, image_ext=".png")


@PROPERTY
@given(voc_folder())
def test_voc_reader_gives_a_valid_data_set_or_one_data_error(spec):
    with tempfile.TemporaryDirectory() as root:
        build = make_voc_folder(root, spec)
        out = build_or_data_error(build, [image_id + ".xml" for image_id in spec["ids"]])
        if isinstance(out, VOCDataset) and spec["classes"] != "discover":
            assert out.classes == CLASSES


VOC_CASES = {
    # name: (xml, a regex of the DataError, or the expected boxes of the one image (40x30, classes cat dög))
    "nan width": ("<annotation><size><width>nan</width><height>30</height></size></annotation>", []),
    "inf width": ("<annotation><size><width>inf</width><height>30</height></size></annotation>", []),
    "huge width": ("<annotation><size><width>1e400</width><height>1e300</height></size></annotation>", []),
    "string width": ("<annotation><size><width>wide</width><height>30</height></size></annotation>",
                     r"a\.xml: <width> is not a number: 'wide'"),
    "nan coordinate": ("<annotation><object><name>cat</name><bndbox><xmin>nan</xmin><ymin>1</ymin>"
                       "<xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>", []),
    "inf coordinates": ("<annotation><object><name>cat</name><bndbox><xmin>-inf</xmin><ymin>-1e400</ymin>"
                        "<xmax>inf</xmax><ymax>1e39</ymax></bndbox></object></annotation>", []),
    "x2 < x1 and zero size": ("<annotation><object><name>cat</name><bndbox><xmin>9</xmin><ymin>1</ymin>"
                              "<xmax>3</xmax><ymax>5</ymax></bndbox></object><object><name>cat</name><bndbox>"
                              "<xmin>4</xmin><ymin>4</ymin><xmax>4</xmax><ymax>8</ymax></bndbox></object>"
                              "<object><name>dög</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>12</xmax>"
                              "<ymax>13</ymax></bndbox></object></annotation>", [[1, 2, 11, 12]]),
    "outside the image, no size": ("<annotation><object><name>cat</name><bndbox><xmin>-50</xmin><ymin>-50</ymin>"
                                   "<xmax>500</xmax><ymax>500</ymax></bndbox></object></annotation>",
                                   [[0, 0, 40, 30]]),
    "string coordinate": ("<annotation><object><name>cat</name><bndbox><xmin>one</xmin><ymin>1</ymin>"
                          "<xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>",
                          r"a\.xml: <object> #1: <xmin> is not a number: 'one'"),
    "missing coordinate": ("<annotation><object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
                           "<xmax>5</xmax></bndbox></object></annotation>",
                           r"a\.xml: <object> #1: <bndbox> has no <ymax>"),
    "missing bndbox": ("<annotation><object><name>cat</name></object><object><name>cat</name></object></annotation>",
                       r"a\.xml: <object> #1: 'cat' has no <bndbox>"),
    "missing name": ("<annotation><object><bndbox/></object></annotation>",
                     r"a\.xml: <object> #1: <object> has no <name>"),
    "blank name": ("<annotation><object><name>  </name><bndbox/></object></annotation>",
                   r"a\.xml: <object> #1: <object> has no <name>"),
    "unknown class, second object": (
        "<annotation><object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax>"
        "</bndbox></object><object><name>zébra</name></object></annotation>",
        r"a\.xml: unknown class 'zébra'; known classes: cat, dög; .*<object> #2"),
    "truncated": ("<annotation><object><name>cat</na", r"a\.xml: malformed XML"),
    "garbage": ("\x00\x01 not xml", r"a\.xml: malformed XML"),
    "doctype": ("<!DOCTYPE annotation><annotation/>", r"a\.xml: refused: DOCTYPE"),
    "multi-byte encoding": ('<?xml version="1.0" encoding="shift_jis"?><annotation/>',
                            r"a\.xml: malformed XML: multi-byte encodings are not supported"),
    "unknown encoding": ('<?xml version="1.0" encoding="bogus"?><annotation/>', r"a\.xml: malformed XML: .*bogus"),
    "BOM and CRLF": (BOM + "<annotation>\r\n<object><name>dög</name>\r\n<bndbox><xmin>2</xmin><ymin>3</ymin>"
                     "<xmax>12</xmax><ymax>13</ymax></bndbox></object>\r\n</annotation>\r\n", [[1, 2, 11, 12]]),
    "whitespace only": (" \r\n\t", []),
}


@pytest.mark.parametrize("case", list(VOC_CASES))
def test_voc_examples(tmp_path, case):
    xml, expected = VOC_CASES[case]
    spec = {"ids": ["a"], "xml": [xml.encode()], "sizes": [(40, 30)], "classes": "given",
            "classes_file": b"", "split_file": b"a\n"}
    build = make_voc_folder(str(tmp_path), spec, given=["cat", "dög"])
    if isinstance(expected, str):
        with pytest.raises(DataError, match=expected):
            build()
        return
    ds = build_or_data_error(build, ["a.xml"])
    assert isinstance(ds, VOCDataset), ds
    assert ds[0][1]["boxes"].tolist() == expected


def test_voc_drops_non_finite_and_degenerate_boxes_with_one_warning(tmp_path):
    xml = ("<annotation><size><width>40</width><height>30</height></size>"
           + "".join(f"<object><name>cat</name><bndbox><xmin>{a}</xmin><ymin>1</ymin><xmax>{b}</xmax><ymax>9</ymax>"
                     "</bndbox></object>" for a, b in [("nan", 5), (1, "inf"), (9, 3), (2, 2), (1, 8)])
           + "</annotation>")
    make_voc_folder(str(tmp_path), {"ids": ["a"], "xml": [xml.encode()], "sizes": [(40, 30)], "classes": "given",
                                    "classes_file": b"", "split_file": b"a\n"})
    with pytest.warns(UserWarning, match=r"dropped 4 degenerate box\(es\) of 5"):
        ds = VOCDataset(str(tmp_path), split="train", classes=["cat"], image_ext=".png")
    assert ds.get_annotation(0)["boxes"].tolist() == [[0, 0, 7, 8]]


def test_voc_unsafe_xml_error_is_a_data_error():
    assert issubclass(UnsafeXMLError, DataError) and issubclass(UnsafeXMLError, ValueError)


def test_voc_text_files_with_bom_crlf_and_bad_utf8(tmp_path):
    xml = b"<annotation><object><name>d\xc3\xb6g</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>12</xmax>" \
          b"<ymax>13</ymax></bndbox></object></annotation>"
    spec = {"ids": ["a", "b"], "xml": [xml, xml], "sizes": [(40, 30)] * 2, "classes": "file",
            "classes_file": (BOM + "cat\r\ndög\r\n").encode(), "split_file": (BOM + "a\r\nb\r\n").encode()}
    ds = make_voc_folder(str(tmp_path / "ok"), spec)()
    assert ds.classes == ["cat", "dög"] and [r.image_id for r in ds.records] == ["a", "b"]
    assert ds.get_annotation(1)["labels"].tolist() == [2]
    bad = make_voc_folder(str(tmp_path / "bad_split"), {**spec, "split_file": b"a\nb\n\xff\xfe\n"})
    with pytest.raises(DataError, match=r"train\.txt:3: not UTF-8 text"):
        bad()
    bad = make_voc_folder(str(tmp_path / "bad_classes"), {**spec, "classes_file": b"cat\nd\xf6g\n"})
    with pytest.raises(DataError, match=r"classes\.txt:2: not UTF-8 text"):
        bad()
    bad = make_voc_folder(str(tmp_path / "dup_classes"), {**spec, "classes_file": b"cat\ncat\n"})
    with pytest.raises(DataError, match=r"classes\.txt: duplicate class names: cat"):
        bad()


# ------------------------------------------------------------------ YOLO txt
YOLO_NAMES = ["car", "persön", "日本"]


@st.composite
def yolo_label_file(draw) -> bytes:
    damage = Damage(draw)
    if damage.hit() and damage.hit():
        return draw(st.binary(max_size=60))
    unit = st.floats(0, 1).map(repr)
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        cls = damage.pick(st.integers(0, 2).map(str) | st.sampled_from(["1.0", "1e0", "+1", "-0"]),
                          st.integers(-1, 4).map(str) | st.sampled_from(["0.5", "3.0"]) | NUMBER_TEXT)
        count = damage.pick(st.sampled_from([4, 4, 4, 6, 8]), st.sampled_from([0, 1, 3, 5, 7]))
        coords = [damage.pick(unit, st.floats(-0.5, 1.5).map(repr) | NUMBER_TEXT) for _ in range(count)]
        sep = draw(st.sampled_from([" ", " ", "\t", "  ", "\u00a0"]))
        lines.append(sep.join([cls, *coords]) + draw(st.sampled_from(["", " ", "\t"])))
        if draw(st.integers(0, 5)) == 0:
            lines.append(damage.pick(st.sampled_from(["", "   "]),
                                     st.sampled_from(["# comment", "\x00", "0,0.5,0.5,0.1,0.1"])))
    return finish_text(draw, damage, "\n".join(lines) + draw(st.sampled_from(["", "\n"])))


@st.composite
def yolo_folder(draw):
    stems = draw(st.lists(FILE_STEM, min_size=1, max_size=3, unique_by=str.lower))
    labels = [None if draw(st.integers(0, 3)) == 0 else draw(yolo_label_file()) for _ in stems]  # None: no file
    return {"stems": stems, "labels": labels,
            "sizes": [draw(IMAGE_SIZE) for _ in stems]}


def make_yolo_folder(root, spec, yaml_text=None):
    for stem, label, size in zip(spec["stems"], spec["labels"], spec["sizes"]):
        save_image(os.path.join(root, "images", "train", stem + ".png"), size)
        if label is not None:
            write(os.path.join(root, "labels", "train", stem + ".txt"), label)
    if yaml_text is None:
        yaml_text = ("path: .\ntrain: images/train\nnames:\n"
                     + "".join(f"  {i}: {n}\n" for i, n in enumerate(YOLO_NAMES)))
    return write(os.path.join(root, "data.yaml"), yaml_text)


@PROPERTY
@given(yolo_folder())
def test_yolo_reader_gives_a_valid_data_set_or_one_data_error(spec):
    with tempfile.TemporaryDirectory() as root:
        data_yaml = make_yolo_folder(root, spec)
        out = build_or_data_error(lambda: YOLODataset(data_yaml, split="train"), [s + ".txt" for s in spec["stems"]])
        if isinstance(out, DataError):      # a label file's error names its line
            assert re.search(r"\.txt:\d+: ", str(out)), out
        else:
            assert out.classes == YOLO_NAMES and len(out) == len(spec["stems"])


YOLO_CASES = {
    # name: (label text, a regex of the DataError, or the expected boxes of the one 100x50 image)
    "nan class": (b"nan 0.5 0.5 0.2 0.2\n", r"a\.txt:1: class nan is not one of the 2 classes"),
    "inf class": (b"0 0.5 0.5 0.2 0.2\ninf 0.5 0.5 0.2 0.2\n", r"a\.txt:2: class inf is not one of"),
    "huge class": (b"1e400 0.5 0.5 0.2 0.2\n", r"a\.txt:1: class 1e400 is not one of"),
    "negative class": (b"-1 0.5 0.5 0.2 0.2\n", r"a\.txt:1: class -1 is not one of"),
    "extra column": (b"0 0.5 0.5 0.2 0.2 0.1\n", r"a\.txt:1: expected 'class cx cy w h'.* 6 values"),
    "a string": (b"0 0.5 half 0.2 0.2\n", r"a\.txt:1: not numbers"),
    "bad utf-8 on line 3": (b"0 0.5 0.5 0.2 0.2\n\n\xff 0.5\n", r"a\.txt:3: not UTF-8 text"),
    "nan and inf coordinates are dropped": (b"0 nan 0.5 0.2 0.2\n0 0.5 0.5 inf 0.2\n1 -inf 0.5 1e400 1\n"
                                            b"0 1e308 1e308 1e308 1e308\n", []),
    "x2 < x1 and zero size": (b"0 0.5 0.5 -0.2 0.2\n0 0.5 0.5 0 0.2\n1 0.5 0.5 0.2 0.4\n", [[40, 15, 60, 35]]),
    "outside is clipped": (b"0 0.0 0.0 1.0 1.0\n", [[0, 0, 50, 25]]),
    "BOM and CRLF": (BOM.encode() + b"1 0.5 0.5 0.2 0.4\r\n\r\n0 0.5\t0.5 0.2 0.4\r\n",
                     [[40, 15, 60, 35], [40, 15, 60, 35]]),
    "lone CR": (b"1 0.5 0.5 0.2 0.4\r0 0.5 0.5 0.2 0.4", [[40, 15, 60, 35], [40, 15, 60, 35]]),
    "empty": (b"", []),
}


@pytest.mark.parametrize("case", list(YOLO_CASES))
def test_yolo_examples(tmp_path, case):
    label, expected = YOLO_CASES[case]
    data_yaml = make_yolo_folder(str(tmp_path), {"stems": ["a"], "labels": [label], "sizes": [(100, 50)]},
                                 "train: images/train\nnames: [car, person]\n")
    if isinstance(expected, str):
        with pytest.raises(DataError, match=expected):
            YOLODataset(data_yaml, split="train")
        return
    ds = build_or_data_error(lambda: YOLODataset(data_yaml, split="train"), ["a.txt"])
    assert isinstance(ds, YOLODataset), ds
    assert ds[0][1]["boxes"].tolist() == expected


def test_yolo_drops_non_finite_and_degenerate_boxes_with_one_warning(tmp_path):
    label = b"0 nan 0.5 0.2 0.2\n0 0.5 0.5 inf 0.2\n1 0.5 0.5 -0.2 0.2\n1 1.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.4\n"
    data_yaml = make_yolo_folder(str(tmp_path), {"stems": ["a"], "labels": [label], "sizes": [(100, 50)]},
                                 "train: images/train\nnames: [car, person]\n")
    with pytest.warns(UserWarning, match=r"dropped 4 degenerate box\(es\) of 5"):
        ds = YOLODataset(data_yaml, split="train")
    assert ds.get_annotation(0)["boxes"].tolist() == [[40, 15, 60, 35]]


YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=6)
    | st.sampled_from(["images/train", "images", "list.txt", "images/nope", ".", "/", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.integers(-1, 3) | st.text(max_size=3), inner,
                                                                 max_size=3),
    max_leaves=6)


@st.composite
def data_yaml_text(draw) -> bytes:
    damage = Damage(draw)
    if damage.hit() and damage.hit():
        return draw(st.binary(max_size=60) | st.text(max_size=40).map(str.encode))
    data = {}
    if draw(st.booleans()):
        data["path"] = damage.pick(st.sampled_from([".", "", None]), YAML_VALUES)
    if not damage.hit():
        data["train"] = damage.pick(st.sampled_from(["images/train", "list.txt", ["images/train", "list.txt"]]),
                                    st.sampled_from(["images/nope", "/", {"x": 1}, 3.5]) | YAML_VALUES)
    if not damage.hit():
        data["names"] = damage.pick(st.sampled_from([YOLO_NAMES, dict(enumerate(YOLO_NAMES)), ["1", 2, "x"]]),
                                    st.sampled_from([["a", "a"], {1: "a"}, [], {0: "a", "x": "b"}, {0: "a", None: "b"},
                                                     [None], [["a"]], "abc", [True]]) | YAML_VALUES)
    return finish_text(draw, damage, yaml.safe_dump(data, allow_unicode=True))


@PROPERTY
@given(data_yaml_text(), st.booleans(), NEWLINE)
def test_yolo_data_yaml_gives_a_data_set_or_one_error_naming_it(text, list_bom, newline):
    with tempfile.TemporaryDirectory() as root:
        data_yaml = make_yolo_folder(root, {"stems": ["a"], "labels": [b"0 0.5 0.5 0.2 0.2\n"], "sizes": [(20, 10)]},
                                     text)
        write(os.path.join(root, "list.txt"), ((BOM if list_bom else "") + f"images/train/a.png{newline}").encode())
        # a split that points to no folder or list stays a FileNotFoundError (an OSError about a user path)
        build_or_data_error(lambda: YOLODataset(data_yaml, split="train"), ["data.yaml"], also=(FileNotFoundError,))


@pytest.mark.parametrize("yaml_text,match", [
    ("", r"data\.yaml: not a YOLO data file"),
    ("names: [a\ntrain: x", r"data\.yaml:2: malformed YAML: expected ',' or '\]', but got ':'"),
    (b"names: [a]\ntrain: \xff\n", r"data\.yaml:2: not UTF-8 text"),
    ("names: {0: a, x: b}\ntrain: images/train\n", r"data\.yaml: 'names' must be indexed 0\.\.1"),
    ("names: {0: a, null: b}\ntrain: images/train\n", r"data\.yaml: 'names' must be indexed 0\.\.1"),
    ("names: [a, null]\ntrain: images/train\n", r"data\.yaml: 'names' must be a non-empty list of distinct"),
    ("names: [a, [b]]\ntrain: images/train\n", r"data\.yaml: 'names' must be a non-empty list of distinct"),
    ("names: [a]\npath: [x]\ntrain: images/train\n", r"data\.yaml: 'path' must be a folder"),
    ("names: [a]\ntrain: {x: 1}\n", r"data\.yaml: split 'train' must be a folder or \.txt list"),
    ("names: [a]\ntrain: [images/train, 3.5]\n", r"data\.yaml: split 'train' must be a folder or \.txt list"),
    ("names: [a]\ntrain: " + "[" * 1000, r"data\.yaml: malformed YAML"),
])
def test_yolo_bad_data_yaml_examples(tmp_path, yaml_text, match):
    data_yaml = make_yolo_folder(str(tmp_path), {"stems": ["a"], "labels": [b""], "sizes": [(20, 10)]}, yaml_text)
    with pytest.raises(DataError, match=match):
        YOLODataset(data_yaml, split="train")


def test_yolo_data_yaml_with_bom_crlf_and_unicode_names(tmp_path):
    text = BOM + "path: .\r\ntrain: images/train\r\nnames:\r\n  0: persön\r\n  1: 日本\r\n"
    data_yaml = make_yolo_folder(str(tmp_path), {"stems": ["ä"], "labels": [b"1 0.5 0.5 0.5 0.5\n"],
                                                 "sizes": [(20, 10)]}, text.encode())
    ds = YOLODataset(data_yaml, split="train")
    assert ds.classes == ["persön", "日本"] and ds.get_annotation(0)["labels"].tolist() == [2]


# ------------------------------------------------------------------ COCO json
MISSING = object()     # "leave the key out"
ANY_JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 10) | st.floats() | st.text(max_size=4),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                    max_size=3), max_leaves=5)
JSON_NUMBER = st.one_of(st.integers(-5, 60), st.floats(-10, 60), st.floats(allow_nan=True, allow_infinity=True),
                        st.sampled_from([10 ** 400, -(10 ** 400), 1e308, True, "12", None]))


def entry(**fields):
    return {k: v for k, v in fields.items() if v is not MISSING}


def coco_document(draw, damage: Damage):
    def field(good, weird=ANY_JSON):
        """A sensible value; a damaged one is any JSON value, or the key left out."""
        return damage.pick(good, st.just(MISSING) | weird)

    cat_ids = [5, 2, 7]
    categories = [entry(id=field(st.just(cid), st.sampled_from(["7", 5.0, True]) | ANY_JSON),
                        name=field(st.sampled_from(["cat", "dög", "日本"])))
                  for cid in (cat_ids[:draw(st.integers(0, 2))] if damage.hit() else cat_ids)]
    images, annotations = [], []
    for i in range(draw(st.integers(0 if damage.hit() else 1, 3))):
        images.append(entry(id=field(st.just(i + 1) | st.sampled_from([f"im{i}"]), st.sampled_from([1.5, True, None])),
                            file_name=field(st.sampled_from([f"{i}.png", f"ü/{i}.png"]) | FILE_STEM),
                            width=field(st.integers(1, 60), JSON_NUMBER),
                            height=field(st.integers(1, 60), JSON_NUMBER)))
    for k in range(draw(st.integers(0 if damage.hit() else 1, 5))):
        good_box = st.tuples(st.floats(-10, 60), st.floats(-10, 60), st.floats(0, 40), st.floats(0, 40)).map(list)
        weird_box = st.lists(JSON_NUMBER, min_size=0, max_size=5) | st.sampled_from(["1234", None, {}, [[1, 2, 3, 4]]])
        annotation = entry(id=field(st.just(k + 1)),
                           image_id=field(st.integers(1, 3) | st.sampled_from(["im0", "im1"])),
                           category_id=field(st.sampled_from(cat_ids), st.sampled_from([99, "5", 5.0])),
                           bbox=field(good_box, weird_box),
                           iscrowd=field(st.sampled_from([0, 0, 0, 1]), st.sampled_from(["0", "yes", None, 2.5])),
                           difficult=field(st.sampled_from([0, 1]), st.sampled_from(["1", None])))
        annotations.append(annotation)
    doc = {"images": images, "annotations": annotations, "categories": categories}
    for key in ("images", "annotations", "categories"):
        if damage.hit() and damage.hit():
            doc[key] = draw(st.just(MISSING) | ANY_JSON)
    doc = entry(**doc)
    return draw(ANY_JSON) if damage.hit() and damage.hit() else doc


@st.composite
def coco_file_bytes(draw) -> bytes:
    damage = Damage(draw)
    if damage.hit() and damage.hit():
        return draw(st.binary(max_size=60))
    doc = coco_document(draw, damage)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 1])))
    return finish_text(draw, damage, text)


@PROPERTY
@given(coco_file_bytes(), IMAGE_SIZE)
def test_coco_reader_gives_a_valid_data_set_or_one_data_error(data, size):
    with tempfile.TemporaryDirectory() as root:
        for name in ("0.png", "1.png", "2.png", "ü/0.png", "ü/1.png", "ü/2.png"):
            save_image(os.path.join(root, "images", name), size)
        path = write(os.path.join(root, "instances.json"), data)
        build_or_data_error(lambda: COCODataset(os.path.join(root, "images"), path), ["instances.json"])


def coco_doc(annotations=(), images=None, categories=None):
    return {"images": images if images is not None else [{"id": 7, "file_name": "a.png", "width": 50, "height": 40}],
            "annotations": list(annotations),
            "categories": categories if categories is not None else [{"id": 5, "name": "cat"},
                                                                     {"id": 2, "name": "dög"}]}


def box_ann(bbox, **extra):
    return {"id": 3, "image_id": 7, "category_id": 5, "bbox": bbox, **extra}


COCO_CASES = {
    # name: (file text, a regex of the DataError, or the expected boxes of image 7 (50x40))
    "nan width": (coco_doc(images=[{"id": 7, "file_name": "a.png", "width": float("nan"), "height": 40}],
                           annotations=[box_ann([1, 2, 3, 4])]), [[1, 2, 4, 6]]),
    "inf height": (coco_doc(images=[{"id": 7, "file_name": "a.png", "width": 50, "height": float("inf")}],
                            annotations=[box_ann([1, 2, 300, 4])]), [[1, 2, 50, 6]]),
    "huge int width": (coco_doc(images=[{"id": 7, "file_name": "a.png", "width": 10 ** 400, "height": 40}]), []),
    "fractional width": (coco_doc(images=[{"id": 7, "file_name": "a.png", "width": 49.7, "height": 40}],
                                  annotations=[box_ann([40, 2, 30, 4])]), [[40, 2, 49, 6]]),
    "string width": (coco_doc(images=[{"id": 7, "file_name": "a.png", "width": "50", "height": 40}]),
                     r"instances\.json: image id 7 \(images\[0\]\): 'width' must be a number, got '50'"),
    "file_name not a string": (coco_doc(images=[{"id": 7, "file_name": 12}]),
                               r"instances\.json: image id 7 \(images\[0\]\): 'file_name' must be a string"),
    "image not an object": (coco_doc(images=["a.png"]), r"instances\.json: images\[0\] must be an object"),
    "image without id": (coco_doc(images=[{"file_name": "a.png"}]), r"images\[0\]: missing 'id'"),
    "nan and inf bbox dropped": (coco_doc(annotations=[box_ann([float("nan"), 1, 2, 3]),
                                                       box_ann([1, 1, float("inf"), 3]),
                                                       box_ann([1e308, 1, 1e308, 3]), box_ann([1, 2, 3, 4])]),
                                 [[1, 2, 4, 6]]),
    "huge int bbox": (coco_doc(annotations=[box_ann([10 ** 400, 1, 2, 3])]), []),
    "negative size bbox dropped": (coco_doc(annotations=[box_ann([10, 10, -5, 3]), box_ann([10, 10, 0, 3])]), []),
    "bbox a string": (coco_doc(annotations=[box_ann("1234")]),
                      r"instances\.json: annotation id 3 \(annotations\[0\]\): 'bbox' must be \[x, y, w, h\]"),
    "bbox too short": (coco_doc(annotations=[box_ann([1, 2, 3])]), r"annotation id 3 .*'bbox' must be \[x, y, w, h\]"),
    "bbox of strings": (coco_doc(annotations=[box_ann(["1", "2", "3", "4"])]), r"'bbox' must be \[x, y, w, h\]"),
    "bbox of booleans": (coco_doc(annotations=[box_ann([True, 2, 3, 4])]), r"'bbox' must be \[x, y, w, h\]"),
    "bbox missing": (coco_doc(annotations=[{"id": 3, "image_id": 7, "category_id": 5}]),
                     r"annotation id 3 \(annotations\[0\]\): missing 'bbox'"),
    "iscrowd a string": (coco_doc(annotations=[box_ann([1, 2, 3, 4], iscrowd="0")]),
                         r"annotation id 3 .*'iscrowd' must be 0 or 1"),
    "unknown category": (coco_doc(annotations=[box_ann([1, 2, 3, 4], category_id=99)]),
                         r"annotation id 3 \(annotations\[0\]\) has category_id 99, which is not in 'categories'"),
    "unhashable category": (coco_doc(annotations=[box_ann([1, 2, 3, 4], category_id=[5])]),
                            r"annotation id 3 .*category_id"),
    "annotation not an object": (coco_doc(annotations=[[1, 2]]),
                                 r"instances\.json: annotations\[0\] must be an object"),
    "annotation without image_id": (coco_doc(annotations=[{"id": 3}]), r"annotation id 3 .*missing 'image_id'"),
    "category name not a string": (coco_doc(categories=[{"id": 5, "name": 5}]),
                                   r"instances\.json: categories\[0\]: 'name' must be a non-empty string"),
    "category ids of mixed types": (coco_doc(categories=[{"id": 5, "name": "a"}, {"id": "x", "name": "b"}]),
                                    r"instances\.json: categories\[1\]: 'id' must be an integer"),
    "category without id": (coco_doc(categories=[{"name": "a"}]), r"categories\[0\]: missing 'id'"),
    "truncated": ('{"images": [{"id": 1, "file_na', r"instances\.json: malformed JSON"),
    "deeply nested": ("[" * 100000 + "]" * 100000, r"instances\.json: malformed JSON: nested too deeply"),
    "not an object": ("[1, 2]", r"instances\.json: not a COCO instances file"),
    "BOM and CRLF": (BOM + json.dumps(coco_doc(annotations=[box_ann([1, 2, 3, 4])]), indent=1).replace("\n", "\r\n"),
                     [[1, 2, 4, 6]]),
    "unicode file name": (coco_doc(images=[{"id": 7, "file_name": "ü/ä 日.png", "width": 50, "height": 40}],
                                   annotations=[box_ann([1, 2, 3, 4])]), [[1, 2, 4, 6]]),
}


@pytest.mark.parametrize("case", list(COCO_CASES))
def test_coco_examples(tmp_path, case):
    doc, expected = COCO_CASES[case]
    save_image(str(tmp_path / "a.png"), (50, 40))
    save_image(str(tmp_path / "ü" / "ä 日.png"), (50, 40))
    path = write(str(tmp_path / "instances.json"), doc if isinstance(doc, str) else json.dumps(doc))
    if isinstance(expected, str):
        with pytest.raises(DataError, match=expected):
            COCODataset(str(tmp_path), path)
        return
    ds = build_or_data_error(lambda: COCODataset(str(tmp_path), path), ["instances.json"])
    assert isinstance(ds, COCODataset), ds
    assert ds[0][1]["boxes"].tolist() == expected


def test_coco_drops_non_finite_and_degenerate_boxes_with_one_warning(tmp_path):
    save_image(str(tmp_path / "a.png"), (50, 40))
    path = write(str(tmp_path / "instances.json"), json.dumps(coco_doc(annotations=[
        box_ann([float("nan"), 1, 2, 3]), box_ann([1, 1, float("inf"), 3]), box_ann([1, 1, -2, 3]),
        box_ann([60, 1, 2, 3]), box_ann([1, 2, 3, 4])])))
    with pytest.warns(UserWarning, match=r"dropped 4 degenerate box\(es\) of 5"):
        ds = COCODataset(str(tmp_path), path)
    assert ds.get_annotation(0)["boxes"].tolist() == [[1, 2, 4, 6]]
