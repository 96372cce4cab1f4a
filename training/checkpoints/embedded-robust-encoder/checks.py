"""Checks of what a caller hands the models, the attacks and the pipeline, with one tolerance and one meaning of
"an integer" and "a number" for all of them.

Self-contained (it only imports torch): it travels next to every checkpoint as remote code, imported by
`modeling_cropd.py`, `attacks.py` and `pipeline_cropd.py`.
"""

import math
import numbers
from typing import Any

import torch

# Pixels outside [0, 1] by less than this are float round-off in upstream preprocessing, not a wrong value range.
PIXEL_RANGE_TOLERANCE = 1e-4


def is_integer(value: Any) -> bool:
    """An integral number that is not a bool (`True` is not a step count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A finite real number that is not a bool (`True` is not an ε)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_pixel_values(
    pixel_values: Any,
    num_channels: int,
    image_size: int,
    labels: Any = None,
    num_labels: int | None = None,
) -> None:
    """Raise a `ValueError` that says what is wrong and what is accepted, before torch fails somewhere deep.

    Any floating dtype is accepted: the models' `forward` casts the pixels to their own parameter dtype. With
    `labels`, they are checked too (class indices in `[0, num_labels)`): the value ranges of both are read in one
    host sync, the only one a forward pass makes.
    """
    accepted = (
        f"a float tensor of shape (batch_size, {num_channels}, {image_size}, {image_size}) with values in [0, 1] "
        "(CRoPDImageProcessor turns PIL images and arrays into that)"
    )
    if not isinstance(pixel_values, torch.Tensor):
        raise ValueError(f"pixel_values must be {accepted}; got {type(pixel_values).__name__}.")
    if not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values must be {accepted}; got dtype {pixel_values.dtype}.")
    if pixel_values.ndim != 4:
        raise ValueError(
            f"pixel_values must be {accepted}; got rank {pixel_values.ndim}, shape {tuple(pixel_values.shape)}."
        )
    if pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"pixel_values must be {accepted}; got {pixel_values.shape[1]} channels, shape {tuple(pixel_values.shape)}."
        )
    if tuple(pixel_values.shape[2:]) != (image_size, image_size):
        raise ValueError(f"pixel_values must be {accepted}; got spatial size {tuple(pixel_values.shape[2:])}.")
    if pixel_values.shape[0] == 0:
        raise ValueError(f"pixel_values must be {accepted}; got an empty batch.")
    extrema = [value.float() for value in torch.aminmax(pixel_values)]
    if labels is not None:
        check_label_layout(labels, len(pixel_values))
        # float32 holds every class index below 2**24 exactly.
        extrema += [value.to(extrema[0]) for value in torch.aminmax(labels)]
    # One host sync: NaN propagates into the minimum and maximum, and so does infinity.
    low, high, *label_range = torch.stack(extrema).tolist()
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"pixel_values must be {accepted}; got NaN or infinite values.")
    if low < -PIXEL_RANGE_TOLERANCE or high > 1 + PIXEL_RANGE_TOLERANCE:
        raise ValueError(
            f"pixel_values must be {accepted}; got values in [{low:.4g}, {high:.4g}] "
            "(divide 8-bit images by 255, and do not normalize: the model normalizes internally)."
        )
    if label_range and (label_range[0] < 0 or label_range[1] >= num_labels):
        raise ValueError(
            f"labels must be class indices in [0, {num_labels}); got values in [{label_range[0]:.0f}, "
            f"{label_range[1]:.0f}]."
        )


def check_label_layout(labels: Any, batch_size: int) -> None:
    """The type and shape of `labels`; their values are checked with the pixels' (`check_pixel_values`)."""
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be an integer tensor of shape ({batch_size},); got {labels!r:.80}.")
    if labels.shape != (batch_size,):
        raise ValueError(
            f"labels must have shape ({batch_size},), one class index per image; got {tuple(labels.shape)}."
        )


__all__ = ["PIXEL_RANGE_TOLERANCE", "check_label_layout", "check_pixel_values", "is_integer", "is_real"]
