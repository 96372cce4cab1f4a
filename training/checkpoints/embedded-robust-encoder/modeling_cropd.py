"""PyTorch CRoPD models: the purifier `g` and the composed robust classifier `h(f(g(x)))`.

Self-contained on purpose (it only imports transformers, torch and the configuration next to it): this file is
copied next to every checkpoint so that the Auto classes load it with `trust_remote_code=True`.
"""

import math
import os
import posixpath
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import get_torch_context_manager_or_global_device
from transformers.models.vit_mae.configuration_vit_mae import ViTMAEConfig
from transformers.models.vit_mae.modeling_vit_mae import (
    ViTMAEDecoder,
    ViTMAEEmbeddings,
    ViTMAEForPreTraining,
    ViTMAEModel,
    build_2d_sinusoidal_position_embedding,
)
from transformers.utils import ModelOutput, can_return_tuple

from .checks import check_pixel_values
from .configuration_cropd import CRoPDConfig

# A residual purifier adds its correction to logit(x); pixels at exactly 0 or 1 are clamped this far inside.
RESIDUAL_LOGIT_EPS = 1e-3
NO_PURIFIER = "This model was built with use_purifier=False (the Identity baseline): it has no purifier."


@dataclass
class CRoPDPurifierOutput(ModelOutput):
    r"""
    reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`):
        The purified image `g(x)`, pixels in [0, 1], same shape as the input.
    pooled_latent (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        The purifier encoder's latent pooled as `config.purifier_pooling` says (the "purifier" contrastive features).
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_tokens, hidden_size)`):
        The purifier encoder's tokens: CLS first, then the patches (ViT purifier), or the bottleneck's positions
        (conv purifier, `hidden_size` = the last of `conv_channels`).
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        The purifier encoder's hidden states: the embeddings and each layer's output (ViT purifier), or each
        convolution's feature map `(batch_size, channels, height, width)` (conv purifier).
    """

    reconstruction: torch.FloatTensor | None = None
    pooled_latent: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class CRoPDImageClassifierOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given):
        Cross-entropy of the logits against the labels.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        Classification scores of the head `h`.
    features (`torch.FloatTensor` of shape `(batch_size, foundation_hidden_size)`):
        Pooled features of the frozen foundation model, the input of the head.
    purified_pixel_values (`torch.FloatTensor`, *optional*, returned when the purifier ran):
        `g(x)`, the image the foundation model saw (before resizing and normalization).
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        The frozen foundation model's hidden states, as it returns them (for a ViT: the embeddings and each
        layer's output), on the image it saw.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    features: torch.FloatTensor | None = None
    purified_pixel_values: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@torch.no_grad()
def initialize_vit_mae_embeddings(module: nn.Module) -> None:
    """Give every ViT-MAE embedding in `module` its sin-cos position table and random CLS / mask tokens.

    transformers 5.23 leaves them at zero for a `ViTMAEModel` / `ViTMAEDecoder` built from a config (its
    `initialize_weights` returns early once the patch projection is marked initialized, and the decoder branch of
    `_init_weights` zeroes them). A model without positions cannot tell where a patch is. Tensors loaded from a
    checkpoint are left alone (`transformers.initialization` skips them).
    """
    for submodule in module.modules():
        if isinstance(submodule, ViTMAEEmbeddings):
            grid = int(submodule.patch_embeddings.num_patches**0.5)
            init.copy_(submodule.position_embeddings, _mae_position_table(grid, submodule.position_embeddings))
            init.normal_(submodule.cls_token, std=submodule.config.initializer_range)
        elif isinstance(submodule, ViTMAEDecoder):
            grid = int((submodule.decoder_pos_embed.shape[1] - 1) ** 0.5)
            init.copy_(submodule.decoder_pos_embed, _mae_position_table(grid, submodule.decoder_pos_embed))
            init.normal_(submodule.mask_token, std=submodule.config.initializer_range)


def _mae_position_table(grid: int, like: torch.Tensor) -> torch.Tensor:
    table = build_2d_sinusoidal_position_embedding(height=grid, width=grid, embed_dim=like.shape[-1], cls_token=True)
    # Same half swap as ViTMAEEmbeddings.initialize_weights, so pre-trained MAE checkpoints stay compatible.
    half = table.shape[-1] // 2
    return torch.cat([table[..., half:], table[..., :half]], dim=-1).unsqueeze(0).to(like.dtype)


