"""White-box L∞ attacks (FGSM, PGD with restarts) in [0, 1] pixel space.

An attack is called as ``attack(model, images, labels)``; ``model`` is any callable returning logits or an
object with ``.logits`` (a transformers ``ModelOutput``). The attack maximizes a per-sample loss,
cross-entropy by default.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Attack", "FGSM", "PGD", "LossFn"]

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(outputs, labels)`` returning per-sample losses of shape (B,)."""

# Per sample: the adversarial images with the highest loss so far, and that loss.
_Best = tuple[Tensor, Tensor]

_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

# Inputs a hair outside [0, 1] come from float round-off in upstream preprocessing, not from a bug.
_RANGE_TOLERANCE = 1e-6


class Attack:
    """Base of the L∞ attacks: argument and input checks, eval mode, gradients w.r.t. the input only.

    Subclasses implement ``_perturb(model, images, labels)``, which runs with gradients enabled and the
    model in eval mode, and build it from ``_loss``, ``_loss_and_grad``, ``_random_start`` and ``_project``.
    """

    def __init__(
        self,
        eps: float,
        alpha: float,
        steps: int,
        restarts: int,
        random_start: bool,
        loss_fn: LossFn | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        eps, alpha = float(eps), float(alpha)
        if not 0 <= eps <= 1:
            raise ValueError(f"eps must be in [0, 1] (L∞ radius in [0, 1] pixel units), got {eps!r}")
        # alpha = 0 only makes sense for the identity attack eps = 0 (e.g. FGSM(eps=0) as a clean baseline).
        if not (math.isfinite(alpha) and (alpha > 0 or alpha == eps == 0)):
            raise ValueError(f"alpha must be a finite step size > 0, got {alpha!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
            raise ValueError(f"restarts must be an integer >= 1, got {restarts!r}")
        self.eps = eps
        self.alpha = alpha
        self.steps = steps
        self.restarts = restarts
        self.random_start = bool(random_start)
        self.loss_fn = loss_fn
        self.generator = generator

    def settings(self) -> dict[str, Any]:
        """The settings a robustness number must be reported with."""
        return {
            "name": type(self).__name__,
            "eps": self.eps,
            "alpha": self.alpha,
            "steps": self.steps,
            "restarts": self.restarts,
            "random_start": self.random_start,
        }

    def __repr__(self) -> str:
        settings = self.settings()
        name = settings.pop("name")
        return f"{name}({', '.join(f'{key}={value!r}' for key, value in settings.items())})"

    def __call__(self, model: Callable[[Tensor], Any], images: Tensor, labels: Tensor) -> Tensor:
        """Adversarial examples for ``images`` (B, C, H, W) in [0, 1], detached, same shape/dtype/device."""
        self._check_inputs(images, labels)
        images, labels = images.detach(), labels.detach()
        with _eval_mode(model), torch.enable_grad():
            adversarial = self._perturb(model, images, labels)
        return adversarial.detach()

    def _perturb(self, model: Callable[[Tensor], Any], images: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def _loss(self, model: Callable[[Tensor], Any], images: Tensor, labels: Tensor) -> Tensor:
        outputs = _as_tensor(model(images))
        if self.loss_fn is None:
            if outputs.dim() != 2 or outputs.shape[0] != len(images):
                raise ValueError(
                    f"the default cross-entropy loss needs logits of shape (B, num_classes) = "
                    f"({len(images)}, num_classes), got {tuple(outputs.shape)}"
                )
            if labels.min() < 0 or labels.max() >= outputs.shape[1]:
                raise ValueError(
                    f"labels must be class indices in [0, {outputs.shape[1]}) for the model's "
                    f"{outputs.shape[1]} logits, got values in [{labels.min().item()}, {labels.max().item()}]"
                )
            loss = F.cross_entropy(outputs, labels.long(), reduction="none")
        else:
            loss = self.loss_fn(outputs, labels)
        if not isinstance(loss, Tensor) or loss.shape != (len(images),):
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"loss_fn must return per-sample losses of shape ({len(images)},), got {shape}")
        return loss

    def _loss_and_grad(
        self, model: Callable[[Tensor], Any], adversarial: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        # A leaf input: autograd.grad then touches neither the model's .grad nor the caller's graph.
        adversarial = adversarial.detach().requires_grad_(True)
        loss = self._loss(model, adversarial, labels)
        grad = None
        if loss.requires_grad:
            (grad,) = torch.autograd.grad(loss.sum(), adversarial, allow_unused=True)
        if grad is None:
            # A silently zero gradient would make any defence look robust; refuse instead.
            raise RuntimeError(
                "the attack loss does not depend differentiably on the images (is the model detaching its "
                "input or running under torch.no_grad()?); a white-box attack needs input gradients"
            )
        return loss.detach(), grad

    def _random_start(self, images: Tensor) -> Tensor:
        noise = torch.rand(images.shape, generator=self.generator, device=images.device, dtype=images.dtype)
        return self._project(images + (2 * noise - 1) * self.eps, images)

    def _project(self, adversarial: Tensor, images: Tensor) -> Tensor:
        """Onto the ε-ball around ``images`` and into [0, 1]."""
        return torch.clamp(torch.clamp(adversarial, images - self.eps, images + self.eps), 0, 1)

    def _check_inputs(self, images: Tensor, labels: Tensor) -> None:
        if not isinstance(images, Tensor) or not images.is_floating_point() or images.dim() != 4:
            description = (
                f"{images.dtype} tensor of shape {tuple(images.shape)}"
                if isinstance(images, Tensor)
                else type(images).__name__
            )
            raise ValueError(f"images must be a floating tensor of shape (B, C, H, W), got {description}")
        if images.shape[0] < 1:
            raise ValueError("images must hold at least one image, got an empty batch")
        if not torch.isfinite(images).all():
            raise ValueError("images must be finite, got NaN or inf values")
        low, high = images.min().item(), images.max().item()
        if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
            raise ValueError(
                f"images must have pixel values in [0, 1] (unnormalized; the model normalizes), "
                f"got values in [{low:.4g}, {high:.4g}]"
            )
        if not isinstance(labels, Tensor) or labels.shape != (len(images),):
            shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"labels must have shape (B,) = ({len(images)},), got {shape}")
        if labels.device != images.device:
            raise ValueError(f"labels must be on the images' device {images.device}, got {labels.device}")
        if self.loss_fn is None and labels.dtype not in _INTEGER_DTYPES:
            raise ValueError(
                f"labels must be integer class indices for the default cross-entropy loss, got {labels.dtype}"
            )


class FGSM(Attack):
    """Fast gradient sign method: one step ``x + alpha·sign(∇loss)``, projected.

    Without random start ``alpha`` defaults to ``eps`` (classic FGSM). With random start
    (fast adversarial training, Wong et al. 2020) the step starts from ``x + U(-eps, eps)`` and ``alpha``
    defaults to ``1.25·eps``.
    """

    def __init__(
        self,
        eps: float,
        alpha: float | None = None,
        random_start: bool = False,
        loss_fn: LossFn | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        if alpha is None:
            alpha = 1.25 * eps if random_start else eps
        super().__init__(eps, alpha, 1, 1, random_start, loss_fn, generator=generator)

    def _perturb(self, model: Callable[[Tensor], Any], images: Tensor, labels: Tensor) -> Tensor:
        start = self._random_start(images) if self.random_start else images
        _, grad = self._loss_and_grad(model, start, labels)
        return self._project(start + self.alpha * grad.sign(), images)


class PGD(Attack):
    """Projected gradient descent (Madry et al. 2018) on the L∞ ball, with restarts.

    Per sample, returns the iterate with the highest loss over all steps and restarts, so neither an
    overshooting last step nor an extra restart can lower the loss found.
    """

    def __init__(
        self,
        eps: float,
        alpha: float,
        steps: int = 10,
        random_start: bool = True,
        restarts: int = 1,
        loss_fn: LossFn | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(eps, alpha, steps, restarts, random_start, loss_fn, generator=generator)

    def _perturb(self, model: Callable[[Tensor], Any], images: Tensor, labels: Tensor) -> Tensor:
        best = None
        for _ in range(self.restarts):
            adversarial = self._random_start(images) if self.random_start else images
            for _ in range(self.steps):
                loss, grad = self._loss_and_grad(model, adversarial, labels)
                best = _keep_best(best, adversarial, loss)
                adversarial = self._project(adversarial + self.alpha * grad.sign(), images)
            with torch.no_grad():
                best = _keep_best(best, adversarial, self._loss(model, adversarial, labels))
        return best[0]


def _keep_best(best: _Best | None, adversarial: Tensor, loss: Tensor) -> _Best:
    """Per sample, the (adversarial, loss) pair with the higher loss; ties keep the earlier one."""
    if best is None:
        return adversarial, loss
    best_adversarial, best_loss = best
    better = loss > best_loss
    mask = better.view(-1, *[1] * (adversarial.dim() - 1))
    return torch.where(mask, adversarial, best_adversarial), torch.where(better, loss, best_loss)


def _as_tensor(outputs: Any) -> Tensor:
    if isinstance(outputs, Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise TypeError(f"model must return a Tensor or an object with .logits, got {type(outputs).__name__}")


@contextmanager
def _eval_mode(model: Callable[[Tensor], Any]) -> Iterator[None]:
    """Eval mode for an ``nn.Module`` during the attack; every submodule's own flag is restored after."""
    if not isinstance(model, nn.Module):
        yield
        return
    # Per-submodule flags, not model.train(flag): a frozen part kept in eval inside a training model
    # must stay in eval.
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training
