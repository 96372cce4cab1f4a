import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.image_utils import ChannelDimension

from cropd_hf import CRoPDImageProcessor


def rgb_processor():
    return CRoPDImageProcessor(size={"height": 8, "width": 8}, num_channels=3)


def gray_processor():
    return CRoPDImageProcessor(size={"height": 8, "width": 8}, num_channels=1)


def test_uint8_pil_image_is_scaled_to_unit_range():
    array = np.random.default_rng(0).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    pixel_values = rgb_processor()(Image.fromarray(array), return_tensors="pt").pixel_values
    assert pixel_values.dtype == torch.float32
    assert pixel_values.shape == (1, 3, 8, 8)
    torch.testing.assert_close(pixel_values[0], torch.from_numpy(array).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize(
    "image",
    [
        np.full((8, 8, 3), 0.25, dtype=np.float32),  # channels last
        np.full((3, 8, 8), 0.25, dtype=np.float64),  # channels first
        torch.full((3, 8, 8), 0.25),
        np.concatenate([np.full((8, 8, 3), 0.25), np.ones((8, 8, 1))], axis=-1),  # opaque alpha
    ],
)
def test_float_arrays_and_tensors_in_unit_range_are_kept(image):
    pixel_values = rgb_processor()(image, return_tensors="pt").pixel_values
    assert pixel_values.shape == (1, 3, 8, 8)
    torch.testing.assert_close(pixel_values, torch.full((1, 3, 8, 8), 0.25))


def test_channels_are_converted_both_ways():
    gray = np.full((8, 8), 0.5, dtype=np.float32)
    assert rgb_processor()(gray, return_tensors="pt").pixel_values.shape == (1, 3, 8, 8)
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red: luma 0.299
    pixel_values = gray_processor()(Image.fromarray(rgb), return_tensors="pt").pixel_values
    assert pixel_values.shape == (1, 1, 8, 8)
    torch.testing.assert_close(pixel_values, torch.full((1, 1, 8, 8), 0.299), atol=3e-3, rtol=0)


def test_other_sizes_are_resized_and_stay_in_unit_range():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, size=(40, 30), dtype=np.uint8))
    pixel_values = gray_processor()([image, image], return_tensors="pt").pixel_values
    assert pixel_values.shape == (2, 1, 8, 8)
    assert pixel_values.min() >= 0.0 and pixel_values.max() <= 1.0


def test_save_and_load(tmp_path):
    gray_processor().save_pretrained(tmp_path)
    loaded = CRoPDImageProcessor.from_pretrained(tmp_path)
    assert loaded.num_channels == 1
    assert (loaded.size.height, loaded.size.width) == (8, 8)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.full((8, 8), 2.0, dtype=np.float32), "values in \\[0, 1\\]"),
        (np.full((8, 8), np.nan, dtype=np.float32), "finite"),
        (np.full((8, 8), 300, dtype=np.int64), "\\[0, 255\\]"),
        (np.zeros((8, 8, 2), dtype=np.uint8), "1, 3 or 4 channels"),
        (np.zeros((8, 8, 3), dtype=np.complex64), "dtype complex64"),
        (np.array(["a"]), "dtype|image"),
    ],
)
def test_bad_images_raise_clear_errors(image, message):
    with pytest.raises(ValueError, match=message):
        rgb_processor()(image, return_tensors="pt")


def test_bad_num_channels():
    with pytest.raises(ValueError, match="num_channels=2"):
        CRoPDImageProcessor(num_channels=2)


# Issue 4: every PIL mode and array layout read by its real range, transparency composited, nothing guessed.


def gradient(low: float, high: float, shape=(8, 8)) -> np.ndarray:
    return np.linspace(low, high, num=int(np.prod(shape)), dtype=np.float64).reshape(shape)


