"""The one image reader (scratchdet.structures.image.read_image): 8-bit RGB out of every mode Pillow
opens, 16/32-bit and float images stretched by their own range, alpha dropped, EXIF orientation
applied, and undecodable files refused with BadImageError naming the file."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

import scratchdet.data
from scratchdet.data import VOCDataset, synth
from scratchdet.structures.errors import BadImageError, UserError
from scratchdet.structures.image import read_image, read_image_size, to_pil_rgb, to_rgb8

GRADIENT_12BIT = np.linspace(0, 4095, 64 * 48).reshape(48, 64).astype(np.uint16)   # a 12-bit sensor's range


def save(tmp_path, image, name, **options):
    path = tmp_path / name
    image.save(path, **options)
    return path


def assert_rgb8(image, size):
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == size
    return np.asarray(image)


# ------------------------------------------------------------------ 16-bit, 32-bit, float
def test_16bit_png_gradient_is_stretched_not_saturated(tmp_path):
    path = save(tmp_path, Image.fromarray(GRADIENT_12BIT), "g16.png")
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")                               # Pillow opens it 16-bit
        assert (np.asarray(raw.convert("RGB")) == 255).mean() > 0.9   # Pillow's own convert saturates: white
    pixels = assert_rgb8(read_image(path), (64, 48))
    assert pixels.min() == 0 and pixels.max() == 255                  # the image's min and max
    assert len(np.unique(pixels)) > 200                               # a gradient, not flat
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    assert (np.diff(pixels[..., 0].reshape(-1).astype(int)) >= 0).all()   # monotone, as the source


def test_a_known_16bit_value_maps_by_the_documented_rule(tmp_path):
    values = np.array([[0, 1000, 2048, 4095]], np.uint16)
    pixels = assert_rgb8(read_image(save(tmp_path, Image.fromarray(values), "known.png")), (4, 1))
    # min -> 0, max -> 255, linear and rounded between: v * 255 / 4095
    assert pixels[0, :, 0].tolist() == [0, round(1000 * 255 / 4095), round(2048 * 255 / 4095), 255] == [0, 62, 128, 255]


@pytest.mark.parametrize("value, expected", [(0, 0), (100, 100), (65535, 255)])
def test_a_constant_16bit_image_keeps_its_value_clipped(tmp_path, value, expected):
    image = Image.fromarray(np.full((5, 7), value, np.uint16))
    pixels = assert_rgb8(read_image(save(tmp_path, image, f"c{value}.png")), (7, 5))
    assert (pixels == expected).all()


@pytest.mark.parametrize("dtype, mode", [(">u2", "I;16B"), ("<u2", "I;16"), ("int32", "I"), ("float32", "F")])
def test_16bit_32bit_and_float_tiffs(tmp_path, dtype, mode):
    array = GRADIENT_12BIT.astype(dtype)
    if dtype == "int32":
        array = array * 1000 - 2_000_000                              # a range far outside 16 bits, negative too
    image = Image.fromarray(array)
    assert image.mode == mode
    path = save(tmp_path, image, "x.tif")
    with Image.open(path) as raw:
        assert raw.mode == mode
    pixels = assert_rgb8(read_image(path), (64, 48))
    assert pixels.min() == 0 and pixels.max() == 255 and len(np.unique(pixels)) > 200
    assert np.array_equal(pixels, np.asarray(read_image(save(tmp_path, Image.fromarray(GRADIENT_12BIT), "ref.png"))))


def test_i16l_and_float_edge_values():
    little = Image.frombytes("I;16L", (3, 1), np.array([0, 300, 600], "<u2").tobytes())
    assert np.asarray(to_rgb8(little))[0, :, 0].tolist() == [0, 128, 255]
    floats = Image.fromarray(np.array([[0.0, np.nan, 0.5, np.inf, 1.0, -np.inf]], np.float32))
    assert np.asarray(to_rgb8(floats))[0, :, 0].tolist() == [0, 0, 128, 255, 255, 0]    # NaN -> 0, inf -> 255


def test_pil_16bit_images_given_to_predict_are_stretched_too():
    # model.predict / preprocess take PIL images through to_pil_rgb, which uses the same rule
    image = Image.fromarray(GRADIENT_12BIT)
    assert np.array_equal(np.asarray(to_pil_rgb(image)), np.asarray(to_rgb8(image)))
    assert np.asarray(to_pil_rgb(image)).max() == 255 and np.asarray(to_pil_rgb(image)).min() == 0


# ------------------------------------------------------------------ 8-bit modes
RGB = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode, fmt", [("1", "png"), ("L", "png"), ("P", "png"), ("RGB", "png"), ("CMYK", "jpg"),
                                       ("CMYK", "tif"), ("RGBA", "png"), ("LA", "png"), ("RGB", "jpg")])
def test_8bit_modes_round_trip(tmp_path, mode, fmt):
    source = Image.fromarray(RGB).convert(mode)
    path = save(tmp_path, source, f"m.{fmt}", **(dict(quality=100, subsampling=0) if fmt == "jpg" else {}))
    with Image.open(path) as raw:
        assert raw.mode == mode
    pixels = assert_rgb8(read_image(path), (16, 12))
    expected = np.asarray(source.convert("RGB")).astype(int)
    tolerance = 8 if fmt == "jpg" else 0                              # JPEG's rounding at quality 100
    assert np.abs(pixels.astype(int) - expected).max() <= tolerance


def test_alpha_is_dropped_not_composited(tmp_path):
    rgba = np.concatenate([RGB, np.zeros((12, 16, 1), np.uint8)], axis=2)   # fully transparent
    pixels = assert_rgb8(read_image(save(tmp_path, Image.fromarray(rgba, "RGBA"), "a.png")), (16, 12))
    assert np.array_equal(pixels, RGB)                                # the stored colour, not black
    assert np.array_equal(np.asarray(to_pil_rgb(rgba)), pixels)      # the same rule as for a 4-channel array
    la = np.stack([RGB[..., 0], np.zeros((12, 16), np.uint8)], axis=2)
    pixels = assert_rgb8(read_image(save(tmp_path, Image.fromarray(la, "LA"), "la.png")), (16, 12))
    assert np.array_equal(pixels[..., 1], RGB[..., 0])


def test_palette_with_transparency_keeps_the_palette_colour(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    path = save(tmp_path, image, "p.png", transparency=1)
    with Image.open(path) as raw:
        assert raw.mode == "P" and "transparency" in raw.info
    assert (assert_rgb8(read_image(path), (4, 4)) == [200, 100, 50]).all()


# ------------------------------------------------------------------ EXIF orientation
@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_exif_orientation_6_rotates_to_the_displayed_frame(tmp_path, fmt):
    # stored 40 wide, 20 high, a white block in the top-left corner; orientation 6 = "rotate 90 CW to show"
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:10, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(tmp_path, Image.fromarray(stored), f"o6.{fmt}", exif=exif.tobytes())
    image = read_image(path)
    assert image.size == (20, 40) == read_image_size(path)           # width and height swapped
    pixels = np.asarray(image).astype(int)
    assert pixels[:10, -10:].mean() > 200                             # the block is now top-right
    assert pixels[:10, :10].mean() < 50 and pixels[-10:, :].mean() < 50
    plain = save(tmp_path, Image.fromarray(stored), f"o1.{fmt}")
    assert read_image(plain).size == (40, 20) == read_image_size(plain)


def test_datasets_read_through_the_one_reader(tmp_path):
    root = str(tmp_path / "synth")
    synth.generate(root, 2, 1, seed=0, image_size=40)
    ds = VOCDataset(root, split="train")
    image, _ = ds[0]
    assert np.array_equal(np.asarray(image), np.asarray(read_image(ds.records[0].image_path)))


# ------------------------------------------------------------------ undecodable files
def test_zero_byte_file_is_a_bad_image_naming_the_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(BadImageError, match=r"cannot decode image .*empty\.jpg: .+") as info:
        read_image(path)
    assert isinstance(info.value, UserError) and isinstance(info.value, OSError)
    with pytest.raises(BadImageError, match=r"empty\.jpg"):
        read_image_size(path)


def test_truncated_jpeg_is_a_bad_image_naming_the_file_and_the_reason(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(BadImageError, match=r"cannot decode image .*cut\.jpg: .*truncated") as info:
        read_image(path)
    assert info.value.__cause__ is not None                           # Pillow's own error travels with it


def test_missing_file_and_not_an_image(tmp_path):
    with pytest.raises(BadImageError, match=r"image file not found: .*gone\.png"):
        read_image(tmp_path / "gone.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(BadImageError, match=r"cannot decode image .*notes\.png"):
        read_image(text)


def test_data_bad_image_error_is_the_structures_one():
    assert scratchdet.data.BadImageError is BadImageError


def test_float_tensor_with_nan_or_inf_says_so():
    for bad in (float("nan"), float("inf")):
        image = torch.zeros(3, 4, 4)
        image[0, 1, 1] = bad
        with pytest.raises(ValueError, match="contains NaN or inf"):
            to_pil_rgb(image)
