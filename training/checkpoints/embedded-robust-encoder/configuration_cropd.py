"""CRoPD model configuration.

Self-contained on purpose: this file is copied next to every checkpoint so that
`AutoConfig.from_pretrained(folder, trust_remote_code=True)` works without `cropd_hf` installed.

Validation is declarative (huggingface_hub's `@strict`, as transformers' own configs): each field's annotation is its
type, its `checked_field(...)` its range and the text an error shows; the `validate_*` methods check fields against each
other. Every refusal is a `ValueError` "CRoPDConfig.<field>=<value> is invalid; accepted: <what is>."
"""

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

from huggingface_hub.dataclasses import strict, validated_field
from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError
from transformers import AutoConfig, PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.utils import cached_file

PurifierArchitecture = Literal["vit", "conv"]
PurifierPooling = Literal["cls", "mean"]
FoundationPooling = Literal["cls", "mean", "pooler", "grid"]
ContrastiveFeatures = Literal["foundation", "purifier"]
Number = float | int


def checked_field(accepted: str, valid: Callable[[Any], bool] | None = None, **field_kwargs: Any) -> Any:
    """A dataclass field for `@strict`: the annotated type is checked, then `valid`; either failure is reported with
    `accepted`, the text that says what the field takes. `field_kwargs` go to `dataclasses.field` (`default`, ...)."""

    def validator(value: Any) -> None:
        if not valid(value):
            raise ValueError(accepted)

    return validated_field([] if valid is None else validator, metadata={"accepted": accepted}, **field_kwargs)


def checked_number(default: Number | None, accepted: str, valid: Callable[[Number], bool] = lambda number: True) -> Any:
    """A numeric `checked_field`: NaN and infinities are refused; None only where the annotation allows it."""
    return checked_field(
        accepted, lambda value: value is None or (math.isfinite(value) and valid(value)), default=default
    )


def strict_refusals(refusal: Callable[[str, Any, str, BaseException], Exception]) -> Callable[[type], type]:
    """Class decorator over `@strict`, whose StrictDataclass*Error is no ValueError: a refused field raises
    `refusal(field, value, accepted, cause)`, a failed `validate_*` check raises its own error, unwrapped."""

    def decorate(cls: type) -> type:
        strict_setattr, strict_validate = cls.__setattr__, cls.validate

        def __setattr__(self: Any, name: str, value: Any) -> None:
            try:
                strict_setattr(self, name, value)
            except StrictDataclassFieldValidationError as error:
                field = cls.__dataclass_fields__[name]
                accepted = field.metadata.get("accepted", f"a value of type {field.type}")
                raise refusal(name, value, accepted, error.__cause__) from error.__cause__

        def validate(self: Any) -> None:
            try:
                strict_validate(self)
            except StrictDataclassClassValidationError as error:
                raise error.__cause__ from None

        validate.__is_defined_by_strict_decorator__ = True  # lets a subclass apply @strict again
        cls.__setattr__, cls.validate = __setattr__, validate
        return cls

    return decorate


def _positive_int(default: int) -> Any:
    return checked_field("a positive integer", lambda value: value >= 1, default=default)


def _flag(default: bool) -> Any:
    return checked_field("True or False", default=default)


def _choice(default: str, choices: Any) -> Any:
    return checked_field(f"one of {list(get_args(choices))}", default=default)


