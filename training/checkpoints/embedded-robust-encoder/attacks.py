"""White-box L∞ attacks (FGSM, PGD with restarts, APGD) in [0, 1] pixel space.

An attack is called as ``attack(model, images, labels)``; ``model`` is any callable returning logits or an
object with ``.logits`` (a transformers ``ModelOutput``). The attack maximizes a per-sample loss,
cross-entropy by default; APGD (Croce & Hein 2020) also offers the DLR loss and its targeted version.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import PIXEL_RANGE_TOLERANCE, is_integer

__all__ = ["APGD", "Attack", "FGSM", "PGD", "LossFn", "dlr_loss", "targeted_dlr_loss"]

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(outputs, labels)`` returning per-sample losses of shape (B,)."""

# Per sample: the adversarial images with the highest loss so far, and that loss.
_Best = tuple[Tensor, Tensor]

_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


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
        eps = _check_eps(eps)
        # alpha = 0 only makes sense for the identity attack eps = 0 (e.g. FGSM(eps=0) as a clean baseline).
        alpha = _check_real("alpha", alpha, "a finite step size > 0", lambda value: value > 0 or value == eps == 0)
        self.eps = eps
        self.alpha = alpha
        self.steps = _check_count("steps", steps)
        self.restarts = _check_count("restarts", restarts)
        self.random_start = _check_flag("random_start", random_start)
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(
                f"loss_fn must be None (cross-entropy) or a callable loss_fn(outputs, labels) returning per-sample "
                f"losses, got {loss_fn!r} of type {type(loss_fn).__name__}"
            )
        self.loss_fn = loss_fn
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be None (the global RNG) or a torch.Generator, got {generator!r} of type "
                f"{type(generator).__name__}"
            )
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
        return loss.detach(), _input_gradient(loss, adversarial)

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
        if low < -PIXEL_RANGE_TOLERANCE or high > 1 + PIXEL_RANGE_TOLERANCE:
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
            eps, random_start = _check_eps(eps), _check_flag("random_start", random_start)
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


