"""Image processor for CRoPD: PIL images, numpy arrays and tensors to `pixel_values` in [0, 1] at native size.

No normalization here: the CRoPD model normalizes for its foundation model internally, so that attacks and the
purifier work on [0, 1] pixels (docs/design.md §2.1). Self-contained, so it loads with `trust_remote_code=True`.
"""

import base64
import io
import math
import numbers
import os
from typing import Any

import httpx
import numpy as np
from huggingface_hub.errors import StrictDataclassFieldValidationError
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import ChannelDimension, PILImageResampling, infer_channel_dimension_format
from transformers.processing_utils import ImagesKwargs

try:
    import PIL.Image
    import PIL.ImageOps
except ImportError:  # PIL is optional for transformers; arrays and tensors still work without it
    PIL = None

try:
    import torch
except ImportError:
    torch = None

# ITU-R 601-2 luma, the weights PIL uses for mode "L".
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_CHANNEL_COUNTS = (1, 3, 4)
_BACKGROUNDS = {"black": 0.0, "white": 1.0}
_RESAMPLINGS = {int(filter_) for filter_ in PILImageResampling}
_UINT16_MAX = 65535
_ACCEPTED_DTYPES = (
    "uint8 (divided by 255), uint16 (divided by 65535), bool, other integers holding 8-bit values in [0, 255], "
    "or floats in [0, 1]"
)
_ACCEPTED_TYPES = (
    "a PIL.Image.Image, a numpy.ndarray, a torch.Tensor, a path or URL of an image file, or a list of them"
)


class CRoPDImageProcessorKwargs(ImagesKwargs, total=False):
    num_channels: int
    background: str | float | int


class CRoPDImageProcessor(PilBackend):
    r"""
    Turns images into the `pixel_values` every CRoPD model takes: float32, shape `(batch, num_channels, height,
    width)`, values in [0, 1].

    Every input is read at its real range, never clipped:

    - PIL images, any mode: `"1"`, `"L"`, `"P"`, `"RGB"`, `"CMYK"`, `"YCbCr"`, `"HSV"`, `"LAB"` … through PIL's own
      conversion, 8-bit values divided by 255; `"I;16"` (16-bit) divided by 65535; `"I"` (32-bit integers) read as
      16-bit data, values outside [0, 65535] refused; `"F"` (32-bit float) taken as-is, values outside [0, 1]
      refused.
    - numpy arrays and torch tensors: `(height, width)`, or `(channels, height, width)` / `(height, width,
      channels)` with 1, 3 or 4 channels; uint8 divided by 255, uint16 by 65535, bool as 0 / 1, other integers must
      hold 8-bit values in [0, 255], floats must be in [0, 1]. When both the first and the last axis could be the
      channels (a 3 x 3 RGB image, shape `(3, 3, 3)`), pass `input_data_format`; nothing is guessed.
    - a path or http(s) URL of an image file, opened with PIL (mode kept, EXIF orientation applied).

    Transparency (an alpha channel, a 4-channel array, a PIL `transparency` entry) is composited onto `background`,
    never dropped. Then grayscale is repeated to RGB, or RGB turned to luma, so the channel count matches the model.

    Pixel values stay in [0, 1]: the model normalizes internally, so `do_normalize=True`, `image_mean` and
    `image_std` are refused, as are `do_rescale=True` (images are scaled by their dtype's range when read), center
    cropping, padding and a `data_format` other than channels first. `do_convert_rgb` has no effect: every image is
    converted to `num_channels` channels anyway.

    Args:
        size (`dict[str, int]`, *optional*, defaults to `{"height": 32, "width": 32}`):
            The model's native size; other sizes are resized (bilinear by default, in float: no 8-bit rounding).
        num_channels (`int`, *optional*, defaults to 3):
            Channels of the output: 1 (grayscale) or 3 (RGB).
        background (`str` or `float`, *optional*, defaults to `"black"`):
            What transparent pixels are composited onto: `"black"`, `"white"`, or a gray level in [0, 1]. Black
            is the default because the digit datasets CRoPD is trained on (MNIST, sklearn digits) are bright strokes
            on a black background: a digit drawn in white on a transparent canvas stays what the model expects.
            Dark strokes drawn on a transparent canvas need `background="white"` (they then come out dark on
            white, the inverse of MNIST's polarity).
        input_data_format (`str` or `ChannelDimension`, *optional*):
            `"channels_first"` or `"channels_last"`: where the channel axis of 3-dimensional arrays and tensors is.
            By default it is inferred, and an image whose layout is ambiguous is refused.
    """

    valid_kwargs = CRoPDImageProcessorKwargs
    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BILINEAR
    size = {"height": 32, "width": 32}
    num_channels = 3
    background = "black"
    do_resize = True
    # Images are scaled by their dtype's range when they are read (process_image), never twice.
    do_rescale = False
    do_normalize = False
    do_convert_rgb = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_options({name: getattr(self, name, None) for name in self.valid_kwargs.__annotations__})

    def preprocess(self, images: Any, *args: Any, **kwargs: Any) -> BatchFeature:
        try:
            return super().preprocess(images, *args, **kwargs)
        except StrictDataclassFieldValidationError as error:
            # transformers' type check of the keyword arguments raises an exception that is neither a TypeError
            # nor a ValueError; its message names the argument.
            kind = ValueError if isinstance(error.__cause__, ValueError) else TypeError
            raise kind(f"CRoPDImageProcessor: {error}") from None

    def _validate_preprocess_kwargs(self, **kwargs: Any) -> None:
        _check_options(kwargs)

    def _prepare_images_structure(self, images: Any, expected_ndims: int = 3) -> list[Any]:
        # A flat list of single images: a 4-dimensional array or tensor is a batch, a list (of lists) is flattened.
        # Done here rather than by transformers' make_flat_list_of_images, which cannot take a 2-D grayscale array.
        return _flat_list_of_images(images)

    def process_image(self, image: Any, **kwargs: Any) -> np.ndarray:
        """One image to a float32 array `(num_channels, height, width)` in [0, 1]."""
        num_channels = kwargs.get("num_channels") or self.num_channels
        background = _background_level(kwargs.get("background", self.background))
        if PIL is not None and isinstance(image, PIL.Image.Image):
            color, alpha = _read_pil_image(image)
        else:
            color, alpha = _read_array(image, kwargs.get("input_data_format"))
        if color.shape[1] < 1 or color.shape[2] < 1:
            _refuse(f"an image of height {color.shape[1]} and width {color.shape[2]} is empty", "a non-empty image")
        if alpha is not None:
            color = color * alpha + np.float32(background) * (1 - alpha)
        return _match_channels(color.astype(np.float32), num_channels)

    def _preprocess(self, images: list[np.ndarray], **kwargs: Any) -> BatchFeature:
        size = kwargs["size"]
        resample = kwargs.get("resample")
        resample = PILImageResampling.BILINEAR if resample is None else PILImageResampling(int(resample))
        resized = []
        for image in images:
            if kwargs["do_resize"] and image.shape[1:] != (size.height, size.width):
                image = _resize(image, size.height, size.width, resample)
            resized.append(image.astype(np.float32))
        return BatchFeature(data={"pixel_values": resized}, tensor_type=kwargs.get("return_tensors"))