@strict_refusals(lambda name, value, accepted, cause: _refusal(name, value, accepted))
@strict
class CRoPDConfig(PreTrainedConfig):
    r"""
    Configuration of a CRoPD model: the purifier `g` (an auto-encoder at the dataset's native resolution: ViT-MAE
    style by default, or convolutional), the reference to the frozen foundation model `f`, the linear head `h`, and
    the method's hyper-parameters (arXiv 2504.10850). The defaults are the paper's CIFAR-10 setting in front of
    `facebook/vit-mae-large`.

    Args:
        purifier_architecture (`str`, *optional*, defaults to `"vit"`):
            `"vit"`: a ViT-MAE encoder without masking and a light ViT-MAE decoder (the fields `patch_size` to
            `qkv_bias` below). `"conv"`: a small convolutional auto-encoder whose widths are `conv_channels`.
        conv_channels (`list[int]`, *optional*, defaults to `[32, 64, 64]`):
            Widths of the convolutional purifier's encoder: the first convolution keeps the resolution, each further
            one halves it (so `image_size` must be divisible by `2 ** (len(conv_channels) - 1)`); the decoder
            mirrors it with transposed convolutions.
        image_size (`int`, *optional*, defaults to 32):
            Native (square) size of the input images; the purifier runs at this size.
        num_channels (`int`, *optional*, defaults to 3):
            Channels of the input images (1 for grayscale, 3 for RGB).
        patch_size (`int`, *optional*, defaults to 4):
            Patch size of the purifier; must divide `image_size`.
        hidden_size (`int`, *optional*, defaults to 192):
            Width of the purifier's encoder.
        num_hidden_layers (`int`, *optional*, defaults to 4):
            Depth of the purifier's encoder.
        num_attention_heads (`int`, *optional*, defaults to 3):
            Attention heads of the purifier's encoder; must divide `hidden_size`.
        intermediate_size (`int`, *optional*, defaults to 768):
            MLP width of the purifier's encoder.
        decoder_hidden_size (`int`, *optional*, defaults to 128):
            Width of the purifier's light decoder.
        decoder_num_hidden_layers (`int`, *optional*, defaults to 2):
            Depth of the purifier's decoder.
        decoder_num_attention_heads (`int`, *optional*, defaults to 4):
            Attention heads of the decoder; must divide `decoder_hidden_size`.
        decoder_intermediate_size (`int`, *optional*, defaults to 512):
            MLP width of the decoder.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation of the purifier's MLPs.
        hidden_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout on the purifier's hidden states.
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout on the purifier's attention probabilities.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the purifier's layer norms.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the truncated normal initializer.
        qkv_bias (`bool`, *optional*, defaults to `True`):
            Whether the purifier's query/key/value projections have a bias.
        purifier_residual (`bool`, *optional*, defaults to `False`):
            `False`: the purifier is a plain auto-encoder, `g(x) = sigmoid(decoder(x))`. `True`: the decoder predicts
            a correction in logit space, `g(x) = sigmoid(logit(x) + decoder(x))`, so `g` starts as the identity
            and only learns to move what the training objective asks it to.
        purifier_residual_bound (`float`, *optional*):
            β: with a value, `g(x) = clip(x + β · tanh(decoder(x)), 0, 1)`. `g` starts as the identity and can move
            no pixel by more than β, so its output stays within β of its input on every image, clean or attacked:
            ‖g(x) − x‖² ≤ β², i.e. PSNR ≥ 20·log10(1/β) dB (20 dB for β = 0.1), whatever λ does. Excludes
            `purifier_residual`.
        purifier_residual_gain (`float`, *optional*, defaults to 1.0):
            With `purifier_residual_bound`: `g(x) = clip(x + β · tanh(gain · decoder(x)), 0, 1)`. A larger gain lets
            a few hundred optimizer steps reach a correction that is all-or-nothing (e.g. a pixel pushed back to 0
            or 1), which a zero-initialized output layer at gain 1 learns far more slowly.
        purifier_input_skip (`bool`, *optional*, defaults to `False`):
            Conv purifier only: its output convolution sees the input image beside the decoder's features (a
            U-Net-style skip), so `g` can correct each pixel from its own value, not only from the bottleneck's
            coarse code of the image.
        purifier_pooling (`str`, *optional*, defaults to `"mean"`):
            How the ViT purifier's latent is pooled into one vector: `"cls"` token or `"mean"` of the patch tokens
            (the conv purifier always averages its bottleneck).
        use_purifier (`bool`, *optional*, defaults to `True`):
            `False` builds the Identity baseline `h(f(x))`: no purifier, no purifier weights.
        contrastive_features (`str`, *optional*, defaults to `"foundation"`):
            Features `z` of the adversarial contrastive loss: `"foundation"` = pooled features of `f(g(x))`
            (gradients flow through the frozen `f`), `"purifier"` = pooled latent of `g`'s own encoder.
        contrastive_weight (`float`, *optional*, defaults to 1.0):
            λ, weight of the adversarial contrastive loss against the reconstruction loss (0 = plain auto-encoder).
        reconstruction_weight (`float`, *optional*, defaults to 1.0):
            Weight of the clean reconstruction term ‖g(x) − x‖². It is what keeps `g` a purifier (g(x) ≈ x): with
            too small a weight against λ, `g` turns into a learned encoder whose output no longer looks like `x`.
        adversarial_reconstruction_weight (`float`, *optional*, defaults to 0.0):
            Weight of ‖g(x_adv) − x‖², the reconstruction of the clean image from the stage-1 adversarial view:
            `g` learns to pull an attacked image back to the clean one (a denoising purifier). 0 leaves it out.
        contrastive_temperature (`float`, *optional*, defaults to 0.1):
            τ, temperature of the supervised contrastive loss.
        standardize_contrastive_features (`bool`, *optional*, defaults to `True`):
            Standardize `z` per dimension with the clean batch's mean and standard deviation before the contrastive
            loss. Pooled ViT features share a large common component that puts every cosine similarity near 1,
            which leaves the loss at log(2N - 1) with almost no gradient.
        train_epsilon (`float`, *optional*, defaults to 8/255):
            L∞ radius of the training attack's perturbation, in [0, 1] pixel units.
        train_attack_steps (`int`, *optional*, defaults to 1):
            Steps of the stage-1 training attack on L_con: 1 is FGSM with random start (fast-AT style, the paper's
            choice); more is PGD with random start, stronger and about `train_attack_steps` times as costly.
        train_step_size (`float`, *optional*):
            Step of the training attack; defaults to 1.25 · `train_epsilon` for one step (fast-AT) and to
            2.5 · `train_epsilon` / steps for PGD.
        foundation_model_name_or_path (`str`, *optional*, defaults to `"facebook/vit-mae-large"`):
            Hub id or local folder of the frozen foundation model `f` (any `AutoModel` vision backbone). Its
            weights are referenced, never copied into a CRoPD checkpoint.
        foundation_model_revision (`str`, *optional*):
            Revision (branch, tag or commit) of the foundation model on the Hub.
        foundation_image_size (`int`, *optional*, defaults to 224):
            Input size of `f`; images are resized to it inside the model, differentiably.
        foundation_num_channels (`int`, *optional*, defaults to 3):
            Input channels of `f`; grayscale images are repeated to 3 channels when `f` expects RGB.
        foundation_image_mean (`list[float]`, *optional*, defaults to ImageNet's mean):
            Per-channel mean used to normalize the input of `f`.
        foundation_image_std (`list[float]`, *optional*, defaults to ImageNet's std):
            Per-channel standard deviation used to normalize the input of `f`.
        foundation_pooling (`str`, *optional*, defaults to `"mean"`):
            Pooling of `f`'s output into the features the head sees: `"cls"` token, `"mean"` of the patch
            tokens, the backbone's own `"pooler"` output, or `"grid"`: the patch tokens (or a convolutional
            backbone's feature map) averaged over a `foundation_pooling_grid_size` x `foundation_pooling_grid_size`
            grid of image regions and concatenated, which keeps where in the image a feature is (the head stays
            linear, on `hidden_size · grid_size²` features).
        foundation_pooling_grid_size (`int`, *optional*, defaults to 2):
            Cells per side of the `"grid"` pooling; unused by the other poolings.
        head_batch_norm (`bool`, *optional*, defaults to `True`):
            Put a parameter-free BatchNorm in front of the linear head, as MAE's linear probe does: the head stays
            linear in the features but no longer depends on their scale.

    Example:

    ```python
    >>> from cropd_hf import CRoPDConfig, CRoPDForImageClassification

    >>> config = CRoPDConfig(foundation_model_name_or_path="path/to/vit-mae", num_labels=10)
    >>> model = CRoPDForImageClassification(config)
    ```"""

    model_type = "cropd"

    purifier_architecture: PurifierArchitecture = _choice("vit", PurifierArchitecture)
    conv_channels: list[int] | tuple[int, ...] = checked_field(
        "a non-empty list of positive integers",
        lambda widths: len(widths) > 0 and min(widths) >= 1,
        default=(32, 64, 64),
    )
    image_size: int = _positive_int(32)
    num_channels: int = _positive_int(3)
    patch_size: int = _positive_int(4)
    hidden_size: int = _positive_int(192)
    num_hidden_layers: int = _positive_int(4)
    num_attention_heads: int = _positive_int(3)
    intermediate_size: int = _positive_int(768)
    decoder_hidden_size: int = _positive_int(128)
    decoder_num_hidden_layers: int = _positive_int(2)
    decoder_num_attention_heads: int = _positive_int(4)
    decoder_intermediate_size: int = _positive_int(512)
    hidden_act: str = checked_field(f"one of {sorted(ACT2FN)}", lambda name: name in ACT2FN, default="gelu")
    hidden_dropout_prob: Number = checked_number(0.0, "a number in [0, 1)", lambda p: 0 <= p < 1)
    attention_probs_dropout_prob: Number = checked_number(0.0, "a number in [0, 1)", lambda p: 0 <= p < 1)
    layer_norm_eps: Number = checked_number(1e-6, "a positive number", lambda eps: eps > 0)
    initializer_range: Number = checked_number(0.02, "a positive number", lambda std: std > 0)
    qkv_bias: bool = _flag(True)
    purifier_residual: bool = _flag(False)
    purifier_residual_bound: Number | None = checked_number(
        None, "None or a number in (0, 1] (pixel units)", lambda bound: 0 < bound <= 1
    )
    purifier_residual_gain: Number = checked_number(1.0, "a number > 0", lambda gain: gain > 0)
    purifier_input_skip: bool = _flag(False)
    purifier_pooling: PurifierPooling = _choice("mean", PurifierPooling)
    use_purifier: bool = _flag(True)
    contrastive_features: ContrastiveFeatures = _choice("foundation", ContrastiveFeatures)
    contrastive_weight: Number = checked_number(1.0, "a number >= 0 (λ)", lambda weight: weight >= 0)
    reconstruction_weight: Number = checked_number(1.0, "a number >= 0", lambda weight: weight >= 0)
    adversarial_reconstruction_weight: Number = checked_number(0.0, "a number >= 0", lambda weight: weight >= 0)
    contrastive_temperature: Number = checked_number(0.1, "a number > 0 (τ)", lambda tau: tau > 0)
    standardize_contrastive_features: bool = _flag(True)
    train_epsilon: Number = checked_number(8 / 255, "a number in [0, 1] (pixel units)", lambda eps: 0 <= eps <= 1)
    train_attack_steps: int = _positive_int(1)
    train_step_size: Number | None = checked_number(None, "None or a number > 0", lambda step: step > 0)
    foundation_model_name_or_path: str = checked_field(
        "a Hub id or a local folder", lambda name: len(name) > 0, default="facebook/vit-mae-large"
    )
    foundation_model_revision: str | None = checked_field("None or a branch, tag or commit", default=None)
    foundation_image_size: int = _positive_int(224)
    foundation_num_channels: int = _positive_int(3)
    foundation_image_mean: list[Number] | tuple[Number, ...] = checked_field(
        "finite numbers, one per foundation input channel",
        lambda values: all(math.isfinite(v) for v in values),
        default=(0.485, 0.456, 0.406),
    )
    foundation_image_std: list[Number] | tuple[Number, ...] = checked_field(
        "positive numbers, one per foundation input channel",
        lambda values: all(math.isfinite(v) and v > 0 for v in values),
        default=(0.229, 0.224, 0.225),
    )
    foundation_pooling: FoundationPooling = _choice("mean", FoundationPooling)
    foundation_pooling_grid_size: int = _positive_int(2)
    head_batch_norm: bool = _flag(True)

    def __post_init__(self, **kwargs: Any) -> None:
        self.foundation_image_mean = list(self.foundation_image_mean)
        self.foundation_image_std = list(self.foundation_image_std)
        self.conv_channels = list(self.conv_channels)
        # num_labels is no field: PreTrainedConfig turns it into id2label, range(-3) into {} and 2.5 into a crash.
        num_labels = kwargs.get("num_labels")
        if num_labels is not None and (type(num_labels) is not int or num_labels < 1):
            raise _refusal("num_labels", num_labels, "a positive integer (the number of classes)")
        super().__post_init__(**kwargs)

    @classmethod
    def for_foundation(
        cls, foundation_model_name_or_path: str, foundation_model_revision: str | None = None, **kwargs: Any
    ) -> "CRoPDConfig":
        """A config whose foundation input size, channels and mean/std come from the foundation model's own
        `config.json` and `preprocessor_config.json` (local folder or Hub); explicit `kwargs` win."""
        reference = {"revision": foundation_model_revision}
        foundation = AutoConfig.from_pretrained(foundation_model_name_or_path, **reference)
        processor_file = cached_file(
            foundation_model_name_or_path,
            "preprocessor_config.json",
            _raise_exceptions_for_missing_entries=False,
            **reference,
        )
        processor = json.loads(Path(processor_file).read_text()) if processor_file else {}
        derived: dict[str, Any] = {}
        size = processor.get("size") or getattr(foundation, "image_size", None)
        if isinstance(size, dict):
            size = size.get("height") or size.get("shortest_edge")
        if isinstance(size, int):
            derived["foundation_image_size"] = size
        if isinstance(getattr(foundation, "num_channels", None), int):
            derived["foundation_num_channels"] = foundation.num_channels
        for key in ("image_mean", "image_std"):
            if isinstance(processor.get(key), list):
                derived[f"foundation_{key}"] = processor[key]
        return cls(
            foundation_model_name_or_path=foundation_model_name_or_path,
            foundation_model_revision=foundation_model_revision,
            **{**derived, **kwargs},
        )

    @property
    def effective_train_step_size(self) -> float:
        """Step of the stage-1 training attack (`train_attack_steps` steps)."""
        return self.train_step_size_for(self.train_attack_steps)

    def train_step_size_for(self, steps: int) -> float:
        """Step of a training attack of `steps` steps: `train_step_size`, else 1.25·ε for FGSM with random start
        (Wong et al. 2020) and 2.5·ε/steps for PGD (Madry et al. 2018)."""
        if self.train_step_size is not None:
            return self.train_step_size
        return 1.25 * self.train_epsilon if steps == 1 else 2.5 * self.train_epsilon / steps

    # Checks across fields, run by @strict after __init__ and before save_pretrained.
    def validate_labels(self) -> None:
        if self.id2label is not None and len(self.id2label) < 1:
            raise _refusal("id2label", self.id2label, "None or a non-empty {class index: label} map")

    def validate_conv_downsampling(self) -> None:
        downsampling = 2 ** (len(self.conv_channels) - 1)
        if self.purifier_architecture == "conv" and self.image_size % downsampling:
            raise _refusal(
                "conv_channels",
                self.conv_channels,
                f"at most as many widths as image_size={self.image_size} can be halved exactly "
                f"(the size must be divisible by 2 ** (len(conv_channels) - 1) = {downsampling})",
            )

    def validate_divisors(self) -> None:
        for name, total in (
            ("patch_size", "image_size"),
            ("num_attention_heads", "hidden_size"),
            ("decoder_num_attention_heads", "decoder_hidden_size"),
        ):
            if getattr(self, total) % getattr(self, name):
                raise _refusal(name, getattr(self, name), f"a divisor of {total}={getattr(self, total)}")

    def validate_residual_form(self) -> None:
        if self.purifier_residual_bound is not None and self.purifier_residual:
            raise _refusal("purifier_residual", True, "False when purifier_residual_bound is set (one residual form)")

    def validate_purifier_output(self) -> None:
        if self.purifier_residual_gain != 1 and self.purifier_residual_bound is None:
            raise _refusal(
                "purifier_residual_gain", self.purifier_residual_gain, "1 unless purifier_residual_bound is set"
            )
        if self.purifier_input_skip and self.purifier_architecture != "conv":
            raise _refusal("purifier_input_skip", True, "False unless purifier_architecture='conv'")

    def validate_foundation_channels(self) -> None:
        channels = self.foundation_num_channels
        if self.num_channels not in (1, channels):
            raise _refusal(
                "num_channels",
                self.num_channels,
                f"1 (repeated to the foundation model's channels) or foundation_num_channels={channels}",
            )
        for name in ("foundation_image_mean", "foundation_image_std"):
            if len(getattr(self, name)) != channels:
                raise _refusal(name, getattr(self, name), f"{channels} numbers, one per foundation input channel")


def _refusal(name: str, value: Any, accepted: str) -> ValueError:
    return ValueError(f"CRoPDConfig.{name}={value!r} is invalid; accepted: {accepted}.")


__all__ = ["CRoPDConfig"]
