import numpy as np
import pytest
import torch
from PIL import Image

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
        np.full((8, 8, 4), 0.25, dtype=np.float32),  # alpha is dropped
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
        (np.array(["a"]), "dtype|image"),
    ],
)
def test_bad_images_raise_clear_errors(image, message):
    with pytest.raises(ValueError, match=message):
        rgb_processor()(image, return_tensors="pt")


def test_bad_num_channels():
    with pytest.raises(ValueError, match="num_channels=2"):
        CRoPDImageProcessor(num_channels=2)
