"""Purifier fidelity: how close the purified image ``g(x)`` is to the clean image ``x``, clean and under attack.

Errors are mean squared errors per pixel (pixels in [0, 1], averaged over channels and positions), per sample; a
summary averages them over samples and turns the mean into a PSNR, ``10·log10(1 / MSE)`` dB (``psnr_from_mse``).

Under attack the evaluator measures, per sample and ε, the sample's worst-case adversarial image ``x_adv`` of the
suite (``WorstCaseImages``): the adversarial example of the *last* attack of the suite that made the prediction
wrong or, if no attack did, the one of the last attack run on the sample (the strongest that ran, the suite being
ordered from weak to strong). For it, ``‖g(x_adv) − x‖²`` (how far the purified attacked image is from the clean
one) and ``‖x_adv − x‖²`` (the perturbation): ``g`` pulls an attacked image back toward the clean one when the first
is below the second. A sample misclassified clean is attacked by nothing and has no ``x_adv``: its per-ε numbers
are ``None`` and the per-ε means are over the attacked samples only (``num_samples`` of each ε says how many).
No attack is added: one forward pass of ``g`` on the clean batch and one per ε on images already computed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..attacks import _eval_mode

__all__ = ["PSNR_CAP_DB", "WorstCaseImages", "has_purifier", "per_sample_mse", "psnr_from_mse", "purifier_fidelity"]

# An MSE of 0 (g returns its input exactly) has an infinite PSNR, which JSON cannot hold: PSNRs are capped at
# 100 dB, an MSE of 1e-10, far above anything a lossy auto-encoder reaches (30-40 dB is a very good one).
PSNR_CAP_DB = 100.0
CLEAN_KEY = "fidelity/clean"


def psnr_from_mse(mse: float) -> float:
    """``10·log10(1 / mse)`` in dB for pixels in [0, 1], at most ``PSNR_CAP_DB`` (100 dB; so 100 for an MSE of 0)."""
    mse = float(mse)
    if math.isnan(mse) or mse < 0:
        raise ValueError(f"an MSE is a number >= 0, got {mse}")
    if mse <= 10 ** (-PSNR_CAP_DB / 10):
        return PSNR_CAP_DB
    return -10 * math.log10(mse)


def per_sample_mse(images: Tensor, reference: Tensor) -> Tensor:
    """Mean squared error per pixel of each image against its reference, in float64: shape ``(batch,)``."""
    return (images.detach().double() - reference.detach().double()).pow(2).flatten(1).mean(dim=1)


def has_purifier(model: Any) -> bool:
    """Whether ``model`` has a purifier ``g`` to measure: a CRoPD model built with ``use_purifier=True``."""
    return getattr(model, "purifier", None) is not None and callable(getattr(model, "purify", None))


def purifier_fidelity(model: Any, pixel_values: Any, batch_size: int = 256) -> dict[str, float]:
    """Mean per-pixel MSE of ``g(x)`` against ``x`` over the images, and its PSNR in dB (``psnr_from_mse``).

    ``pixel_values``: a tensor of images in [0, 1] (``(N, C, H, W)``), a ``datasets.Dataset`` whose rows hold
    ``pixel_values`` (as ``cropd_hf.data.with_pixel_values`` makes), or an iterable of batches (tensors or mappings
    with ``pixel_values``, e.g. a DataLoader). Runs without gradients, ``batch_size`` images at a time, in eval mode
    (each submodule's mode restored after). Returns ``{"mse", "psnr_db", "num_samples"}``; under several processes
    each measures its own images, and ``num_samples`` weighs the means when combining them.
    """
    if not has_purifier(model):
        raise ValueError("the model has no purifier (the Identity baseline, use_purifier=False): nothing to measure")
    device = next(iter(model.parameters()), torch.empty(0)).device
    errors: list[float] = []
    with torch.no_grad(), _eval_mode(model):
        for batch in _batches(pixel_values, batch_size):
            batch = batch.to(device)
            errors += per_sample_mse(model.purify(batch), batch).tolist()
    if not errors:
        raise ValueError("no images to measure the purifier on")
    mse = math.fsum(errors) / len(errors)
    return {"mse": mse, "psnr_db": psnr_from_mse(mse), "num_samples": len(errors)}


def _batches(pixel_values: Any, batch_size: int) -> Iterable[Tensor]:
    if isinstance(pixel_values, Tensor):
        yield from pixel_values.split(batch_size)
        return
    import datasets

    if isinstance(pixel_values, datasets.Dataset):
        for start in range(0, len(pixel_values), batch_size):
            yield torch.as_tensor(pixel_values[start : start + batch_size]["pixel_values"])
        return
    for batch in pixel_values:
        yield torch.as_tensor(batch["pixel_values"] if isinstance(batch, Mapping) else batch)


class WorstCaseImages:
    """Per sample of a batch, its worst-case adversarial image over one chain of attacks (see the module's text).

    ``update`` after each attack, in the suite's order; ``attacked`` marks the samples some attack ran on.
    """

    def __init__(self, images: Tensor) -> None:
        self.images = images.detach().clone()
        self.fooled = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        self.attacked = torch.zeros_like(self.fooled)

    def update(self, indices: Tensor, adversarial: Tensor, wrong: Tensor) -> None:
        """``adversarial[i]`` was made for sample ``indices[i]``; ``wrong[i]``: it broke the prediction."""
        take = wrong | ~self.fooled[indices]
        self.images[indices[take]] = adversarial[take].detach().to(self.images.dtype)
        self.fooled[indices] |= wrong
        self.attacked[indices] = True

    def fidelity(self, purify: Any, clean: Tensor) -> tuple[list[float | None], list[float | None]]:
        """Per sample ``‖g(x_adv) − x‖²`` and ``‖x_adv − x‖²`` (mean per pixel); ``None`` where nothing attacked."""
        purified: list[float | None] = [None] * len(clean)
        perturbation: list[float | None] = [None] * len(clean)
        indices = self.attacked.nonzero().squeeze(1)
        if len(indices):
            adversarial = self.images[indices]
            with torch.no_grad():
                purified_errors = per_sample_mse(purify(adversarial), clean[indices]).tolist()
            perturbation_errors = per_sample_mse(adversarial, clean[indices]).tolist()
            for position, index in enumerate(indices.tolist()):
                purified[index] = purified_errors[position]
                perturbation[index] = perturbation_errors[position]
        return purified, perturbation


def fidelity_keys(epsilon_key: str) -> tuple[str, str]:
    """The record keys of one ε: purified adversarial error and perturbation, per sample."""
    return f"fidelity/{epsilon_key}/purified", f"fidelity/{epsilon_key}/perturbation"


def summarize_fidelity(
    records: Mapping[str, Sequence[Any]], epsilons: Sequence[float], epsilon_keys: Sequence[str]
) -> dict[str, Any] | None:
    """The ``ModelResult.fidelity`` summary of the per-sample records, or None when they hold none (no purifier).

    ``{"clean_mse", "clean_psnr_db", "num_samples", "epsilons": [{"epsilon", "num_samples", "purified_mse",
    "purified_psnr_db", "perturbation_mse", "perturbation_psnr_db"}, ...]}``: means over samples (per ε over the
    attacked ones; None when there is none), each PSNR that of the mean MSE against the clean image.
    """
    if CLEAN_KEY not in records:
        return None
    clean = _mean(records[CLEAN_KEY])
    per_epsilon = []
    for epsilon, key in zip(epsilons, epsilon_keys, strict=True):
        purified_key, perturbation_key = fidelity_keys(key)
        purified = [value for value in records[purified_key] if value is not None]
        perturbation = [value for value in records[perturbation_key] if value is not None]
        purified_mse, perturbation_mse = _mean(purified), _mean(perturbation)
        per_epsilon.append(
            {
                "epsilon": epsilon,
                "num_samples": len(purified),
                "purified_mse": purified_mse,
                "purified_psnr_db": None if purified_mse is None else psnr_from_mse(purified_mse),
                "perturbation_mse": perturbation_mse,
                "perturbation_psnr_db": None if perturbation_mse is None else psnr_from_mse(perturbation_mse),
            }
        )
    return {
        "clean_mse": clean,
        "clean_psnr_db": None if clean is None else psnr_from_mse(clean),
        "num_samples": len(records[CLEAN_KEY]),
        "epsilons": per_epsilon,
    }


def _mean(values: Sequence[float]) -> float | None:
    # fsum: exactly rounded, so the mean does not depend on the order the batches came in.
    return math.fsum(values) / len(values) if values else None