class APGD(Attack):
    """Auto-PGD (Croce & Hein 2020, AutoAttack's core): PGD with momentum and a self-tuning step, on the L∞ ball.

    The step starts at ``2·eps`` and is halved at checkpoints (after 22 % of the steps, then at ever shorter
    intervals of at least 6 %) when fewer than a ``rho`` share of the steps since the previous checkpoint raised the
    loss, or when neither the step nor the best loss changed since then; the iterate then restarts from the best
    point found. ``loss="ce"`` gives APGD-CE, ``loss="dlr"`` the shift- and scale-invariant Difference of Logits
    Ratio, and ``targeted=True`` APGD-T: the targeted DLR loss, one run per target among the ``n_target_classes``
    wrong classes with the highest clean logits. One run costs ``steps`` gradient evaluations, as ``PGD`` does.

    Per sample the attack returns, as AutoAttack does, a misclassified iterate whenever it found one (the one with
    the highest loss), else the iterate with the highest loss. Restarts and later targets run only on the samples
    that are not misclassified yet.
    """

    def __init__(
        self,
        eps: float,
        steps: int = 100,
        loss: str = "ce",
        targeted: bool = False,
        n_target_classes: int = 9,
        restarts: int = 1,
        rho: float = 0.75,
        momentum: float = 0.75,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(loss, str):
            raise TypeError(f"loss must be 'ce' or 'dlr', got {loss!r} of type {type(loss).__name__}")
        if loss not in ("ce", "dlr"):
            raise ValueError(f"loss must be 'ce' or 'dlr', got {loss!r}")
        targeted = _check_flag("targeted", targeted)
        if targeted and loss != "dlr":
            raise ValueError("targeted APGD (APGD-T) maximizes the targeted DLR loss: pass loss='dlr'")
        n_target_classes = _check_count("n_target_classes", n_target_classes)
        rho = _check_real("rho", rho, "in (0, 1)", lambda value: 0 < value < 1)
        momentum = _check_real("momentum", momentum, "in [0, 1]", lambda value: 0 <= value <= 1)
        # alpha is the initial step 2·eps; the random start is part of the algorithm.
        eps = _check_eps(eps)
        super().__init__(eps, 2 * eps, steps, restarts, True, None, generator=generator)
        self.loss = loss
        self.targeted = targeted
        self.n_target_classes = n_target_classes
        self.rho = rho
        self.momentum = momentum

    def settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "name": "APGD",
            "eps": self.eps,
            "steps": self.steps,
            "restarts": self.restarts,
            "loss": self.loss,
            "targeted": self.targeted,
        }
        if self.targeted:
            settings["n_target_classes"] = self.n_target_classes
        settings.update(initial_step_size=self.alpha, rho=self.rho, momentum=self.momentum, random_start=True)
        return settings

    def _perturb(self, model: Callable[[Tensor], Any], images: Tensor, labels: Tensor) -> Tensor:
        with torch.no_grad():
            clean_logits = _as_tensor(model(images))
        self._check_logits(clean_logits, labels)
        if self.targeted:
            # The most likely wrong classes first, as AutoAttack orders its targets.
            ranked = clean_logits.masked_fill(_one_hot(labels, clean_logits), -math.inf).argsort(dim=1, descending=True)
            targets: list[Tensor | None] = [ranked[:, rank] for rank in range(self.n_target_classes)]
        else:
            targets = [None]
        best = images.clone()
        best_loss = images.new_full((len(images),), -math.inf)
        best_fooled = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        for target in targets:
            for _ in range(self.restarts):
                active = (~best_fooled).nonzero().squeeze(1)
                if len(active) == 0:
                    return best
                adversarial, loss, fooled = self._run(
                    model, images[active], labels[active], None if target is None else target[active]
                )
                better = _ranks_higher(fooled, loss, best_fooled[active], best_loss[active])
                chosen = active[better]
                best[chosen], best_loss[chosen], best_fooled[chosen] = (
                    adversarial[better],
                    loss[better],
                    fooled[better],
                )
        return best

    def _run(
        self, model: Callable[[Tensor], Any], images: Tensor, labels: Tensor, targets: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One APGD run from a random start: the returned iterate per sample, its loss and whether it fools."""
        shape = (-1, *[1] * (images.dim() - 1))
        step = images.new_full((len(images),), self.alpha)
        adversarial = self._random_start(images)
        loss, grad, fooled = self._evaluate(model, adversarial, labels, targets, need_grad=True)
        # The algorithm's best point (its restarts go there) and the point returned (misclassified ones first).
        best, best_loss, best_grad = adversarial, loss, grad
        returned, returned_loss, returned_fooled = adversarial, loss, fooled
        previous_iterate, previous_loss = adversarial, loss
        checkpoints = _apgd_checkpoints(self.steps)
        last_checkpoint = 0
        increases = torch.zeros(len(images), dtype=torch.long, device=images.device)
        best_loss_at_checkpoint = best_loss
        reduced_at_checkpoint = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        for k in range(1, self.steps + 1):
            with torch.no_grad():
                candidate = self._project(adversarial + step.view(shape) * grad.sign(), images)
                if k > 1:
                    moved = self.momentum * (candidate - adversarial) + (1 - self.momentum) * (
                        adversarial - previous_iterate
                    )
                    candidate = self._project(adversarial + moved, images)
            previous_iterate, adversarial = adversarial, candidate
            # The last iterate needs its loss only: the budget is `steps` gradient evaluations.
            loss, grad, fooled = self._evaluate(model, adversarial, labels, targets, need_grad=k < self.steps)
            increases += loss > previous_loss
            previous_loss = loss
            improved = loss > best_loss
            best = torch.where(improved.view(shape), adversarial, best)
            if grad is not None:
                best_grad = torch.where(improved.view(shape), grad, best_grad)
            best_loss = torch.where(improved, loss, best_loss)
            better = _ranks_higher(fooled, loss, returned_fooled, returned_loss)
            returned = torch.where(better.view(shape), adversarial, returned)
            returned_loss = torch.where(better, loss, returned_loss)
            returned_fooled = torch.where(better, fooled, returned_fooled)
            if k in checkpoints:
                oscillating = increases < self.rho * (k - last_checkpoint)
                stalled = ~reduced_at_checkpoint & (best_loss <= best_loss_at_checkpoint)
                reduce = oscillating | stalled
                step = torch.where(reduce, step / 2, step)
                adversarial = torch.where(reduce.view(shape), best, adversarial)
                grad = torch.where(reduce.view(shape), best_grad, grad)
                previous_loss = torch.where(reduce, best_loss, previous_loss)
                reduced_at_checkpoint, best_loss_at_checkpoint = reduce, best_loss
                increases = torch.zeros_like(increases)
                last_checkpoint = k
        return returned, returned_loss, returned_fooled

    def _evaluate(
        self,
        model: Callable[[Tensor], Any],
        adversarial: Tensor,
        labels: Tensor,
        targets: Tensor | None,
        need_grad: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        adversarial = adversarial.detach().requires_grad_(need_grad)
        with torch.set_grad_enabled(need_grad):
            logits = _as_tensor(model(adversarial))
            if self.loss == "ce":
                loss = F.cross_entropy(logits, labels.long(), reduction="none")
            elif targets is None:
                loss = dlr_loss(logits, labels)
            else:
                loss = targeted_dlr_loss(logits, labels, targets)
        grad = _input_gradient(loss, adversarial) if need_grad else None
        return loss.detach(), grad, logits.detach().argmax(dim=1) != labels

    def _check_logits(self, logits: Tensor, labels: Tensor) -> None:
        if logits.dim() != 2 or logits.shape[0] != len(labels):
            raise ValueError(
                f"APGD needs logits of shape (B, num_classes) = ({len(labels)}, num_classes), got {tuple(logits.shape)}"
            )
        num_classes = logits.shape[1]
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"labels must be class indices in [0, {num_classes}) for the model's {num_classes} logits, "
                f"got values in [{labels.min().item()}, {labels.max().item()}]"
            )
        # The DLR denominator reads the 3rd (targeted: also the 4th) largest logit.
        needed = 4 if self.targeted else 3 if self.loss == "dlr" else 2
        if num_classes < needed:
            raise ValueError(f"APGD with {self._loss_name()} needs at least {needed} classes, got {num_classes}")
        if self.targeted and self.n_target_classes > num_classes - 1:
            raise ValueError(
                f"n_target_classes={self.n_target_classes} exceeds the {num_classes - 1} wrong classes of a "
                f"{num_classes}-class model; pass n_target_classes <= {num_classes - 1}"
            )

    def _loss_name(self) -> str:
        return "the targeted DLR loss" if self.targeted else "the DLR loss" if self.loss == "dlr" else "cross-entropy"


def _check_real(name: str, value: Any, accepted: str, valid: Callable[[float], bool]) -> float:
    """``value`` as a float: a TypeError unless it is a real number (bool excluded), a ValueError unless it is
    finite and ``valid``; both name the argument, the value and what is accepted."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {accepted}, got {value!r} of type {type(value).__name__}")
    number = float(value)
    if not (math.isfinite(number) and valid(number)):
        raise ValueError(f"{name} must be {accepted}, got {value!r}")
    return number


