"""The `robust-image-classification` pipeline: one image, clean and attacked predictions — without the purifier
(the purifier's own head, or a separate undefended classifier) and with it.

Self-contained on purpose (transformers, torch, numpy, PIL and `attacks.py` next to it):
`RobustImageClassificationPipeline.save_pretrained` copies this file and `attacks.py` next to a checkpoint and
declares the task in its `config.json`, so `pipeline(model=checkpoint, trust_remote_code=True)` runs it where
cropd_hf is not installed.
"""

import os
from typing import Any

import httpx
import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from huggingface_hub import is_offline_mode
from torch import nn
from transformers import Pipeline, PreTrainedModel
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import load_image

from .attacks import FGSM, PGD, Attack
from .checks import is_integer, is_real

TASK = "robust-image-classification"
ATTACKS = ("fgsm", "pgd")
DEFAULT_PGD_STEPS = 10
# Larger images are refused before they are decoded: the model looks at a few dozen pixels a side anyway.
MAX_IMAGE_SIDE = 4096
# Seconds to fetch an image URL (transformers' `load_image`).
URL_TIMEOUT = 30
# PIL modes that transformers' `load_image` (which converts to 8-bit RGB) reads without loss: files of other modes
# (16-bit, 32-bit, float, with transparency) are read as they are, for the image processor's own conversion.
RGB_SAFE_MODES = ("1", "L", "P", "RGB", "CMYK", "YCbCr", "LAB", "HSV")
# PGD starts from a random point; a fixed seed per request makes the same request give the same answer.
ATTACK_SEED = 0
# What the chain without the purifier is (`undefended_chain` in the output).
UNDEFENDED_MODEL_CHAIN = "separate undefended model"
PURIFIER_HEAD_CHAIN = "the purifier's head without the purifier"
NO_PURIFIER_CHAIN = "the model itself (it has no purifier)"