def _check_options(options: dict[str, Any]) -> None:
    """Raise a ValueError / TypeError naming the option, for every option the processor cannot honour."""
    num_channels = options.get("num_channels")
    if num_channels is not None and (isinstance(num_channels, bool) or num_channels not in (1, 3)):
        _invalid("num_channels", num_channels, "1 or 3")
    _background_level(options.get("background"))
    for name in ("input_data_format", "data_format"):
        value = options.get(name)
        if value is not None and (not isinstance(value, str) or value not in ("channels_first", "channels_last")):
            _invalid(name, value, "None, 'channels_first' or 'channels_last'")
    if options.get("data_format") == ChannelDimension.LAST:
        _invalid("data_format", options["data_format"], "None or 'channels_first' (the model takes channels first)")
    normalize = "pixel values stay in [0, 1]: the CRoPD model normalizes internally (config.foundation_image_mean/std)"
    if options.get("do_normalize"):
        _invalid("do_normalize", options["do_normalize"], f"False or None; {normalize}")
    for name in ("image_mean", "image_std"):
        if options.get(name) is not None:
            _invalid(name, options[name], f"None; {normalize}")
    if options.get("do_rescale"):
        _invalid(
            "do_rescale",
            options["do_rescale"],
            "False or None; images are scaled by their dtype's range when read (uint8 / 255, uint16 / 65535)",
        )
    for name in ("do_center_crop", "do_pad"):
        if options.get(name):
            _invalid(name, options[name], "False or None (CRoPDImageProcessor only resizes)")
    size = options.get("size")
    if size is not None:
        height, width = getattr(size, "height", None), getattr(size, "width", None)
        if not all(isinstance(side, int) and not isinstance(side, bool) and side >= 1 for side in (height, width)):
            _invalid("size", size, "{'height': int >= 1, 'width': int >= 1}")
    resample = options.get("resample")
    if resample is not None and (
        isinstance(resample, bool) or not isinstance(resample, int) or resample not in _RESAMPLINGS
    ):
        _invalid("resample", resample, f"None or a PIL resampling filter, one of {sorted(_RESAMPLINGS)}")
    return_tensors = options.get("return_tensors")
    if return_tensors is not None and return_tensors not in ("pt", "np"):
        _invalid("return_tensors", return_tensors, "None, 'pt' or 'np'")


