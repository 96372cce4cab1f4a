"""Image processor for CRoPD: PIL images, numpy arrays and tensors to `pixel_values` in [0, 1] at native size.

No normalization here: the CRoPD model normalizes for its foundation model internally, so that attacks and the
purifier work on [0, 1] pixels (DESIGN.md §2.1). Self-contained, so it loads with `trust_remote_code=True`.
"""

from typing import Any

import numpy as np
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import PILImageResampling
from transformers.processing_utils import ImagesKwargs

try:
    import PIL.Image
except ImportError:  # PIL is optional for transformers; arrays and tensors still work without it
    PIL = None

try:
    import torch
except ImportError:
    torch = None

# ITU-R 601-2 luma, the weights PIL uses for mode "L".
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_CHANNEL_COUNTS = (1, 3, 4)


class CRoPDImageProcessorKwargs(ImagesKwargs, total=False):
    num_channels: int


class CRoPDImageProcessor(PilBackend):
    r"""
    Turns images into the `pixel_values` every CRoPD model takes: float32, shape `(batch, num_channels, height,
    width)`, values in [0, 1].

    Accepts PIL images (any mode), numpy arrays and torch tensors, channels first or last, 2-D grayscale, uint8
    (divided by 255) or float already in [0, 1]. Grayscale is repeated to RGB and RGB turned to luma so the channel
    count matches the model; an alpha channel is dropped.

    Args:
        size (`dict[str, int]`, *optional*, defaults to `{"height": 32, "width": 32}`):
            The model's native size; other sizes are resized (bilinear).
        num_channels (`int`, *optional*, defaults to 3):
            Channels of the output: 1 (grayscale) or 3 (RGB).
    """

    valid_kwargs = CRoPDImageProcessorKwargs
    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BILINEAR
    size = {"height": 32, "width": 32}
    num_channels = 3
    do_resize = True
    # uint8 images are scaled to [0, 1] when they are read (process_image), never twice.
    do_rescale = False
    do_normalize = False
    do_convert_rgb = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.num_channels not in (1, 3):
            raise ValueError(f"CRoPDImageProcessor.num_channels={self.num_channels!r} is invalid; accepted: 1 or 3.")

    def _prepare_images_structure(self, images: Any, expected_ndims: int = 3) -> list[Any]:
        # A 2-D array is one grayscale image; a channel axis keeps transformers' batching rules unambiguous.
        if isinstance(images, (list, tuple)):
            images = [_with_channel_axis(image) for image in images]
        else:
            images = _with_channel_axis(images)
        return super()._prepare_images_structure(images, expected_ndims=expected_ndims)

    def process_image(self, image: Any, num_channels: int | None = None, **kwargs: Any) -> np.ndarray:
        """One image to a float32 array `(num_channels, height, width)` in [0, 1]."""
        num_channels = num_channels or self.num_channels
        array = _to_array(image)
        if array.ndim == 2:  # PIL grayscale
            array = array[None]
        elif array.ndim != 3:
            raise ValueError(
                f"An image must have 2 (height, width) or 3 (channels first or last) dimensions; got shape "
                f"{array.shape}. Pass a batch as a list of images."
            )
        elif array.shape[0] not in _CHANNEL_COUNTS:
            if array.shape[-1] not in _CHANNEL_COUNTS:
                raise ValueError(f"An image must have 1, 3 or 4 channels, first or last; got shape {array.shape}.")
            array = np.moveaxis(array, -1, 0)
        if min(array.shape[1:]) < 1:
            raise ValueError(f"An image must not be empty; got shape {array.shape}.")
        array = _to_unit_range(array)
        return _match_channels(array[:3], num_channels)

    def _preprocess(self, images: list[np.ndarray], **kwargs: Any) -> BatchFeature:
        size = kwargs["size"]
        resized = []
        for image in images:
            if kwargs["do_resize"] and image.shape[1:] != (size.height, size.width):
                image = np.clip(self.resize(image, size=size, resample=kwargs["resample"]), 0.0, 1.0)
            resized.append(image.astype(np.float32))
        return BatchFeature(data={"pixel_values": resized}, tensor_type=kwargs.get("return_tensors"))


def _with_channel_axis(image: Any) -> Any:
    is_array = isinstance(image, np.ndarray) or (torch is not None and isinstance(image, torch.Tensor))
    return image[None] if is_array and image.ndim == 2 else image


def _to_array(image: Any) -> np.ndarray:
    if PIL is not None and isinstance(image, PIL.Image.Image):
        mode = "L" if image.mode in ("1", "L", "I", "I;16", "F", "LA") else "RGB"
        return np.asarray(image.convert(mode))
    if torch is not None and isinstance(image, torch.Tensor):
        return image.detach().cpu().float().numpy() if image.is_floating_point() else image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        return image
    raise ValueError(
        f"Unsupported image type {type(image).__name__}; accepted: PIL.Image.Image, numpy.ndarray or torch.Tensor."
    )


def _to_unit_range(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise ValueError(
                f"Integer images must hold 8-bit values in [0, 255]; got values in [{array.min()}, {array.max()}]."
            )
        return array.astype(np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"Unsupported image dtype {array.dtype}; accepted: uint8, integers in [0, 255], or floats.")
    if not np.isfinite(array).all():
        raise ValueError("Float images must be finite; got NaN or infinite values.")
    if array.min() < 0.0 or array.max() > 1.0:
        raise ValueError(
            f"Float images must have values in [0, 1]; got values in [{array.min():.4g}, {array.max():.4g}] "
            "(divide 8-bit values by 255)."
        )
    return array.astype(np.float32)


def _match_channels(array: np.ndarray, num_channels: int) -> np.ndarray:
    if array.shape[0] == num_channels:
        return array
    if num_channels == 3:
        return np.repeat(array, 3, axis=0)
    return np.tensordot(_LUMA, array, axes=1)[None].astype(np.float32)


__all__ = ["CRoPDImageProcessor"]
