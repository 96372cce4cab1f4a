"""CRoPD model configuration.

Self-contained on purpose: this file is copied next to every checkpoint so that
`AutoConfig.from_pretrained(folder, trust_remote_code=True)` works without `cropd_hf` installed.
"""

import json
import math
from pathlib import Path
from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.utils import cached_file

PURIFIER_ARCHITECTURES = ("vit", "conv")
PURIFIER_POOLINGS = ("cls", "mean")
FOUNDATION_POOLINGS = ("cls", "mean", "pooler", "grid")
CONTRASTIVE_FEATURES = ("foundation", "purifier")


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

    purifier_architecture: str = "vit"
    conv_channels: list[int] | tuple[int, ...] = (32, 64, 64)
    image_size: int = 32
    num_channels: int = 3
    patch_size: int = 4
    hidden_size: int = 192
    num_hidden_layers: int = 4
    num_attention_heads: int = 3
    intermediate_size: int = 768
    decoder_hidden_size: int = 128
    decoder_num_hidden_layers: int = 2
    decoder_num_attention_heads: int = 4
    decoder_intermediate_size: int = 512
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    qkv_bias: bool = True
    purifier_residual: bool = False
    purifier_residual_bound: float | int | None = None
    purifier_pooling: str = "mean"
    use_purifier: bool = True
    contrastive_features: str = "foundation"
    contrastive_weight: float | int = 1.0
    reconstruction_weight: float | int = 1.0
    adversarial_reconstruction_weight: float | int = 0.0
    contrastive_temperature: float | int = 0.1
    standardize_contrastive_features: bool = True
    train_epsilon: float | int = 8 / 255
    train_attack_steps: int = 1
    train_step_size: float | int | None = None
    foundation_model_name_or_path: str = "facebook/vit-mae-large"
    foundation_model_revision: str | None = None
    foundation_image_size: int = 224
    foundation_num_channels: int = 3
    foundation_image_mean: list[float] | tuple[float, ...] = (0.485, 0.456, 0.406)
    foundation_image_std: list[float] | tuple[float, ...] = (0.229, 0.224, 0.225)
    foundation_pooling: str = "mean"
    foundation_pooling_grid_size: int = 2
    head_batch_norm: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        self.foundation_image_mean = list(self.foundation_image_mean)
        self.foundation_image_std = list(self.foundation_image_std)
        self.conv_channels = list(self.conv_channels)
        self.check_cropd_values(num_labels=kwargs.get("num_labels"))
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

    def check_cropd_values(self, num_labels: Any = None) -> None:
        """Raise a `ValueError` naming the field, its value and what is accepted, for every invalid value."""
        # num_labels is no field: PreTrainedConfig turns it into id2label after this check, range(-3) into {}.
        if num_labels is not None and (not _is_int(num_labels) or num_labels < 1):
            _invalid("num_labels", num_labels, "a positive integer (the number of classes)")
        if getattr(self, "id2label", None) is not None and len(self.id2label) < 1:
            _invalid("id2label", self.id2label, "None or a non-empty {class index: label} map")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACT2FN:
            _invalid("hidden_act", self.hidden_act, f"one of {sorted(ACT2FN)}")
        for name in (
            "image_size",
            "num_channels",
            "patch_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "decoder_hidden_size",
            "decoder_num_hidden_layers",
            "decoder_num_attention_heads",
            "decoder_intermediate_size",
            "foundation_image_size",
            "foundation_num_channels",
            "train_attack_steps",
            "foundation_pooling_grid_size",
        ):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                _invalid(name, value, "a positive integer")
        for name in (
            "qkv_bias",
            "use_purifier",
            "purifier_residual",
            "standardize_contrastive_features",
            "head_batch_norm",
        ):
            if not isinstance(getattr(self, name), bool):
                _invalid(name, getattr(self, name), "True or False")
        for name, choices in (
            ("purifier_architecture", PURIFIER_ARCHITECTURES),
            ("purifier_pooling", PURIFIER_POOLINGS),
            ("foundation_pooling", FOUNDATION_POOLINGS),
            ("contrastive_features", CONTRASTIVE_FEATURES),
        ):
            if getattr(self, name) not in choices:
                _invalid(name, getattr(self, name), f"one of {list(choices)}")
        if not self.conv_channels or not all(_is_int(width) and width >= 1 for width in self.conv_channels):
            _invalid("conv_channels", self.conv_channels, "a non-empty list of positive integers")
        downsampling = 2 ** (len(self.conv_channels) - 1)
        if self.purifier_architecture == "conv" and self.image_size % downsampling:
            _invalid(
                "conv_channels",
                self.conv_channels,
                f"at most as many widths as image_size={self.image_size} can be halved exactly "
                f"(the size must be divisible by 2 ** (len(conv_channels) - 1) = {downsampling})",
            )
        if self.image_size % self.patch_size:
            _invalid("patch_size", self.patch_size, f"a divisor of image_size={self.image_size}")
        if self.hidden_size % self.num_attention_heads:
            _invalid("num_attention_heads", self.num_attention_heads, f"a divisor of hidden_size={self.hidden_size}")
        if self.decoder_hidden_size % self.decoder_num_attention_heads:
            _invalid(
                "decoder_num_attention_heads",
                self.decoder_num_attention_heads,
                f"a divisor of decoder_hidden_size={self.decoder_hidden_size}",
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            _check_real(name, getattr(self, name), low=0.0, high=1.0, accepted="a number in [0, 1)", open_high=True)
        _check_real("layer_norm_eps", self.layer_norm_eps, low=0.0, accepted="a positive number", open_low=True)
        _check_real("initializer_range", self.initializer_range, low=0.0, accepted="a positive number", open_low=True)
        _check_real("contrastive_weight", self.contrastive_weight, low=0.0, accepted="a number >= 0 (λ)")
        for name in ("reconstruction_weight", "adversarial_reconstruction_weight"):
            _check_real(name, getattr(self, name), low=0.0, accepted="a number >= 0")
        _check_real(
            "contrastive_temperature", self.contrastive_temperature, low=0.0, accepted="a number > 0 (τ)", open_low=True
        )
        _check_real("train_epsilon", self.train_epsilon, low=0.0, high=1.0, accepted="a number in [0, 1] (pixel units)")
        if self.purifier_residual_bound is not None:
            _check_real(
                "purifier_residual_bound",
                self.purifier_residual_bound,
                low=0.0,
                high=1.0,
                accepted="None or a number in (0, 1] (pixel units)",
                open_low=True,
            )
            if self.purifier_residual:
                _invalid("purifier_residual", True, "False when purifier_residual_bound is set (one residual form)")
        if self.train_step_size is not None:
            _check_real(
                "train_step_size", self.train_step_size, low=0.0, accepted="None or a number > 0", open_low=True
            )
        if not isinstance(self.foundation_model_name_or_path, str) or not self.foundation_model_name_or_path:
            _invalid("foundation_model_name_or_path", self.foundation_model_name_or_path, "a Hub id or a local folder")
        if self.foundation_model_revision is not None and not isinstance(self.foundation_model_revision, str):
            _invalid("foundation_model_revision", self.foundation_model_revision, "None or a branch, tag or commit")
        if self.num_channels not in (1, self.foundation_num_channels):
            _invalid(
                "num_channels",
                self.num_channels,
                f"1 (repeated to the foundation model's channels) or foundation_num_channels="
                f"{self.foundation_num_channels}",
            )
        for name in ("foundation_image_mean", "foundation_image_std"):
            values = getattr(self, name)
            if len(values) != self.foundation_num_channels or not all(_is_real(v) for v in values):
                _invalid(name, values, f"{self.foundation_num_channels} numbers, one per foundation input channel")
        if any(v <= 0 for v in self.foundation_image_std):
            _invalid("foundation_image_std", self.foundation_image_std, "positive numbers")


def _invalid(name: str, value: Any, accepted: str) -> None:
    raise ValueError(f"CRoPDConfig.{name}={value!r} is invalid; accepted: {accepted}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_real(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    accepted: str = "a number",
    open_low: bool = False,
    open_high: bool = False,
) -> None:
    if not _is_real(value):
        _invalid(name, value, accepted)
    if low is not None and (value < low or (open_low and value == low)):
        _invalid(name, value, accepted)
    if high is not None and (value > high or (open_high and value == high)):
        _invalid(name, value, accepted)


__all__ = ["CRoPDConfig"]