def _background_level(background: Any) -> float:
    if background is None:
        return 0.0
    if isinstance(background, str) and background in _BACKGROUNDS:
        return _BACKGROUNDS[background]
    if isinstance(background, numbers.Real) and not isinstance(background, bool) and 0 <= background <= 1:
        return float(background)
    if isinstance(background, (str, numbers.Real)) and not isinstance(background, bool):
        raise ValueError(
            f"CRoPDImageProcessor: background={background!r} is invalid; accepted: 'black', 'white' or a gray level "
            "in [0, 1]."
        )
    raise TypeError(
        f"CRoPDImageProcessor: background={background!r} ({type(background).__name__}) is invalid; accepted: "
        "'black', 'white' or a gray level in [0, 1]."
    )


def _invalid(name: str, value: Any, accepted: str) -> None:
    raise ValueError(f"CRoPDImageProcessor: {name}={value!r} is invalid; accepted: {accepted}.")


def _refuse(problem: str, accepted: str) -> None:
    raise ValueError(f"Invalid image in `images`: {problem}; accepted: {accepted}.")


def _flat_list_of_images(images: Any) -> list[Any]:
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("`images` is an empty list; accepted: " + _ACCEPTED_TYPES + ".")
        flat = []
        for image in images:
            flat += _flat_list_of_images(image) if isinstance(image, (list, tuple)) else _one_or_batch(image)
        return flat
    return _one_or_batch(images)


def _one_or_batch(image: Any) -> list[Any]:
    if isinstance(image, (str, os.PathLike)):
        return [_open_image_source(os.fspath(image))]
    is_tensor = torch is not None and isinstance(image, torch.Tensor)
    if (is_tensor or isinstance(image, np.ndarray)) and image.ndim == 4:
        return list(image)
    if is_tensor or isinstance(image, np.ndarray) or (PIL is not None and isinstance(image, PIL.Image.Image)):
        return [image]
    raise ValueError(f"Unsupported image type {type(image).__name__} in `images`; accepted: {_ACCEPTED_TYPES}.")


def _open_image_source(source: str) -> "PIL.Image.Image":
    """A path or http(s) URL of an image file (or a base64 string), opened with PIL, its mode kept.

    transformers' `load_image` resolves the same sources, but converts every image to RGB: that clips 16-bit and
    float images and drops transparency, which is what this processor reads properly.
    """
    if PIL is None:
        raise ValueError(f"`images` holds the path {source!r}; opening image files needs PIL (pip install pillow).")
    if os.path.isfile(source):
        what, read = "a file", lambda: source
    elif source.startswith(("http://", "https://")):  # fetched as transformers.image_utils.load_image does
        what, read = "a URL", lambda: io.BytesIO(httpx.get(source, timeout=60, follow_redirects=True).content)
    else:
        what = "a string that is no path of an existing file nor an http(s) URL, read as base64"
        data = source.split(",", 1)[-1] if source.startswith("data:image/") else source
        read = lambda: io.BytesIO(base64.b64decode(data, validate=True))  # noqa: E731
    try:
        image = PIL.Image.open(read())
        image.load()
    except (OSError, ValueError, httpx.HTTPError, PIL.Image.DecompressionBombError) as error:
        raise ValueError(
            f"`images` holds {source[:200]!r}, {what}, which is not a readable image ({type(error).__name__}: "
            f"{error}); accepted: {_ACCEPTED_TYPES}."
        ) from error
    return PIL.ImageOps.exif_transpose(image)


def _read_pil_image(image: "PIL.Image.Image") -> tuple[np.ndarray, np.ndarray | None]:
    """`(color, alpha)`: color `(1 or 3, height, width)` in [0, 1], alpha `(1, height, width)` or None."""
    mode = image.mode
    high_range = mode in ("F", "I") or mode.startswith("I;16")
    has_alpha = not high_range and (bool({"A", "a"} & set(image.getbands())) or "transparency" in image.info)
    gray = mode in ("1", "L", "LA", "La")
    try:
        # PIL's conversions are right for 8-bit modes; 16-bit and float modes are read as they are (PIL would clip).
        values = np.asarray(
            image
            if high_range
            else image.convert(("LA" if has_alpha else "L") if gray else ("RGBA" if has_alpha else "RGB"))
        )
    except (OSError, ValueError) as error:
        raise ValueError(
            f"Invalid image in `images`: a PIL image of mode {mode!r} and size {image.size} cannot be read as "
            f"grayscale or RGB ({error}); accepted: images PIL can convert to 'L', 'LA', 'RGB' or 'RGBA'."
        ) from error
    if mode == "F":
        return _unit_floats(values, "a PIL image of mode 'F'")[None], None
    if mode == "I":
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low < 0 or high > _UINT16_MAX:
            _refuse(
                f"a PIL image of mode 'I' (32-bit integers) holds values in [{low}, {high}]",
                "16-bit values in [0, 65535] for mode 'I' (divided by 65535); convert other ranges to mode 'F' "
                "in [0, 1] first",
            )
    if high_range:  # "I" and "I;16*": 16-bit data
        return (values.astype(np.float32) / _UINT16_MAX)[None], None
    pixels = values.astype(np.float32) / 255
    pixels = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
    return (pixels[:-1], pixels[-1:]) if has_alpha else (pixels, None)


