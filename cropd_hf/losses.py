"""Losses of CRoPD: reconstruction, the supervised adversarial contrastive loss, and both training stages."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.utils import ModelOutput

from .attacks import FGSM, PGD
from .modeling_cropd import CRoPDForImageClassification

__all__ = [
    "CRoPDTrainingObjective",
    "TrainingLossOutput",
    "adversarial_contrastive_loss",
    "contrastive_adversarial_examples",
    "reconstruction_loss",
    "supervised_contrastive_loss",
]

_REDUCTIONS = ("mean", "none")


def reconstruction_loss(reconstruction: Tensor, pixel_values: Tensor) -> Tensor:
    """Mean squared error between the purified images and the inputs (a scalar)."""
    if reconstruction.shape != pixel_values.shape:
        raise ValueError(
            f"reconstruction and pixel_values must have the same shape, got "
            f"{tuple(reconstruction.shape)} and {tuple(pixel_values.shape)}"
        )
    return F.mse_loss(reconstruction, pixel_values)


def supervised_contrastive_loss(
    features: Tensor, labels: Tensor, temperature: float = 0.1, reduction: str = "mean"
) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out) of ``features`` of shape (N, V, D) or (N, D).

    Every view of every sample is an anchor; its positives are all other views of samples with the
    same label. An anchor without positives contributes 0 and is left out of the averages.
    ``reduction="mean"`` averages over anchors; ``"none"`` returns one loss per sample, shape (N,).
    """
    _check_temperature_and_reduction(temperature, reduction)
    if features.dim() not in (2, 3):
        raise ValueError(
            f"features must have shape (N, D) or (N, V, D) (rank 2 or 3), got shape {tuple(features.shape)}"
        )
    if features.dim() == 2:
        features = features.unsqueeze(1)
    num_samples, num_views = features.shape[:2]
    if num_samples < 1 or num_views < 1:
        raise ValueError(f"features must hold at least one sample and one view, got {tuple(features.shape)}")
    if labels.shape != (num_samples,):
        raise ValueError(f"labels must have shape (N,) = ({num_samples},), got {tuple(labels.shape)}")

    # Row n * V + v is view v of sample n.
    anchors = F.normalize(features.reshape(num_samples * num_views, -1), dim=-1)
    anchor_labels = labels.repeat_interleave(num_views)
    is_self = torch.eye(len(anchors), dtype=torch.bool, device=anchors.device)
    positives = (anchor_labels[:, None] == anchor_labels[None, :]) & ~is_self

    logits = (anchors @ anchors.T / temperature).masked_fill(is_self, -math.inf)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    # where, not multiply: log_prob is -inf on the diagonal and -inf * 0 is nan.
    positive_log_prob = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    num_positives = positives.sum(dim=1)
    has_positive = num_positives > 0
    anchor_loss = -positive_log_prob / num_positives.clamp(min=1)

    if reduction == "mean":
        return anchor_loss.sum() / has_positive.sum().clamp(min=1)
    sample_loss = anchor_loss.view(num_samples, num_views).sum(dim=1)
    return sample_loss / has_positive.view(num_samples, num_views).sum(dim=1).clamp(min=1)


def adversarial_contrastive_loss(
    clean_features: Tensor,
    adversarial_features: Tensor,
    labels: Tensor,
    temperature: float = 0.1,
    reduction: str = "mean",
    standardize: bool = False,
) -> Tensor:
    """L_con of CRoPD: the clean and adversarial (N, D) features of each image are two views.

    Both views of an image, and all images of the same class, are positives; other classes are negatives.
    With `standardize`, both are first standardized per dimension with the clean features' batch mean and
    standard deviation (taken as constants, so the adversary cannot move them).
    """
    if clean_features.dim() != 2 or clean_features.shape != adversarial_features.shape:
        raise ValueError(
            f"clean_features and adversarial_features must both have the same shape (N, D), got "
            f"{tuple(clean_features.shape)} and {tuple(adversarial_features.shape)}"
        )
    if standardize:
        if len(clean_features) < 2:
            raise ValueError("standardize=True needs a batch of at least 2 samples to estimate the statistics")
        statistics = clean_features.detach()
        mean, std = statistics.mean(dim=0), statistics.std(dim=0).clamp_min(1e-6)
        clean_features, adversarial_features = (clean_features - mean) / std, (adversarial_features - mean) / std
    features = torch.stack([clean_features, adversarial_features], dim=1)
    return supervised_contrastive_loss(features, labels, temperature=temperature, reduction=reduction)