def test_a_float_pil_image_in_unit_range_is_taken_as_is():
    values = gradient(0.0, 1.0).astype(np.float32)
    pixel_values = gray_processor()(Image.fromarray(values), return_tensors="pt").pixel_values  # mode "F"
    torch.testing.assert_close(pixel_values[0, 0], torch.from_numpy(values), atol=0, rtol=0)


@pytest.mark.parametrize("values", [gradient(0.0, 2.0), gradient(-0.5, 0.5), np.full((8, 8), np.nan)])
def test_a_float_pil_image_outside_unit_range_is_refused(values):
    with pytest.raises(ValueError, match=r"`images`: a PIL image of mode 'F' holds (values in|NaN).*\[0, 1\]"):
        gray_processor()(Image.fromarray(values.astype(np.float32)))


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_a_16_bit_pil_image_is_divided_by_65535(mode):
    levels = np.round(gradient(0, 655)).astype(np.uint16)  # a gradient over 1 % of the 16-bit range
    if mode == "I;16B":  # PIL's convert() to it clips at 255
        image = Image.frombytes(mode, (8, 8), levels.astype(">u2").tobytes())
    else:
        image = Image.fromarray(levels) if mode == "I;16" else Image.fromarray(levels).convert(mode)
    assert image.mode == mode
    pixel_values = gray_processor()(image, return_tensors="pt").pixel_values
    torch.testing.assert_close(pixel_values[0, 0], torch.from_numpy(levels / 65535).float())
    assert pixel_values.mean().item() == pytest.approx(0.005, abs=1e-4)


@pytest.mark.parametrize("levels", [np.full((8, 8), 70_000), np.full((8, 8), -1)])
def test_a_32_bit_pil_image_outside_16_bit_range_is_refused(levels):
    image = Image.fromarray(levels.astype(np.int32))
    assert image.mode == "I"
    with pytest.raises(ValueError, match=r"mode 'I' .* holds values in .* accepted: 16-bit values in \[0, 65535\]"):
        gray_processor()(image)


def test_a_uint16_array_is_divided_by_65535():
    levels = np.round(gradient(0, 65535)).astype(np.uint16)
    pixel_values = gray_processor()(levels, return_tensors="pt").pixel_values
    torch.testing.assert_close(pixel_values[0, 0], torch.from_numpy(levels / 65535).float())


def digit_mask() -> np.ndarray:
    mask = np.zeros((8, 8), dtype=bool)
    mask[1:7, 3:5] = True  # a "1"
    return mask


def test_an_alpha_only_digit_is_composited_not_blanked():
    """Black strokes drawn only through alpha on a transparent canvas: dropping alpha leaves a blank image."""
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 3] = digit_mask() * 255
    pixel_values = gray_processor()(Image.fromarray(rgba), background="white", return_tensors="pt").pixel_values
    expected = np.where(digit_mask(), 0.0, 1.0)  # dark strokes on the white background
    torch.testing.assert_close(pixel_values[0, 0], torch.from_numpy(expected).float())


def test_a_white_on_transparent_digit_composited_onto_the_default_black_stays_an_mnist_digit():
    # Transparent pixels that hold white color: dropping alpha gives an all-white image.
    rgba = np.full((8, 8, 4), 255, dtype=np.uint8)
    rgba[..., 3] = digit_mask() * 255
    pixel_values = gray_processor()(Image.fromarray(rgba), return_tensors="pt").pixel_values
    torch.testing.assert_close(pixel_values[0, 0], torch.from_numpy(digit_mask()).float())
    assert CRoPDImageProcessor().background == "black"


@pytest.mark.parametrize("background", ["black", "white", 0.25])
def test_partial_alpha_blends_with_the_background(background):
    level = {"black": 0.0, "white": 1.0}.get(background, background)
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, luma 0.299
    rgba[..., 3] = 51  # alpha 0.2
    expected = 0.2 * 0.299 + 0.8 * level
    processor = CRoPDImageProcessor(size={"height": 8, "width": 8}, num_channels=1, background=background)
    for image in (Image.fromarray(rgba), rgba, rgba / 255.0, torch.from_numpy(rgba).permute(2, 0, 1)):
        pixel_values = processor(image, return_tensors="pt").pixel_values
        torch.testing.assert_close(pixel_values, torch.full((1, 1, 8, 8), expected), atol=2e-3, rtol=0)