class RobustImageClassificationPipeline(Pipeline):
    """
    Classifies an image with a CRoPD model, and, with `attack`, shows what a white-box L∞ attack does to the chain
    without the purifier, `h(f(x))` (or a separate undefended classifier `h'(f(x))`, see below), and to the chain
    with it, `h(f(g(x)))`.

    Each chain is attacked on its own, end to end, in eval mode with input gradients (two separate attacks); an
    attack's label is that chain's own clean prediction (the true label of an image given to a pipeline is unknown),
    so "attacked" means "pushed away from what the chain said on the clean image". A model built without a purifier
    (the Identity baseline) has no chain with the purifier: its output says `has_purifier=False` and gives `None` there.

    The chain without the purifier is, by default, the model's own head without its purifier, `h(f(x))`. That head
    was trained on `f(g(x))`, not on `f(x)`: it is not a real undefended classifier (it can be far less accurate on
    clean images than the model). `undefended_model` gives a real one: a CRoPD model without a purifier
    (`use_purifier=False`, a head `h'` trained on clean `f(x)`), or the path or Hub id of its checkpoint, with the
    same labels, image size and channels as `model`. The chain without the purifier is then `h'(f(x))`, attacked on
    its own. The output's `undefended_chain` says which classifier that chain is. `save_pretrained` saves `model`
    only, not `undefended_model`.

    `save_pretrained` declares the pipeline in the checkpoint (`custom_pipelines` in `config.json`, this file and
    `attacks.py` beside it) for `pipeline(model=checkpoint, trust_remote_code=True)` without cropd_hf. transformers
    then treats the pipeline of such a checkpoint as remote code even where cropd_hf is installed: pass
    `trust_remote_code=True`, or a loaded model (`pipeline(TASK, model=model, image_processor=processor)`).

    Example:

    ```python
    >>> from transformers import pipeline

    >>> robust = pipeline(  # the checkpoint declares the pipeline: its own copy of this file runs
    ...     model="training/checkpoints/embedded",
    ...     trust_remote_code=True,
    ...     undefended_model="training/checkpoints/embedded-undefended",
    ... )
    >>> robust("digit.png", attack="pgd", epsilon=0.1, steps=10)
    {'clean': [{'label': '7', 'score': 0.99}, ...], 'clean_without_purifier': [...],
     'attacked_without_purifier': [...], 'attacked_with_purifier': [...],
     'attack': {'name': 'PGD', 'eps': 0.1, 'alpha': 0.025, 'steps': 10, ...}, 'has_purifier': True,
     'undefended_chain': 'separate undefended model'}
    ```
    """

    _load_processor = False
    _load_image_processor = True
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args: Any, undefended_model: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if getattr(self.model.config, "model_type", None) != "cropd":
            raise ValueError(
                f"The {TASK} pipeline needs a CRoPD model (model_type 'cropd'); got "
                f"{type(self.model).__name__} with model_type {getattr(self.model.config, 'model_type', None)!r}."
            )
        if self.image_processor is None:
            raise ValueError(
                f"The {TASK} pipeline needs the checkpoint's image processor (preprocessor_config.json), or "
                "image_processor=CRoPDImageProcessor(...)."
            )
        # Predictions and attacks alike in eval mode: dropout off, batch norm on its running statistics.
        self.model.eval()
        self.undefended_model = self._undefended_model(undefended_model)

    def _undefended_model(self, undefended_model: Any) -> PreTrainedModel | None:
        """The separate undefended classifier, loaded if named, checked against the model; None without one."""
        if undefended_model is None:
            return None
        if isinstance(undefended_model, (str, os.PathLike)):
            source = os.fspath(undefended_model)
            try:
                # The main model's class: the same code, whether cropd_hf is installed or runs as remote code.
                undefended_model = type(self.model).from_pretrained(source)
            except Exception as error:  # a missing folder, an unreachable Hub, not a CRoPD checkpoint
                raise ValueError(
                    f"undefended_model={source!r} cannot be loaded as a CRoPD checkpoint: {type(error).__name__}: "
                    f"{error}"
                ) from error
        config = getattr(undefended_model, "config", None)
        if not isinstance(undefended_model, PreTrainedModel) or getattr(config, "model_type", None) != "cropd":
            raise ValueError(
                f"undefended_model must be a CRoPD model without a purifier (model_type 'cropd', use_purifier=False), "
                f"or the path or Hub id of its checkpoint; got {type(undefended_model).__name__}."
            )
        if config.use_purifier:
            raise ValueError(
                "undefended_model has a purifier (use_purifier=True): the chain without defence needs a classifier "
                "without one, h'(f(x)) (use_purifier=False, a head trained on clean images)."
            )
        main = self.model.config
        for field in ("image_size", "num_channels"):
            if getattr(config, field) != getattr(main, field):
                raise ValueError(
                    f"undefended_model has {field}={getattr(config, field)!r} but the model has "
                    f"{getattr(main, field)!r}: both chains must take the same images."
                )
        if _labels(config) != _labels(main):
            raise ValueError(
                f"undefended_model has the labels {_labels(config)} but the model has {_labels(main)}: both chains "
                "must predict the same classes."
            )
        return undefended_model.to(device=self.device, dtype=self.model.dtype).eval()

    def _sanitize_parameters(
        self,
        top_k: int | None = None,
        attack: str | None = None,
        epsilon: float | None = None,
        steps: int | None = None,
        return_images: bool | None = None,
        input_data_format: str | None = None,
        undefended_model: Any = None,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        if undefended_model is not None:
            raise ValueError(
                "undefended_model is given when the pipeline is made, not per call: "
                f"pipeline({TASK!r}, model=..., undefended_model=...)."
            )
        preprocess_params: dict[str, Any] = {}
        if input_data_format is not None:
            if not isinstance(input_data_format, str) or input_data_format not in ("channels_first", "channels_last"):
                raise ValueError(
                    f"input_data_format={input_data_format!r} is invalid; accepted: None (inferred), "
                    "'channels_first' or 'channels_last' (where the channel axis of a 3-dimensional array is)."
                )
            # A plain str (ChannelDimension is a str enum): the checkpoint's processor may be remote code.
            preprocess_params["input_data_format"] = (
                "channels_first" if input_data_format == "channels_first" else "channels_last"
            )
        forward_params: dict[str, Any] = {}
        if attack is not None:
            if not isinstance(attack, str) or attack.lower() not in ATTACKS:
                raise ValueError(f"attack={attack!r} is invalid; accepted: None, 'fgsm' or 'pgd'.")
            forward_params["attack"] = attack.lower()
        if epsilon is not None:
            if not is_real(epsilon) or not 0 <= epsilon <= 1:
                raise ValueError(
                    f"epsilon={epsilon!r} is invalid; accepted: a number in [0, 1], the L∞ radius in [0, 1] pixel "
                    "units (8/255 ≈ 0.031 is the paper's)."
                )
            forward_params["epsilon"] = float(epsilon)
        if steps is not None:
            if not is_integer(steps) or steps < 1:
                raise ValueError(f"steps={steps!r} is invalid; accepted: an integer >= 1 (PGD iterations).")
            forward_params["steps"] = int(steps)
        if return_images is not None:
            if not isinstance(return_images, bool):
                raise ValueError(f"return_images={return_images!r} is invalid; accepted: True or False.")
            forward_params["return_images"] = return_images
        postprocess_params: dict[str, Any] = {}
        if top_k is not None:
            if not is_integer(top_k) or top_k < 1:
                raise ValueError(f"top_k={top_k!r} is invalid; accepted: an integer >= 1.")
            postprocess_params["top_k"] = int(top_k)
        return preprocess_params, forward_params, postprocess_params

    def __call__(self, inputs: Any, **kwargs: Any) -> dict[str, Any] | list[dict[str, Any]]:
        """
        Classify the image(s) in `inputs`, clean and, with `attack`, attacked without and with the purifier.

        Args:
            inputs (`str`, `PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, or a list of them):
                A path to an image file or an http(s) URL of one (read by transformers' `load_image`; a URL is
                refused in offline mode, `HF_HUB_OFFLINE=1`), or an image: any PIL mode; an array or tensor
                `(height, width)`, `(height, width, channels)` or `(channels, height, width)`, uint8 in [0, 255] or
                float in [0, 1].
                Grayscale and RGB are converted to the model's channels, and the size to its native size.
            top_k (`int`, *optional*, defaults to 5):
                How many labels each prediction lists (at most the number of classes).
            attack (`str`, *optional*):
                `None` (clean prediction only), `"fgsm"` or `"pgd"` (random start, α = 2.5·ε/steps).
            epsilon (`float`, *optional*, defaults to the model's `config.train_epsilon`):
                L∞ radius of the attack in [0, 1] pixel units.
            steps (`int`, *optional*, defaults to 10):
                PGD iterations (only with `attack="pgd"`).
            input_data_format (`str`, *optional*):
                `"channels_first"` or `"channels_last"`: where the channel axis of a 3-dimensional array or tensor
                is. Inferred by default; an array whose layout is ambiguous (a 3 x 3 RGB image) is refused without it.
            return_images (`bool`, *optional*, defaults to `False`):
                Also return the images, as float32 arrays `(height, width, channels)` with the exact values
                (not rounded to 8 bits, which could undo part of an attack).

        Return:
            For one input a dict, for a list a list of dicts, with:

            - **clean** -- top-k `{"label", "score"}` (softmax) of the model on the image, purifier included.
            - **clean_without_purifier** -- top-k of the chain without the purifier on the clean image: `h(f(x))`,
              or `h'(f(x))` with `undefended_model`; `None` without `attack`.
            - **attacked_without_purifier** -- top-k of that chain on `x'`, `x'` attacked against that chain:
              `h(f(x'))`, or `h'(f(x'))` with `undefended_model`; `None` without `attack`.
            - **attacked_with_purifier** -- top-k of `h(f(g(x'')))`, `x''` attacked against `h(f(g(·)))`; `None`
              without `attack` or without a purifier.
            - **attack** -- the attack's settings (name, eps, alpha, steps, restarts, random_start), or `None`.
            - **has_purifier** -- whether the model has a purifier `g`.
            - **undefended_chain** -- which classifier the chain without the purifier is:
              `"separate undefended model"` (`undefended_model`), `"the purifier's head without the purifier"` (its
              head was trained on purified images: not a real undefended classifier), or
              `"the model itself (it has no purifier)"`.
            - **images** (with `return_images`) -- `input` (the image at native size, in [0, 1]),
              `adversarial_without_purifier` / `perturbation_without_purifier` (`x'`, `x' - x`),
              `adversarial_with_purifier` / `perturbation_with_purifier` (`x''`, `x'' - x`), and `purified`,
              `g(x'')` (`g(x)` without `attack`); `None` where that image does not exist.
        """
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        if isinstance(inputs, list) and not inputs:
            raise ValueError(f"The {TASK} pipeline got an empty list of images as `inputs`.")
        batch_size = kwargs.get("batch_size") or self._batch_size or 1
        if batch_size != 1:
            raise ValueError(f"batch_size={batch_size!r} is not supported: each image is attacked on its own.")
        return super().__call__(inputs, **kwargs)

    def get_inference_context(self) -> Any:
        # The attacks switch autograd back on inside this context, which torch.inference_mode would forbid.
        return torch.no_grad

    def preprocess(self, image: Any, input_data_format: str | None = None) -> BatchFeature:
        try:
            return self._pixel_values(image, input_data_format)
        except ValueError as error:
            # The image processor names its own argument, `images`; say which argument of the pipeline it was.
            raise ValueError(f"{error} (in the `inputs` of the {TASK} pipeline)") from error

    def _pixel_values(self, image: Any, input_data_format: str | None) -> BatchFeature:
        if isinstance(image, (str, os.PathLike)):
            image = _load_image_source(os.fspath(image))
        elif isinstance(image, (np.ndarray, torch.Tensor)):
            _check_array(image)
        elif isinstance(image, PIL.Image.Image):
            _check_size(image.size, f"{image.width} x {image.height} pixels")
        else:
            raise ValueError(
                f"Unsupported input {type(image).__name__}; accepted: a path or http(s) URL of an image file, a PIL "
                "image, a numpy array, a torch tensor, or a list of them."
            )
        options = {} if input_data_format is None else {"input_data_format": input_data_format}
        model_inputs = self.image_processor(images=image, return_tensors="pt", **options)
        return model_inputs.to(self.dtype)

    def _forward(
        self,
        model_inputs: BatchFeature,
        attack: str | None = None,
        epsilon: float | None = None,
        steps: int | None = None,
        return_images: bool = False,
    ) -> dict[str, Any]:
        pixel_values = model_inputs["pixel_values"]
        generator = torch.Generator(device=pixel_values.device).manual_seed(ATTACK_SEED)
        attacker = self._make_attack(attack, epsilon, steps, generator)
        has_purifier = bool(self.model.config.use_purifier)
        undefended = self.model if self.undefended_model is None else self.undefended_model
        without_purifier = _Chain(undefended, purify=False)
        with_purifier = _Chain(self.model, purify=True) if has_purifier else None

        clean = _Chain(self.model, purify=has_purifier)(pixel_values)
        outputs = {
            "clean_logits": clean.logits,
            "attack": attacker.settings() if attacker else None,
            "has_purifier": has_purifier,
            "undefended_chain": self.undefended_chain,
        }
        images = {"input": pixel_values, "purified": clean.purified_pixel_values}
        if attacker is not None:
            # Each chain is attacked away from its own clean prediction.
            clean_without_purifier = without_purifier(pixel_values).logits
            outputs["clean_without_purifier_logits"] = clean_without_purifier
            adversarial = attacker(without_purifier, pixel_values, clean_without_purifier.argmax(dim=-1))
            outputs["attacked_without_purifier_logits"] = without_purifier(adversarial).logits
            images["adversarial_without_purifier"] = adversarial
            if with_purifier is not None:
                adversarial = attacker(with_purifier, pixel_values, clean.logits.argmax(dim=-1))
                attacked = with_purifier(adversarial)
                outputs["attacked_with_purifier_logits"] = attacked.logits
                images["adversarial_with_purifier"] = adversarial
                images["purified"] = attacked.purified_pixel_values
        if return_images:
            outputs["images"] = images
        return outputs

    @property
    def undefended_chain(self) -> str:
        """Which classifier the chain without the purifier is (the output's `undefended_chain`)."""
        if self.undefended_model is not None:
            return UNDEFENDED_MODEL_CHAIN
        return PURIFIER_HEAD_CHAIN if self.model.config.use_purifier else NO_PURIFIER_CHAIN

    def _make_attack(
        self, attack: str | None, epsilon: float | None, steps: int | None, generator: torch.Generator
    ) -> Attack | None:
        if attack is None:
            if epsilon is not None or steps is not None:
                raise ValueError("epsilon and steps set an attack; pass attack='fgsm' or attack='pgd' as well.")
            return None
        # Default ε: the radius the purifier was trained for.
        epsilon = float(self.model.config.train_epsilon) if epsilon is None else epsilon
        if attack == "fgsm":
            if steps is not None:
                raise ValueError("FGSM takes one step; steps only applies to attack='pgd'.")
            return FGSM(epsilon)
        steps = DEFAULT_PGD_STEPS if steps is None else steps
        return PGD(epsilon, alpha=2.5 * epsilon / steps, steps=steps, generator=generator)

    def postprocess(self, model_outputs: dict[str, Any], top_k: int = 5) -> dict[str, Any]:
        top_k = min(top_k, self.model.config.num_labels)
        result = {
            "clean": self._top_k(model_outputs["clean_logits"], top_k),
            "clean_without_purifier": self._top_k(model_outputs.get("clean_without_purifier_logits"), top_k),
            "attacked_without_purifier": self._top_k(model_outputs.get("attacked_without_purifier_logits"), top_k),
            "attacked_with_purifier": self._top_k(model_outputs.get("attacked_with_purifier_logits"), top_k),
            "attack": model_outputs["attack"],
            "has_purifier": model_outputs["has_purifier"],
            "undefended_chain": model_outputs["undefended_chain"],
        }
        if "images" in model_outputs:
            images = model_outputs["images"]
            for chain in ("without_purifier", "with_purifier"):
                if f"adversarial_{chain}" in images:
                    images[f"perturbation_{chain}"] = images[f"adversarial_{chain}"] - images["input"]
            names = ("input", "purified") + tuple(
                f"{kind}_{chain}"
                for chain in ("without_purifier", "with_purifier")
                for kind in ("adversarial", "perturbation")
            )
            result["images"] = {name: _to_channels_last(images.get(name)) for name in names}
        return result

    def _top_k(self, logits: torch.Tensor | None, top_k: int) -> list[dict[str, Any]] | None:
        if logits is None:
            return None
        scores = logits[0].float().softmax(dim=-1)
        values, indices = scores.topk(top_k)
        id2label = self.model.config.id2label
        return [
            {"label": id2label[index], "score": value}
            for value, index in zip(values.tolist(), indices.tolist(), strict=True)
        ]


class _Chain(nn.Module):
    """A model with the purifier on or off, as the `model(images)` module an attack takes."""

    def __init__(self, model: nn.Module, purify: bool) -> None:
        super().__init__()
        self.model = model
        self.purify = purify

    def forward(self, pixel_values: torch.Tensor) -> Any:
        return self.model(pixel_values, purify=self.purify)


def _load_image_source(source: str) -> PIL.Image.Image:
    """An image file, by path or http(s) URL, read through transformers' `load_image`. A file is checked before it
    is decoded: one PIL recognizes, at most `MAX_IMAGE_SIDE` pixels a side, no decompression bomb."""
    if source.startswith(("http://", "https://")):
        return _load_image_url(source)
    if not os.path.isfile(source):
        raise ValueError(f"No image file at {source!r}.")
    try:
        image = PIL.Image.open(source)  # reads the header only: the size is known before decoding
    except PIL.Image.DecompressionBombError as error:
        raise ValueError(f"The image {source!r} is too large ({error}).") from error
    except OSError as error:  # PIL.UnidentifiedImageError among them
        raise ValueError(f"{source!r} is not an image file that PIL can read.") from error
    with image:  # the decoded image is a copy: the file is closed whatever happens
        _check_size(image.size, f"{image.width} x {image.height} pixels")
        try:
            if image.mode in RGB_SAFE_MODES and "transparency" not in image.info:
                return load_image(source)
            image.load()
            return PIL.ImageOps.exif_transpose(image)
        except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt image data
            raise ValueError(f"{source!r} is not a readable image ({error}).") from error


def _load_image_url(url: str) -> PIL.Image.Image:
    """An image URL through `load_image`: PIL's decompression-bomb guard applies while it decodes, the side cap
    right after. Refused in offline mode, which `load_image` itself does not know about."""
    # The environment is read now too: huggingface_hub reads it once, at import.
    if is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        raise ValueError(
            f"No image file at {url!r} can be fetched: offline mode (HF_HUB_OFFLINE=1) allows no network request; "
            "accepted offline: a path to an image file, a PIL image, a numpy array or a torch tensor."
        )
    try:
        # transformers' loader: fetched with httpx, EXIF orientation applied, converted to 8-bit RGB.
        image = load_image(url, timeout=URL_TIMEOUT)
    except PIL.Image.DecompressionBombError as error:
        raise ValueError(f"The image at {url!r} is too large ({error}).") from error
    except (httpx.HTTPError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"{url!r} cannot be read as an image ({type(error).__name__}: {error}).") from error
    _check_size(image.size, f"{image.width} x {image.height} pixels")
    return image


def _check_array(image: np.ndarray | torch.Tensor) -> None:
    if image.ndim not in (2, 3):
        raise ValueError(
            f"An image array must have 2 (height, width) or 3 (channels first or last) dimensions; got shape "
            f"{tuple(image.shape)}. Pass several images as a list."
        )
    _check_size(tuple(image.shape), f"shape {tuple(image.shape)}")


def _check_size(sides: tuple[int, ...], description: str) -> None:
    if max(sides) > MAX_IMAGE_SIDE:
        raise ValueError(
            f"The image is too large ({description}); accepted: at most {MAX_IMAGE_SIDE} pixels a side. "
            "Downscale it first."
        )


def _labels(config: Any) -> dict[int, str]:
    return {int(index): str(label) for index, label in config.id2label.items()}


def _to_channels_last(image: torch.Tensor | None) -> np.ndarray | None:
    return None if image is None else image[0].permute(1, 2, 0).float().numpy()


__all__ = [
    "ATTACKS",
    "MAX_IMAGE_SIDE",
    "NO_PURIFIER_CHAIN",
    "PURIFIER_HEAD_CHAIN",
    "TASK",
    "UNDEFENDED_MODEL_CHAIN",
    "RobustImageClassificationPipeline",
]