def purifier_vit_mae_config(config: CRoPDConfig) -> ViTMAEConfig:
    """The `ViTMAEConfig` of the purifier: the CRoPD architecture fields, no masking."""
    return ViTMAEConfig(
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=config.num_channels,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        decoder_hidden_size=config.decoder_hidden_size,
        decoder_num_hidden_layers=config.decoder_num_hidden_layers,
        decoder_num_attention_heads=config.decoder_num_attention_heads,
        decoder_intermediate_size=config.decoder_intermediate_size,
        hidden_act=config.hidden_act,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        layer_norm_eps=config.layer_norm_eps,
        initializer_range=config.initializer_range,
        qkv_bias=config.qkv_bias,
        mask_ratio=0.0,
    )


class CRoPDConvAutoEncoder(nn.Module):
    """The convolutional purifier body: `conv_channels` widths down (stride 2 after the first), mirrored up.

    Returns the image logits at the input size, the bottleneck as tokens `(batch, positions, channels)` and each
    convolution's feature map.
    """

    def __init__(self, config: CRoPDConfig) -> None:
        super().__init__()
        widths = [config.num_channels, *config.conv_channels]
        down: list[nn.Module] = []
        for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            down += [_PurifierConv(width_in, width_out, 3, stride=1 if index == 0 else 2, padding=1), nn.GELU()]
        up: list[nn.Module] = []
        for width_in, width_out in zip(widths[:1:-1], widths[-2:0:-1], strict=True):
            up += [_PurifierConvTranspose(width_in, width_out, 4, stride=2, padding=1), nn.GELU()]
        skip = config.num_channels if config.purifier_input_skip else 0
        up.append(_PurifierOutputConv(widths[1] + skip, config.num_channels, 3, padding=1))
        self.input_skip = config.purifier_input_skip
        self.encoder = nn.Sequential(*down)
        self.decoder = nn.Sequential(*up)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """The image logits, the bottleneck as tokens, and each convolution's feature map (after its GELU)."""
        feature_maps = []
        hidden = pixel_values
        for layer in self.encoder:
            hidden = layer(hidden)
            if isinstance(layer, nn.GELU):
                feature_maps.append(hidden)
        decoded = self.decoder[:-1](hidden)
        if self.input_skip:
            decoded = torch.cat([decoded, pixel_values], dim=1)
        return self.decoder[-1](decoded), hidden.flatten(2).transpose(1, 2), tuple(feature_maps)


class _PurifierConv(nn.Conv2d):
    """A convolution of the conv purifier (its own class so `_init_weights` gives it He initialization)."""


class _PurifierConvTranspose(nn.ConvTranspose2d):
    """A transposed convolution of the conv purifier (He initialization, like `_PurifierConv`)."""


class _PurifierOutputConv(nn.Conv2d):
    """The conv purifier's last layer, zero at start: g starts as the identity (residual) or a flat grey image,
    never with saturated sigmoids whose gradients vanish."""


def _fixed_patch_order(batch_size: int, num_patches: int, device: torch.device) -> torch.Tensor:
    # ViT-MAE shuffles patches by argsort(noise); increasing noise keeps every patch in its place, every time.
    return torch.arange(num_patches, device=device, dtype=torch.float32).expand(batch_size, -1)


class CRoPDPreTrainedModel(PreTrainedModel):
    config: CRoPDConfig
    config_class = CRoPDConfig
    base_model_prefix = "purifier"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["ViTMAEEmbeddings", "ViTMAELayer", "ViTMAEDecoder"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, _PurifierOutputConv):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, (_PurifierConv, _PurifierConvTranspose)):
            # The ViT default (N(0, 0.02)) shrinks the signal of a GELU conv stack layer after layer.
            init.kaiming_normal_(module.weight, nonlinearity="relu")
            init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        # Any CRoPD checkpoint opens with both Auto classes under trust_remote_code, as it does in-process:
        # AutoModel gives the purifier, AutoModelForImageClassification the whole chain.
        if self._auto_class is not None:
            module = type(self).__module__.rsplit(".", 1)[-1]
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                "AutoModel": f"{module}.CRoPDModel",
                "AutoModelForImageClassification": f"{module}.CRoPDForImageClassification",
            }
        super().save_pretrained(save_directory, *args, **kwargs)