def test_gray_with_alpha_and_palette_transparency_are_composited():
    gray = np.where(digit_mask(), 255, 0).astype(np.uint8)
    alpha = np.where(digit_mask(), 255, 0).astype(np.uint8)
    la = Image.fromarray(np.stack([np.full((8, 8), 255, np.uint8), alpha], axis=-1))  # mode "LA", white color
    assert la.mode == "LA"
    palette = Image.fromarray(gray).convert("P")
    palette.info["transparency"] = palette.getpixel((0, 0))  # the background's palette index is transparent
    palette_alpha = Image.fromarray(np.full((8, 8), 255, np.uint8)).convert("P")
    palette_alpha.putalpha(Image.fromarray(alpha))
    premultiplied = Image.fromarray(np.dstack([gray] * 3 + [alpha])).convert("RGBa")
    for image in (la, palette, palette_alpha, premultiplied):
        white = gray_processor()(image, background="white", return_tensors="pt").pixel_values[0, 0]
        black = gray_processor()(image, background="black", return_tensors="pt").pixel_values[0, 0]
        torch.testing.assert_close(black, torch.from_numpy(digit_mask()).float(), msg=image.mode)
        torch.testing.assert_close(white, torch.ones(8, 8), msg=image.mode)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("1", 1.0),
        ("L", 200 / 255),
        ("P", 200 / 255),
        ("RGB", 200 / 255),
        ("RGBX", 200 / 255),
        ("CMYK", 200 / 255),
        ("YCbCr", 200 / 255),
        ("HSV", 200 / 255),
        ("LA", 200 / 255),
        ("I", 200 / 65535),
        ("F", 200.0),  # refused: a float image must be in [0, 1]
    ],
)
def test_every_pil_mode_is_converted_by_its_range(mode, expected):
    image = Image.fromarray(np.full((8, 8), 255 if mode == "1" else 200, dtype=np.uint8)).convert(mode)
    if expected > 1:
        with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
            gray_processor()(image)
        return
    for processor in (gray_processor(), rgb_processor()):
        pixel_values = processor(image, return_tensors="pt").pixel_values
        torch.testing.assert_close(pixel_values, torch.full_like(pixel_values, expected), atol=3e-3, rtol=0)