def _read_array(image: Any, input_data_format: Any) -> tuple[np.ndarray, np.ndarray | None]:
    array = _to_numpy(image)
    if array.ndim == 2:
        array = array[None]
    elif array.ndim != 3:
        _refuse(
            f"an array of shape {array.shape} has {array.ndim} dimensions",
            "2 (height, width) or 3 (channels first or last) dimensions per image; pass a batch as a list of "
            "images or a 4-dimensional array",
        )
    else:
        array = np.moveaxis(array, _channel_axis(array, input_data_format), 0)
    array = _to_unit_range(array)
    if array.shape[0] == 4:  # RGBA
        return array[:3], array[3:]
    return array, None


def _channel_axis(array: np.ndarray, input_data_format: Any) -> int:
    shape = array.shape
    first, last = shape[0] in _CHANNEL_COUNTS, shape[-1] in _CHANNEL_COUNTS
    if input_data_format is None:
        if first and last and shape != (1, 1, 1):
            raise ValueError(
                f"Invalid image in `images`: the channel axis of an image of shape {shape} is ambiguous (both its "
                "first and its last axis could hold 1, 3 or 4 channels); pass input_data_format='channels_first' or "
                "input_data_format='channels_last'."
            )
        if not first and not last:
            _refuse(
                f"an image of shape {shape} has neither 1, 3 nor 4 channels on its first or last axis",
                "1, 3 or 4 channels, first or last",
            )
        input_data_format = infer_channel_dimension_format(array, num_channels=_CHANNEL_COUNTS)
    axis = 0 if input_data_format == ChannelDimension.FIRST else -1
    if shape[axis] not in _CHANNEL_COUNTS:
        _refuse(
            f"with input_data_format={str(ChannelDimension(input_data_format).value)!r}, an image of shape {shape} "
            f"has {shape[axis]} channels",
            "1, 3 or 4 channels on that axis",
        )
    return axis


def _to_numpy(image: Any) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return image
    image = image.detach().cpu()
    if image.is_complex():
        _refuse(f"a tensor of dtype {image.dtype}", _ACCEPTED_DTYPES)
    # numpy has no bfloat16; every float is read at float32 precision.
    return image.float().numpy() if image.is_floating_point() else image.numpy()


def _to_unit_range(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255
    if np.issubdtype(array.dtype, np.uint16):
        return array.astype(np.float32) / _UINT16_MAX
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low < 0 or high > 255:
            _refuse(
                f"an integer image of dtype {array.dtype} holds values in [{low}, {high}]",
                "8-bit values in [0, 255] for integer dtypes other than uint8 and uint16",
            )
        return array.astype(np.float32) / 255
    if not np.issubdtype(array.dtype, np.floating):
        _refuse(f"an image of dtype {array.dtype}", _ACCEPTED_DTYPES)
    return _unit_floats(array, f"a float image of dtype {array.dtype}")


def _unit_floats(array: np.ndarray, description: str) -> np.ndarray:
    if not array.size:
        return array.astype(np.float32)
    low, high = float(array.min()), float(array.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        _refuse(f"{description} holds NaN or infinite values", "finite values in [0, 1]")
    if low < 0.0 or high > 1.0:
        _refuse(
            f"{description} holds values in [{low:.4g}, {high:.4g}]",
            "values in [0, 1] for floats (divide 8-bit values by 255, 16-bit values by 65535)",
        )
    return array.astype(np.float32)


def _match_channels(array: np.ndarray, num_channels: int) -> np.ndarray:
    if array.shape[0] == num_channels:
        return array
    if num_channels == 3:
        return np.repeat(array, 3, axis=0)
    return np.tensordot(_LUMA, array, axes=1)[None].astype(np.float32)


def _resize(image: np.ndarray, height: int, width: int, resample: Any) -> np.ndarray:
    # Each channel as a 32-bit float PIL image: no rounding to 8 bits (transformers' resize goes through uint8).
    channels = [np.asarray(PIL.Image.fromarray(channel).resize((width, height), resample)) for channel in image]
    return np.clip(np.stack(channels), 0.0, 1.0)


__all__ = ["CRoPDImageProcessor"]