def _check_temperature_and_reduction(temperature: float, reduction: str) -> None:
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def contrastive_adversarial_examples(
    model: CRoPDForImageClassification, pixel_values: Tensor, labels: Tensor
) -> Tensor:
    """x_adv of stage 1: the input in the ε-ball that maximizes L_con(z(x), z(x_adv)), found by FGSM with random
    start (fast-AT) or, with `train_attack_steps` > 1, by PGD with random start.

    ε, the steps, the step size and τ come from `model.config` (`train_epsilon`, `train_attack_steps`,
    `effective_train_step_size`, `contrastive_temperature`); z is `model.contrastive_features`.
    """
    config = model.config
    with torch.no_grad():
        clean_features = model.contrastive_features(pixel_values)

    def contrastive_loss(adversarial_features: Tensor, targets: Tensor) -> Tensor:
        return adversarial_contrastive_loss(
            clean_features,
            adversarial_features,
            targets,
            config.contrastive_temperature,
            reduction="none",
            standardize=config.standardize_contrastive_features,
        )

    step = config.effective_train_step_size
    if config.train_attack_steps == 1:
        attack = FGSM(eps=config.train_epsilon, alpha=step, random_start=True, loss_fn=contrastive_loss)
    else:
        attack = PGD(eps=config.train_epsilon, alpha=step, steps=config.train_attack_steps, loss_fn=contrastive_loss)
    return attack(model.contrastive_features, pixel_values, labels)


@dataclass
class TrainingLossOutput(ModelOutput):
    """loss: what the stage minimizes; its parts are reported alongside for logging."""

    loss: Tensor | None = None
    reconstruction_loss: Tensor | None = None
    adversarial_reconstruction_loss: Tensor | None = None
    contrastive_loss: Tensor | None = None


class CRoPDTrainingObjective(nn.Module):
    """Both training stages' losses behind one `forward`, so DDP sees (and synchronizes) whichever stage runs.

    - `stage="purifier"`: w·||g(x) - x||² + w_adv·||g(x_adv) - x||² + λ·L_con(z(x), z(x_adv)) (the weights are
      `reconstruction_weight`, `adversarial_reconstruction_weight` and `contrastive_weight` of the config;
      reconstruction only when no x_adv is given);
    - `stage="head"`: cross-entropy of h on the features of f(g(·)) of x_adv when given (robust head), else of x.
    """

    def __init__(self, model: CRoPDForImageClassification) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        pixel_values: Tensor,
        labels: Tensor,
        adversarial_pixel_values: Tensor | None = None,
        stage: str = "purifier",
    ) -> TrainingLossOutput:
        if stage == "head":
            inputs = pixel_values if adversarial_pixel_values is None else adversarial_pixel_values
            # g and f are fixed in stage 2: only h learns, and nothing back-propagates through g or f.
            with torch.no_grad():
                features = self.model(inputs).features
            return TrainingLossOutput(loss=F.cross_entropy(self.model.classify(features), labels.long()))
        if stage != "purifier":
            raise ValueError(f"stage={stage!r} is invalid; accepted: 'purifier' or 'head'.")
        config = self.model.config
        purified = self.model.purifier(pixel_values)
        reconstruction = reconstruction_loss(purified.reconstruction, pixel_values)
        if adversarial_pixel_values is None:
            return TrainingLossOutput(loss=reconstruction, reconstruction_loss=reconstruction.detach())
        purified_adversarial = self.model.purifier(adversarial_pixel_values)
        # Both views are pulled towards the clean image: g(x_adv) ≈ x is what makes g a purifier of attacks.
        adversarial_reconstruction = reconstruction_loss(purified_adversarial.reconstruction, pixel_values)
        contrastive = adversarial_contrastive_loss(
            self.model.contrastive_features(pixel_values, purifier_output=purified),
            self.model.contrastive_features(adversarial_pixel_values, purifier_output=purified_adversarial),
            labels,
            temperature=config.contrastive_temperature,
            standardize=config.standardize_contrastive_features,
        )
        loss = config.reconstruction_weight * reconstruction + config.contrastive_weight * contrastive
        if config.adversarial_reconstruction_weight:
            loss = loss + config.adversarial_reconstruction_weight * adversarial_reconstruction
        return TrainingLossOutput(
            loss=loss,
            reconstruction_loss=reconstruction.detach(),
            adversarial_reconstruction_loss=adversarial_reconstruction.detach(),
            contrastive_loss=contrastive.detach(),
        )