def _check_eps(eps: Any) -> float:
    return _check_real("eps", eps, "in [0, 1] (L∞ radius in [0, 1] pixel units)", lambda value: 0 <= value <= 1)


def _check_count(name: str, value: Any) -> int:
    """An integer >= 1: a TypeError for what is not a number, a ValueError for a number that is not such an
    integer (2.5, 0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an integer >= 1, got {value!r} of type {type(value).__name__}")
    if not is_integer(value) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} of type {type(value).__name__}")
    return value


def dlr_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Difference of Logits Ratio per sample, ``-(z_y - max_{i≠y} z_i) / (z_π1 - z_π3)`` (Croce & Hein 2020).

    ``z_π1 ≥ z_π2 ≥ …`` are the sorted logits. Positive exactly when the sample is misclassified; invariant to
    shifting and scaling the logits, so a defence cannot hide behind saturated softmax outputs.
    """
    ordered = logits.sort(dim=1, descending=True).values
    true = logits.gather(1, labels.long()[:, None]).squeeze(1)
    best_other = logits.masked_fill(_one_hot(labels, logits), -math.inf).amax(dim=1)
    return -(true - best_other) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def targeted_dlr_loss(logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """Targeted DLR per sample, ``-(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2)`` (Croce & Hein 2020): positive when
    the target ``t`` outscores the true class."""
    ordered = logits.sort(dim=1, descending=True).values
    true = logits.gather(1, labels.long()[:, None]).squeeze(1)
    target = logits.gather(1, targets.long()[:, None]).squeeze(1)
    return -(true - target) / (ordered[:, 0] - (ordered[:, 2] + ordered[:, 3]) / 2 + 1e-12)


def _apgd_checkpoints(steps: int) -> set[int]:
    """Iterations where APGD may halve its step: ``ceil(p_j·steps)`` for ``p_0 = 0``, ``p_1 = 0.22``,
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``; kept in hundredths so that the ceiling is exact."""
    checkpoints = set()
    previous, current = 0, 22
    while current <= 100:
        checkpoints.add(-(-current * steps // 100))
        previous, current = current, current + max(current - previous - 3, 6)
    return {k for k in checkpoints if 0 < k < steps}


def _ranks_higher(fooled: Tensor, loss: Tensor, other_fooled: Tensor, other_loss: Tensor) -> Tensor:
    """Per sample: misclassified beats not misclassified; among equals the strictly higher loss wins."""
    return (fooled & ~other_fooled) | ((fooled == other_fooled) & (loss > other_loss))


def _one_hot(labels: Tensor, logits: Tensor) -> Tensor:
    return F.one_hot(labels.long(), logits.shape[1]).bool()


def _input_gradient(loss: Tensor, inputs: Tensor) -> Tensor:
    """Gradient of the summed per-sample ``loss`` w.r.t. the leaf ``inputs`` only."""
    grad = None
    if loss.requires_grad:
        (grad,) = torch.autograd.grad(loss.sum(), inputs, allow_unused=True)
    if grad is None:
        # A silently zero gradient would make any defence look robust; refuse instead.
        raise RuntimeError(
            "the attack loss does not depend differentiably on the images (is the model detaching its "
            "input or running under torch.no_grad()?); a white-box attack needs input gradients"
        )
    return grad


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