class CRoPDModel(CRoPDPreTrainedModel):
    """The CRoPD purifier `g`: an auto-encoder at native size.

    Maps `pixel_values` in [0, 1] to an image of the same shape in [0, 1] (the reconstruction) and a pooled
    latent. With `purifier_architecture="vit"` (the default) it is transformers' own `ViTMAEModel` without masking
    and a light `ViTMAEDecoder`, so a pre-trained MAE can initialize it; with `"conv"`, a small convolutional
    auto-encoder (`CRoPDConvAutoEncoder`).
    """

    # `AutoModel.from_pretrained` on a full CRoPD checkpoint gives the purifier: the head is expected to be left.
    _keys_to_ignore_on_load_unexpected = [r"^(classifier|feature_norm)\."]

    def __init__(self, config: CRoPDConfig):
        super().__init__(config)
        if config.purifier_architecture == "conv":
            self.autoencoder = CRoPDConvAutoEncoder(config)
            self.post_init()
            return
        vit_config = purifier_vit_mae_config(config)
        self.encoder = ViTMAEModel(vit_config)
        self.num_patches = self.encoder.embeddings.patch_embeddings.num_patches
        self.decoder = ViTMAEDecoder(vit_config, num_patches=self.num_patches)
        self.post_init()
        # Explicit, not in _init_weights: transformers dispatches the nested ViTMAEModel's init to its own
        # _init_weights (which leaves the table at zero), and skips parameter-less custom modules.
        initialize_vit_mae_embeddings(self)

    @can_return_tuple
    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None, **kwargs: Any
    ) -> CRoPDPurifierOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`):
            Images with pixels in [0, 1] at the native size.
        output_hidden_states (`bool`, *optional*, defaults to `config.output_hidden_states`):
            Also return the purifier encoder's hidden states.
        return_dict (`bool`, *optional*, defaults to `config.return_dict`):
            `False` returns a tuple of the output's fields that are not None, in order.
        """
        check_pixel_values(pixel_values, self.config.num_channels, self.config.image_size)
        return self.reconstruct(pixel_values, output_hidden_states, **kwargs)

    def reconstruct(
        self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None, **kwargs: Any
    ) -> CRoPDPurifierOutput:
        """`forward` without the input check, for a caller that checked `pixel_values` already (one host sync
        per call, not one per module)."""
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        # float64 / float16 / bfloat16 pixels: cast (differentiably) to the weights' dtype, not a crash in a conv.
        pixel_values = pixel_values.to(self.dtype)
        if self.config.purifier_architecture == "conv":
            image_logits, tokens, hidden_states = self.autoencoder(pixel_values)
            pooled = tokens.mean(dim=1)
        else:
            noise = _fixed_patch_order(pixel_values.shape[0], self.num_patches, pixel_values.device)
            encoded = self.encoder(
                pixel_values=pixel_values,
                noise=noise,
                output_hidden_states=output_hidden_states,
                **{**kwargs, "return_dict": True},
            )
            hidden_states = encoded.hidden_states
            decoded = self.decoder(encoded.last_hidden_state, encoded.ids_restore)
            # unpatchify only reads patch_size, num_channels and image_size from the config it is given.
            image_logits = ViTMAEForPreTraining.unpatchify(self.encoder, decoded.logits)
            tokens = encoded.last_hidden_state
            pooled = tokens[:, 0] if self.config.purifier_pooling == "cls" else tokens[:, 1:].mean(dim=1)
        if self.config.purifier_residual_bound is not None:
            # A bounded correction: no pixel moves by more than β, so g(x) stays a picture of x by construction.
            bound, gain = self.config.purifier_residual_bound, self.config.purifier_residual_gain
            reconstruction = (pixel_values + bound * torch.tanh(gain * image_logits)).clamp(0, 1)
        elif self.config.purifier_residual:
            # The decoder predicts a correction in logit space: g starts as the identity, and stays in (0, 1).
            reconstruction = torch.sigmoid(image_logits + torch.logit(pixel_values, eps=RESIDUAL_LOGIT_EPS))
        else:
            reconstruction = torch.sigmoid(image_logits)
        return CRoPDPurifierOutput(
            reconstruction=reconstruction,
            pooled_latent=pooled,
            last_hidden_state=tokens,
            hidden_states=hidden_states if output_hidden_states else None,
        )


class CRoPDForImageClassification(CRoPDPreTrainedModel):
    """The CRoPD robust classifier `h(f(g(x)))`.

    `g` is the purifier (`CRoPDModel`), `f` the frozen foundation model referenced by
    `config.foundation_model_name_or_path` (any `AutoModel` vision backbone; for ViT-MAE masking is off and the
    patch order fixed), `h` a linear head on `f`'s pooled features. Resizing to `f`'s input size and its mean/std
    normalization happen inside, differentiably, so attacks work on [0, 1] pixels end to end.

    `f` is never trained and never saved: its weights are loaded from the reference on construction and on
    `from_pretrained`, it stays in eval mode when the model is put in training mode, and a checkpoint holds only
    `g` and `h`.
    """

    # f's weights come from its own reference, not from a CRoPD checkpoint.
    _keys_to_ignore_on_load_missing = [r"^foundation\."]

    def __init__(self, config: CRoPDConfig):
        super().__init__(config)
        self.purifier = CRoPDModel(config) if config.use_purifier else None
        self.foundation = AutoModel.from_config(self._foundation_config())
        feature_size = _feature_size(self.foundation.config)
        if config.foundation_pooling == "grid":
            feature_size *= config.foundation_pooling_grid_size**2
        self.feature_norm = nn.BatchNorm1d(feature_size, affine=False) if config.head_batch_norm else nn.Identity()
        self.classifier = nn.Linear(feature_size, config.num_labels)
        self.post_init()
        # post_init copies every child's `_keys_to_ignore_on_load_unexpected` into this model: the purifier's
        # pattern for the head would hide a head in the checkpoint that does not fit this config. Nothing unexpected
        # is ignored here (from_pretrained refuses it).
        self._keys_to_ignore_on_load_unexpected = set()
        if get_torch_context_manager_or_global_device() != torch.device("meta"):
            self.load_foundation_weights()
        else:
            self._freeze_foundation()

    def _foundation_config(self) -> Any:
        foundation_config = AutoConfig.from_pretrained(self.foundation_location(), **self._foundation_reference())
        if hasattr(foundation_config, "mask_ratio"):
            foundation_config.mask_ratio = 0.0
        return foundation_config

    def foundation_location(self) -> str:
        """Where `f` is loaded from: `config.foundation_model_name_or_path`, where a path that starts with `./` or
        `../` is relative to the checkpoint: to its folder (so a checkpoint shipped next to its foundation model loads
        from any working directory), or, for a checkpoint loaded by Hub id, to its repository."""
        location, checkpoint = self.config.foundation_model_name_or_path, self.config.name_or_path
        if location.startswith(("./", "../")) and checkpoint and os.path.isdir(checkpoint):
            return os.path.normpath(os.path.join(checkpoint, location))
        return checkpoint if "subfolder" in self._foundation_reference() else location

    def _foundation_reference(self) -> dict[str, Any]:
        """What goes with `foundation_location()`: `f`'s revision; or, for a checkpoint loaded by Hub id with `f`
        inside it (`./foundation`, as train.py ships a local one), that subfolder at the checkpoint's own commit."""
        location, checkpoint = self.config.foundation_model_name_or_path, self.config.name_or_path
        subfolder = posixpath.normpath(location)
        if location.startswith("./") and checkpoint and not os.path.exists(checkpoint) and subfolder[:2] != "..":
            return {"subfolder": subfolder, "revision": getattr(self.config, "_commit_hash", None)}
        return {"revision": self.config.foundation_model_revision}

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """transformers' `from_pretrained`, strict: a checkpoint whose `g` / `h` weights do not match the config
        (a missing or an unexpected key) raises a `ValueError` instead of loading with freshly initialized or dropped
        weights. `f`'s weights are never in a checkpoint: they are loaded from `config.foundation_model_name_or_path`.

        The one checkpoint allowed to lack weights is a purifier checkpoint (`CRoPDModel.save_pretrained`), which
        has no head at all: the head is then newly initialized (transformers' load report says so), ready to train.
        """
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        _check_loaded_keys(model, loading_info, args[0] if args else kwargs.get("pretrained_model_name_or_path"))
        model.load_foundation_weights()
        return (model, loading_info) if output_loading_info else model

    def load_foundation_weights(self) -> None:
        """(Re)load `f` from `config.foundation_model_name_or_path` at `config.foundation_model_revision`."""
        reference = self.foundation.config
        self.foundation = AutoModel.from_pretrained(
            self.foundation_location(),
            **self._foundation_reference(),
            config=reference,
            dtype=self.classifier.weight.dtype,
        ).to(self.classifier.weight.device)
        self._freeze_foundation()

    def _freeze_foundation(self) -> None:
        self.foundation.requires_grad_(False)
        self.foundation.eval()
        # Every foundation tensor is left out of save_pretrained; the checkpoint holds g and h only.
        self._keys_to_ignore_on_save = set(self._keys_to_ignore_on_save or ()) | {
            f"foundation.{name}" for name in self.foundation.state_dict()
        }

    def train(self, mode: bool = True) -> "CRoPDForImageClassification":
        super().train(mode)
        self.foundation.eval()
        if getattr(self.foundation, "is_activation_checkpointing", False):
            # transformers checkpoints a layer only when that layer is in training mode. Only the layers' own flag
            # follows `mode`: their dropout submodules stay in eval mode, so f computes exactly what it does in eval.
            for module in self.foundation.modules():
                if isinstance(module, GradientCheckpointingLayer):
                    module.training = mode
        return self

    def purify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`g(x)`: the purified image, same shape, pixels in [0, 1]."""
        if self.purifier is None:
            raise ValueError(NO_PURIFIER)
        return self.purifier(pixel_values, return_dict=True).reconstruction

    def foundation_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled features of the frozen `f` for images in [0, 1] at native size (resized and normalized here)."""
        outputs = self.foundation_outputs(pixel_values)
        return pool_foundation_outputs(
            outputs, self.config.foundation_pooling, self.config.foundation_pooling_grid_size
        )

    def foundation_outputs(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> Any:
        """The frozen `f`'s own outputs for images in [0, 1] at native size (resized and normalized here)."""
        config = self.config
        images = pixel_values
        if images.shape[1] != config.foundation_num_channels:
            images = images.expand(-1, config.foundation_num_channels, -1, -1)
        if images.shape[-1] != config.foundation_image_size or images.shape[-2] != config.foundation_image_size:
            size = (config.foundation_image_size, config.foundation_image_size)
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        mean = images.new_tensor(config.foundation_image_mean).view(1, -1, 1, 1)
        std = images.new_tensor(config.foundation_image_std).view(1, -1, 1, 1)
        images = (images - mean) / std

        if isinstance(self.foundation, ViTMAEModel):
            num_patches = self.foundation.embeddings.patch_embeddings.num_patches
            return self.foundation(
                pixel_values=images,
                noise=_fixed_patch_order(len(images), num_patches, images.device),
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )
        return self.foundation(pixel_values=images, output_hidden_states=output_hidden_states, return_dict=True)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """`h`: logits from the foundation model's pooled features."""
        return self.classifier(self.feature_norm(features))

    def contrastive_features(
        self, pixel_values: torch.Tensor, purifier_output: CRoPDPurifierOutput | None = None
    ) -> torch.Tensor:
        """`z` of the adversarial contrastive loss, as `config.contrastive_features` says.

        `purifier_output`, when the caller already ran `g` on `pixel_values`, saves running it again.
        """
        if self.purifier is None:
            raise ValueError("The Identity baseline (use_purifier=False) has no purifier to train.")
        purified = purifier_output if purifier_output is not None else self.purifier(pixel_values, return_dict=True)
        if self.config.contrastive_features == "purifier":
            return purified.pooled_latent
        return self.foundation_features(purified.reconstruction)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        purify: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Any,
    ) -> CRoPDImageClassifierOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`):
            Images with pixels in [0, 1] at the native size.
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices in `[0, num_labels)`; when given, `loss` is the cross-entropy.
        purify (`bool`, *optional*):
            Run the purifier; defaults to `config.use_purifier`. `False` gives `h(f(x))`, e.g. to attack the chain
            without the defence.
        output_hidden_states (`bool`, *optional*, defaults to `config.output_hidden_states`):
            Also return the foundation model's hidden states.
        return_dict (`bool`, *optional*, defaults to `config.return_dict`):
            `False` returns a tuple of the output's fields that are not None, in order (`(loss, logits, ...)` with
            labels, `(logits, ...)` without), as transformers models do.
        """
        config = self.config
        check_pixel_values(pixel_values, config.num_channels, config.image_size, labels, config.num_labels)
        if output_hidden_states is None:
            output_hidden_states = config.output_hidden_states
        # float64 / float16 / bfloat16 pixels: cast (differentiably) to the weights' dtype, not a crash in a conv.
        pixel_values = pixel_values.to(self.dtype)
        purify = config.use_purifier if purify is None else purify
        if purify and self.purifier is None:
            raise ValueError(NO_PURIFIER)
        # The pixels were checked above: the purifier does not check them again (one host sync per call).
        purified = self.purifier.reconstruct(pixel_values).reconstruction if purify else None
        outputs = self.foundation_outputs(purified if purify else pixel_values, output_hidden_states)
        features = pool_foundation_outputs(outputs, config.foundation_pooling, config.foundation_pooling_grid_size)
        logits = self.classify(features)
        loss = None if labels is None else F.cross_entropy(logits, labels.long())
        return CRoPDImageClassifierOutput(
            loss=loss,
            logits=logits,
            features=features,
            purified_pixel_values=purified,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
        )


_HEAD_PREFIXES = ("classifier.", "feature_norm.")


def _check_loaded_keys(model: "CRoPDForImageClassification", loading_info: dict[str, Any], source: Any) -> None:
    missing, unexpected = set(loading_info["missing_keys"]), set(loading_info["unexpected_keys"])
    head = {name for name in model.state_dict() if name.startswith(_HEAD_PREFIXES)}
    purifier_checkpoint = "CRoPDModel" in (model.config.architectures or []) and not unexpected
    if purifier_checkpoint and missing == head:
        return
    if not missing and not unexpected:
        return

    def listed(keys: set[str]) -> str:
        return ", ".join(sorted(keys)[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")

    problems = []
    if missing:
        problems.append(f"missing from the checkpoint (they would be randomly initialized): {listed(missing)}")
    if unexpected:
        problems.append(f"in the checkpoint but not in the model (they would be dropped): {listed(unexpected)}")
    raise ValueError(
        f"The checkpoint {str(source)!r} does not match its config: weights {'; weights '.join(problems)}. "
        "The architecture fields of config.json (head_batch_norm, use_purifier, purifier_architecture, "
        "conv_channels, foundation_pooling, ...) must be those the weights were saved with; accepted: a checkpoint "
        "whose purifier and head weights are exactly those of its config (or a purifier-only checkpoint saved by "
        "CRoPDModel, whose head is then newly initialized)."
    )


def _feature_size(foundation_config: Any) -> int:
    if getattr(foundation_config, "hidden_size", None):
        return foundation_config.hidden_size
    if getattr(foundation_config, "hidden_sizes", None):
        return foundation_config.hidden_sizes[-1]
    raise ValueError(
        f"Cannot tell the feature size of the foundation model ({type(foundation_config).__name__}): its config has "
        "neither `hidden_size` nor `hidden_sizes`."
    )


def pool_foundation_outputs(outputs: Any, pooling: str, grid_size: int = 2) -> torch.Tensor:
    """Pool a foundation model's outputs into one feature vector per image, as `CRoPDConfig.foundation_pooling` and
    `foundation_pooling_grid_size` describe (ViT outputs: a CLS token then the patch tokens in image order)."""
    if pooling == "pooler":
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is None:
            raise ValueError(
                "foundation_pooling='pooler' but the foundation model returns no pooler_output; use 'cls', 'mean' "
                "or 'grid'."
            )
        return pooled.flatten(1)
    hidden = outputs.last_hidden_state
    if hidden.ndim == 4:  # convolutional backbones: (batch, channels, height, width)
        if pooling == "cls":
            raise ValueError("foundation_pooling='cls' needs a token sequence; this foundation model is convolutional.")
        feature_map = hidden
    elif pooling == "cls":
        return hidden[:, 0]
    else:
        patches = hidden[:, 1:]
        if pooling == "mean":
            return patches.mean(dim=1)
        side = math.isqrt(patches.shape[1])
        if side * side != patches.shape[1]:
            raise ValueError(
                f"foundation_pooling='grid' needs a square grid of patch tokens after the CLS token; this foundation "
                f"model returns {patches.shape[1]} patch tokens. Use 'cls', 'mean' or 'pooler'."
            )
        # Patch tokens come in row-major image order (ViT-MAE's patch order is fixed by `_fixed_patch_order`).
        feature_map = patches.transpose(1, 2).reshape(len(patches), -1, side, side)
    if pooling == "mean":
        return feature_map.mean(dim=(2, 3))
    if min(feature_map.shape[-2:]) < grid_size:
        raise ValueError(
            f"foundation_pooling_grid_size={grid_size} is larger than the foundation model's "
            f"{tuple(feature_map.shape[-2:])} grid of features; use at most {min(feature_map.shape[-2:])}."
        )
    return F.adaptive_avg_pool2d(feature_map, grid_size).flatten(1)


__all__ = [
    "CRoPDForImageClassification",
    "CRoPDImageClassifierOutput",
    "CRoPDConvAutoEncoder",
    "CRoPDModel",
    "CRoPDPreTrainedModel",
    "CRoPDPurifierOutput",
    "initialize_vit_mae_embeddings",
]