def test_a_3_by_3_rgb_image_is_not_read_as_channels_first():
    green = np.zeros((3, 3, 3), dtype=np.uint8)
    green[..., 1] = 255
    with pytest.raises(ValueError, match=r"shape \(3, 3, 3\) is ambiguous.*input_data_format='channels_last'"):
        gray_processor()(green)
    for layout in ("channels_last", ChannelDimension.LAST):
        pixel_values = gray_processor()(green, input_data_format=layout, return_tensors="pt").pixel_values
        torch.testing.assert_close(pixel_values, torch.full((1, 1, 8, 8), 0.587), atol=1e-6, rtol=0)
    first = gray_processor()(np.moveaxis(green, -1, 0), input_data_format="channels_first", return_tensors="pt")
    torch.testing.assert_close(first.pixel_values, torch.full((1, 1, 8, 8), 0.587), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", [(1, 8, 3), (4, 8, 1), (3, 5, 4), (1, 1, 3)])
def test_images_whose_height_could_be_channels_are_refused_without_input_data_format(shape):
    with pytest.raises(ValueError, match="ambiguous.*input_data_format"):
        rgb_processor()(np.zeros(shape, dtype=np.uint8))
    assert rgb_processor()(np.zeros(shape, np.uint8), input_data_format="channels_last").pixel_values[0].shape == (
        3,
        8,
        8,
    )


def test_an_explicit_layout_that_does_not_fit_the_shape_is_refused():
    with pytest.raises(ValueError, match=r"input_data_format='channels_first', an image of shape \(8, 8, 3\) has 8"):
        rgb_processor()(np.zeros((8, 8, 3), np.uint8), input_data_format="channels_first")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"do_normalize": True}, "do_normalize=True is invalid; accepted: False or None; pixel values stay in"),
        ({"image_mean": [0.5]}, "image_mean=(0.5,) is invalid"),
        ({"image_std": 0.5}, "image_std=0.5 is invalid"),
        ({"do_rescale": True}, "do_rescale=True is invalid"),
        ({"do_center_crop": True}, "do_center_crop=True is invalid"),
        ({"do_pad": True}, "do_pad=True is invalid"),
        ({"data_format": "channels_last"}, "data_format='channels_last' is invalid"),
        ({"input_data_format": "sideways"}, "input_data_format='sideways' is invalid; accepted: None, "),
        ({"background": "blue"}, "background='blue' is invalid; accepted: 'black', 'white' or a gray level"),
        ({"background": 1.5}, "background=1.5 is invalid"),
        ({"resample": 17}, "resample=17 is invalid"),
        ({"return_tensors": "tf"}, "return_tensors='tf' is invalid"),
    ],
)
def test_options_the_processor_cannot_honour_are_refused(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        gray_processor()(np.zeros((8, 8), np.uint8), **options)
    if "return_tensors" not in options:
        with pytest.raises(ValueError, match=re.escape(message)):
            CRoPDImageProcessor(**options)


@pytest.mark.parametrize(
    ("options", "name"),
    [({"do_normalize": "yes"}, "do_normalize"), ({"input_data_format": 3}, "input_data_format")],
)
def test_wrongly_typed_options_raise_a_type_error_naming_them(options, name):
    with pytest.raises(TypeError, match=f"field '{name}'"):
        gray_processor()(np.zeros((8, 8), np.uint8), **options)


def test_background_is_saved_and_loaded(tmp_path):
    CRoPDImageProcessor(background="white").save_pretrained(tmp_path)
    assert CRoPDImageProcessor.from_pretrained(tmp_path).background == "white"


def test_resizing_keeps_float_precision():
    # transformers' resize goes through uint8: 0.3 became 77 / 255, and a {0, 1} float image was not rescaled.
    pixel_values = gray_processor()(np.full((16, 16), 0.3), return_tensors="pt").pixel_values
    torch.testing.assert_close(pixel_values, torch.full((1, 1, 8, 8), 0.3), atol=1e-6, rtol=0)
    stripes = np.zeros((16, 16))
    stripes[:, ::2] = 1.0
    pixel_values = gray_processor()(stripes, return_tensors="pt").pixel_values
    interior = pixel_values[..., 1:-1]  # PIL's bilinear filter reads past the border columns
    torch.testing.assert_close(interior, torch.full_like(interior, 0.5), atol=1e-6, rtol=0)


def test_batches_lists_and_files(tmp_path):
    batch = np.zeros((2, 8, 8, 3), np.uint8)
    assert rgb_processor()(batch, return_tensors="pt").pixel_values.shape == (2, 3, 8, 8)
    assert rgb_processor()([batch[0], [batch[1], Image.new("L", (8, 8))]]).pixel_values[2].shape == (3, 8, 8)
    levels = np.round(gradient(0, 655)).astype(np.uint16)
    Image.fromarray(levels).save(tmp_path / "deep.png")  # a 16-bit PNG, opened as "I;16"
    for source in (str(tmp_path / "deep.png"), tmp_path / "deep.png"):
        pixel_values = gray_processor()(source, return_tensors="pt").pixel_values
        torch.testing.assert_close(pixel_values[0, 0], torch.from_numpy(levels / 65535).float())
    with pytest.raises(ValueError, match="`images` holds 'missing.png'"):
        gray_processor()("missing.png")
    with pytest.raises(ValueError, match="`images` is an empty list"):
        gray_processor()([])
