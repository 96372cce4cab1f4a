"""APGD (Croce & Hein 2020): stronger than PGD at the same budget, self-tuning step, AutoAttack's return rule."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cropd_hf.attacks import APGD, PGD, Attack, _apgd_checkpoints, dlr_loss, targeted_dlr_loss

EPS = 0.1


def _deep_mlp(seed: int, classes: int = 10) -> nn.Module:
    """Saturated tanh layers and large logits on 1x8x8 images: a loss landscape where a fixed step is a poor fit."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, classes)
    )
    with torch.no_grad():
        model[1].weight.mul_(10)
        model[3].weight.mul_(10)
        model[5].weight.mul_(5)
    return model


def _images_and_own_labels(model: nn.Module, seed: int, count: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(count, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return images, model(images).argmax(dim=1)  # every sample starts correctly classified


def _ce(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(images), labels, reduction="none")


def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(images).argmax(dim=1) == labels).float().mean().item()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("steps", [10, 20])
def test_apgd_finds_a_higher_loss_than_pgd_with_the_same_budget(seed, steps):
    model = _deep_mlp(seed)
    images, labels = _images_and_own_labels(model, seed)
    torch.manual_seed(seed)
    # The two usual fixed steps: Madry's 2.5·ε/steps and the paper's ε/4 (2/255 at 8/255).
    pgd_losses = [
        _ce(model, PGD(EPS, alpha=alpha, steps=steps)(model, images, labels), labels).mean().item()
        for alpha in (2.5 * EPS / steps, EPS / 4)
    ]
    apgd = APGD(EPS, steps=steps)(model, images, labels)

    # A clear margin, so a near-tie cannot pass for "at least as high".
    assert _ce(model, apgd, labels).mean().item() > max(pgd_losses) + 0.1


def test_apgd_breaks_at_least_as_many_samples_as_pgd():
    model = _deep_mlp(0)
    images, labels = _images_and_own_labels(model, 0, count=64)
    eps = 0.02  # small enough that some samples survive
    torch.manual_seed(0)
    pgd_accuracy = _accuracy(model, PGD(eps, alpha=eps / 4, steps=20)(model, images, labels), labels)
    apgd_accuracy = _accuracy(model, APGD(eps, steps=20)(model, images, labels), labels)
    apgd_t_accuracy = _accuracy(model, APGD(eps, steps=20, loss="dlr", targeted=True)(model, images, labels), labels)

    assert 0 < pgd_accuracy < 1
    assert apgd_accuracy <= pgd_accuracy
    assert apgd_t_accuracy <= pgd_accuracy


class _Bowl(nn.Module):
    """Cross-entropy of class 0 peaks where the single pixel equals ``target``, strictly inside the ε-ball."""

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.target = target

    def forward(self, images):
        distance = 10 * (images.flatten(1) - self.target[:, None]).pow(2).sum(dim=1)
        return torch.stack([distance, torch.zeros_like(distance), torch.zeros_like(distance)], dim=1)


def test_step_size_halving_reaches_an_interior_maximum_a_fixed_step_cannot():
    target = torch.tensor([0.62, 0.41, 0.55, 0.37])
    model = _Bowl(target)
    images, labels = torch.full((4, 1, 1, 1), 0.5), torch.zeros(4, dtype=torch.long)
    torch.manual_seed(0)

    apgd = APGD(0.3, steps=100)(model, images, labels).flatten()
    pgd = PGD(0.3, alpha=0.3 / 4, steps=100)(model, images, labels).flatten()

    # From 2ε the step halves at up to 8 checkpoints; a fixed step keeps jumping over the peak.
    assert (apgd - target).abs().max() < 1e-3
    assert (pgd - target).abs().max() > 1e-2


def test_checkpoints_follow_the_paper():
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99: intervals shrink by 0.03, down to 0.06.
    assert sorted(_apgd_checkpoints(100)) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert sorted(_apgd_checkpoints(50)) == [11, 21, 29, 35, 40, 44, 47]
    assert sorted(_apgd_checkpoints(10)) == [3, 5, 6, 7, 8, 9]
    assert _apgd_checkpoints(1) == set()


class _FooledOnlyLow(nn.Module):
    """One pixel u: class 1 wins for u < 0.4, while the cross-entropy of class 0 keeps rising up to u = 0.75,
    where the sample is classified correctly again. The loss maximum is not where the model errs."""

    def forward(self, images):
        u = images.flatten(1).mean(dim=1)
        others = (4 * (u - 0.76))[:, None].expand(-1, 8)
        return torch.cat([torch.zeros_like(u)[:, None], (0.4 - u)[:, None], others], dim=1)


def test_a_misclassified_iterate_beats_a_higher_loss_correct_one():
    model = _FooledOnlyLow()
    images, labels = torch.full((20, 1, 1, 1), 0.5), torch.zeros(20, dtype=torch.long)
    assert _accuracy(model, images, labels) == 1
    torch.manual_seed(0)

    pgd = PGD(0.25, alpha=0.05, steps=10, restarts=3)(model, images, labels)
    apgd = APGD(0.25, steps=10, restarts=3)(model, images, labels)

    # PGD keeps the highest loss, at u = 0.75, where the model is right; APGD keeps the random starts below 0.4
    # that fooled the model, as AutoAttack does.
    assert _accuracy(model, pgd, labels) == 1
    assert _accuracy(model, apgd, labels) < 0.8
    fooled = model(apgd).argmax(dim=1) != labels
    assert (apgd.flatten()[fooled] < 0.4).all()


class _CountingModel(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.batch_sizes: list[int] = []

    def forward(self, images):
        self.batch_sizes.append(len(images))
        return self.model(images)


@pytest.mark.parametrize(
    ("make", "runs"),
    [
        (lambda: APGD(0.015, steps=5, restarts=3), 3),
        (lambda: APGD(0.015, steps=5, loss="dlr", targeted=True, n_target_classes=3), 3),
    ],
    ids=["restarts", "targets"],
)
def test_restarts_and_targets_attack_only_the_samples_not_yet_fooled(make, runs):
    model = _CountingModel(_deep_mlp(0))
    images, labels = _images_and_own_labels(model.model, 0, count=64)
    adversarial = make()(model, images, labels)

    # One clean forward, then per run `steps` gradient evaluations and one final forward on the same samples.
    sizes = model.batch_sizes
    assert sizes[0] == len(images) and len(sizes) == 1 + runs * 6
    per_run = [sizes[1 + 6 * run : 7 + 6 * run] for run in range(runs)]
    assert all(len(set(run)) == 1 for run in per_run)
    run_sizes = [run[0] for run in per_run]
    assert run_sizes[0] == len(images)
    assert run_sizes[1] < run_sizes[0], "the first run fooled some samples, which the next run must leave out"
    assert run_sizes == sorted(run_sizes, reverse=True)
    survivors = int(_accuracy(model.model, adversarial, labels) * len(images) + 0.5)
    assert 0 < survivors <= run_sizes[-1]


@pytest.mark.parametrize(
    "attack",
    [APGD(EPS, steps=8), APGD(EPS, steps=8, loss="dlr"), APGD(EPS, steps=8, loss="dlr", targeted=True, restarts=2)],
    ids=repr,
)
def test_apgd_stays_in_the_eps_ball_and_the_unit_interval(attack):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(16, 1, 8, 8, generator=generator)
    images[:, :, :2] = 0.0
    images[:, :, -2:] = 1.0
    model = _deep_mlp(1)
    labels = torch.randint(10, (16,), generator=generator)
    torch.manual_seed(0)

    adversarial = attack(model, images, labels)

    assert adversarial.shape == images.shape and not adversarial.requires_grad
    assert (adversarial - images).abs().max() <= EPS + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert (adversarial - images).abs().max() > EPS / 2


def test_dlr_loss_is_positive_exactly_when_misclassified_and_invariant_to_logit_scale():
    logits = torch.randn(200, 10, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(10, (200,), generator=torch.Generator().manual_seed(1))
    loss = dlr_loss(logits, labels)
    misclassified = logits.argmax(dim=1) != labels

    assert ((loss > 0) == misclassified).all()
    assert misclassified.any() and (~misclassified).any()
    torch.testing.assert_close(dlr_loss(7.0 * logits - 3.0, labels), loss)

    targets = (labels + 1 + torch.randint(9, (200,), generator=torch.Generator().manual_seed(2))) % 10
    targeted = targeted_dlr_loss(logits, labels, targets)
    target_wins = logits.gather(1, targets[:, None]).squeeze(1) > logits.gather(1, labels[:, None]).squeeze(1)
    assert ((targeted > 0) == target_wins).all()
    torch.testing.assert_close(targeted_dlr_loss(7.0 * logits - 3.0, labels, targets), targeted)


def test_settings_report_what_the_number_depends_on():
    assert APGD(0.1, steps=50).settings() == {
        "name": "APGD",
        "eps": 0.1,
        "steps": 50,
        "restarts": 1,
        "loss": "ce",
        "targeted": False,
        "initial_step_size": 0.2,
        "rho": 0.75,
        "momentum": 0.75,
        "random_start": True,
    }
    targeted = APGD(0.1, steps=50, loss="dlr", targeted=True, n_target_classes=3)
    assert targeted.settings()["n_target_classes"] == 3 and targeted.settings()["loss"] == "dlr"
    assert repr(targeted).startswith(
        "APGD(eps=0.1, steps=50, restarts=1, loss='dlr', targeted=True, n_target_classes=3"
    )
    assert isinstance(targeted, Attack)


def test_apgd_is_deterministic_given_the_seed_and_leaves_the_model_as_it_was():
    model = _deep_mlp(0).train()
    images, labels = _images_and_own_labels(model, 0, count=8)
    attack = APGD(EPS, steps=6, restarts=2)
    torch.manual_seed(5)
    first = attack(model, images, labels)
    torch.manual_seed(5)
    second = attack(model, images, labels)

    torch.testing.assert_close(first, second, atol=0, rtol=0)
    assert model.training
    assert all(parameter.grad is None for parameter in model.parameters())


def test_zero_eps_returns_the_clean_images():
    model = _deep_mlp(0)
    images, labels = _images_and_own_labels(model, 0, count=4)
    torch.testing.assert_close(APGD(0.0, steps=4)(model, images, labels), images, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: APGD(0.1, loss="hinge"), r"loss must be 'ce' or 'dlr', got 'hinge'"),
        (lambda: APGD(0.1, targeted=True), r"targeted APGD .* pass loss='dlr'"),
        (lambda: APGD(0.1, loss="dlr", targeted=True, n_target_classes=0), r"n_target_classes must be an integer >= 1"),
        (lambda: APGD(0.1, rho=1.0), r"rho must be in \(0, 1\)"),
        (lambda: APGD(0.1, momentum=1.5), r"momentum must be in \[0, 1\]"),
        (lambda: APGD(0.1, steps=0), r"steps must be an integer >= 1"),
        (lambda: APGD(1.5), r"eps must be in \[0, 1\]"),
    ],
)
def test_bad_arguments_raise_a_clear_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    ("attack", "classes", "message"),
    [
        (APGD(EPS, steps=2, loss="dlr"), 2, "the DLR loss needs at least 3 classes, got 2"),
        (APGD(EPS, steps=2, loss="dlr", targeted=True, n_target_classes=2), 3, "targeted DLR .* at least 4 classes"),
        (APGD(EPS, steps=2, loss="dlr", targeted=True), 5, r"n_target_classes=9 exceeds the 4 wrong classes"),
    ],
)
def test_too_few_classes_for_the_loss_raise_a_clear_value_error(attack, classes, message):
    model = _deep_mlp(0, classes=classes)
    images = torch.rand(3, 1, 8, 8)
    with pytest.raises(ValueError, match=message):
        attack(model, images, torch.zeros(3, dtype=torch.long))


def test_labels_outside_the_logits_raise_a_clear_value_error():
    with pytest.raises(ValueError, match=r"class indices in \[0, 10\)"):
        APGD(EPS, steps=2)(_deep_mlp(0), torch.rand(2, 1, 8, 8), torch.tensor([0, 10]))
