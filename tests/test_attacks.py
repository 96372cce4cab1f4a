import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

from cropd_hf.attacks import APGD, FGSM, PGD, Attack
from cropd_hf.losses import adversarial_contrastive_loss

EPS = 0.1


def _mlp(seed: int = 0, gain: float = 1.0) -> nn.Module:
    """A tiny 2-layer MLP on 1x8x8 images; a large ``gain`` saturates the tanh: clearly nonlinear."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 3))
    with torch.no_grad():
        model[1].weight.mul_(gain)
    return model


def _per_sample_ce(model, images, labels):
    with torch.no_grad():
        return F.cross_entropy(model(images), labels, reduction="none")


@pytest.fixture
def batch():
    """Random 1x8x8 images, many pixels at or just inside 0 and 1, so that clipping to [0, 1] matters."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 1, 8, 8, generator=generator)
    which = torch.rand(images.shape, generator=generator)
    images[which < 0.1] = 0.0
    images[(which >= 0.1) & (which < 0.2)] = 0.02
    images[(which > 0.8) & (which <= 0.9)] = 0.98
    images[which > 0.9] = 1.0
    labels = torch.randint(3, (6,), generator=generator)
    return images, labels


ATTACKS = [
    FGSM(EPS),
    FGSM(EPS, random_start=True),
    PGD(EPS, alpha=0.03, steps=5, restarts=3),
    PGD(EPS, alpha=0.03, steps=5, random_start=False),
]


@pytest.mark.parametrize("attack", ATTACKS, ids=repr)
def test_attack_stays_in_eps_ball_and_unit_interval(attack, batch):
    images, labels = batch
    model = _mlp()
    torch.manual_seed(0)

    adversarial = attack(model, images, labels)

    assert adversarial.shape == images.shape and adversarial.dtype == images.dtype
    assert not adversarial.requires_grad
    assert (adversarial - images).abs().max() <= EPS + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    # The attack moved pixels, and the [0, 1] clip was active on the border pixels.
    assert (adversarial - images).abs().max() > EPS / 2
    assert (adversarial[images == 0.02] == 0).any() and (adversarial[images == 0.98] == 1).any()


def test_pgd_reaches_at_least_the_fgsm_loss(batch):
    images, labels = batch
    model = _mlp(gain=10.0)
    torch.manual_seed(0)

    fgsm_loss = _per_sample_ce(model, FGSM(EPS)(model, images, labels), labels)
    pgd_loss = _per_sample_ce(model, PGD(EPS, alpha=EPS / 4, steps=20)(model, images, labels), labels)
    clean_loss = _per_sample_ce(model, images, labels)

    assert fgsm_loss.mean() > clean_loss.mean()
    assert (pgd_loss >= fgsm_loss).all()
    # On a nonlinear model iterating pays off; a margin keeps the test from passing on a near-tie.
    assert pgd_loss.mean() > fgsm_loss.mean() + 0.1


def test_pgd_restarts_keep_the_per_sample_best(batch):
    images, labels = batch
    model = _mlp()

    def attack(restarts: int) -> torch.Tensor:
        return PGD(EPS, alpha=0.02, steps=3, restarts=restarts)(model, images, labels)

    torch.manual_seed(0)
    one_restart = _per_sample_ce(model, attack(1), labels)
    torch.manual_seed(0)
    three_restarts = _per_sample_ce(model, attack(3), labels)
    # Restarts draw only their random start from the RNG, so three single-restart runs in a row see the
    # same starts as one three-restart run: the latter must return the per-sample maximum of the former.
    torch.manual_seed(0)
    separate_runs = torch.stack([_per_sample_ce(model, attack(1), labels) for _ in range(3)])

    assert (three_restarts >= one_restart).all()
    torch.testing.assert_close(three_restarts, separate_runs.max(dim=0).values)
    # Otherwise the test above would not distinguish best-of-restarts from first or last restart.
    assert (separate_runs.argmax(dim=0) != 0).any() and (separate_runs.argmax(dim=0) != 2).any()


def test_pgd_returns_the_best_iterate_not_the_last():
    # Loss -|x - target| peaks inside the step grid: from 0.5 with alpha 0.1 the iterates are
    # 0.5, 0.6, 0.7 and the second one (loss -0.02) beats the last one (loss -0.08).
    images = torch.full((2, 1, 1, 1), 0.5)
    target = torch.tensor([0.62, 0.38])

    def loss_fn(outputs, labels):
        return -(outputs.flatten(1) - target[:, None]).abs().sum(dim=1)

    attack = PGD(0.3, alpha=0.1, steps=2, random_start=False, loss_fn=loss_fn)
    adversarial = attack(nn.Identity(), images, torch.zeros(2, dtype=torch.long))

    torch.testing.assert_close(adversarial.flatten(), torch.tensor([0.6, 0.4]))


@pytest.mark.parametrize("interior", [True, False], ids=["interior", "clipped"])
def test_fgsm_on_linear_binary_model_is_the_analytic_worst_case(interior):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(2, 64, generator=generator)
    # Keep w_1 - w_0 away from 0 so that the sign of the gradient is unambiguous.
    gap = torch.randn(64, generator=generator).sign() * (0.1 + torch.rand(64, generator=generator))
    weight[1] = weight[0] + gap
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    with torch.no_grad():
        model[1].weight.copy_(weight)
        model[1].bias.copy_(torch.tensor([0.3, -0.2]))
    images = torch.rand(4, 1, 8, 8, generator=generator)
    images = 0.2 + 0.6 * images if interior else (images > 0.5).float()
    labels = torch.tensor([0, 1, 0, 1])

    adversarial = FGSM(EPS)(model, images, labels)

    direction = weight[labels] - weight[1 - labels]  # w_y - w_other
    expected = (images.flatten(1) - EPS * direction.sign()).clamp(0, 1).view_as(images)
    torch.testing.assert_close(adversarial, expected, atol=1e-6, rtol=0)


def test_fgsm_default_step_sizes():
    assert FGSM(EPS).alpha == EPS
    assert FGSM(EPS, random_start=True).alpha == pytest.approx(1.25 * EPS)
    assert FGSM(EPS, alpha=0.05, random_start=True).alpha == 0.05


def test_zero_eps_returns_the_clean_images(batch):
    images, labels = batch
    for attack in (FGSM(0.0), FGSM(0.0, random_start=True), PGD(0.0, alpha=0.01, steps=2)):
        torch.testing.assert_close(attack(_mlp(), images, labels), images, atol=0, rtol=0)


def test_repr_and_settings():
    attack = PGD(eps=0.1, alpha=0.025, steps=10)
    assert repr(attack) == "PGD(eps=0.1, alpha=0.025, steps=10, restarts=1, random_start=True)"
    assert attack.settings() == {
        "name": "PGD",
        "eps": 0.1,
        "alpha": 0.025,
        "steps": 10,
        "restarts": 1,
        "random_start": True,
    }
    assert repr(FGSM(0.1)) == "FGSM(eps=0.1, alpha=0.1, steps=1, restarts=1, random_start=False)"
    assert isinstance(attack, Attack)


def test_attacks_are_deterministic_given_the_seed(batch):
    images, labels = batch
    model = _mlp()
    attack = PGD(EPS, alpha=0.03, steps=3, restarts=2)

    torch.manual_seed(123)
    first = attack(model, images, labels)
    torch.manual_seed(123)
    second = attack(model, images, labels)
    torch.manual_seed(321)
    other_seed = attack(model, images, labels)

    torch.testing.assert_close(first, second, atol=0, rtol=0)
    assert not torch.equal(first, other_seed)


def test_explicit_generator_is_used_instead_of_the_global_rng(batch):
    images, labels = batch
    model = _mlp()

    def run() -> torch.Tensor:
        attack = FGSM(EPS, random_start=True, generator=torch.Generator().manual_seed(7))
        return attack(model, images, labels)

    torch.manual_seed(0)
    fresh_state = torch.get_rng_state()
    first = run()
    assert torch.equal(torch.get_rng_state(), fresh_state)
    torch.manual_seed(1)
    second = run()

    torch.testing.assert_close(first, second, atol=0, rtol=0)


class _RecordingModel(nn.Module):
    """Records the training flag of itself and of a submodule at every forward."""

    def __init__(self):
        super().__init__()
        self.net = _mlp()
        self.frozen = nn.Dropout(0.5)
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, images):
        self.seen.append((self.training, self.net.training))
        return self.net(self.frozen(images))


@pytest.mark.parametrize("attack", [FGSM(EPS, random_start=True), PGD(EPS, alpha=0.03, steps=3)], ids=repr)
def test_model_is_in_eval_mode_during_the_attack_and_restored_after(attack, batch):
    images, labels = batch
    model = _RecordingModel().train()
    model.frozen.eval()  # a part kept in eval inside a training model must stay in eval

    attack(model, images, labels)

    assert model.seen and all(flags == (False, False) for flags in model.seen)
    assert model.training and model.net.training and not model.frozen.training
    assert all(parameter.grad is None for parameter in model.parameters())


def test_training_flag_is_restored_when_the_model_raises(batch):
    images, labels = batch

    class Failing(nn.Module):
        def forward(self, images):
            raise RuntimeError("boom")

    model = Failing().train()
    with pytest.raises(RuntimeError, match="boom"):
        PGD(EPS, alpha=0.03)(model, images, labels)
    assert model.training


def test_attack_works_under_no_grad(batch):
    images, labels = batch
    model = _mlp()
    with torch.no_grad():
        adversarial = PGD(EPS, alpha=0.03, steps=3)(model, images, labels)
    assert (_per_sample_ce(model, adversarial, labels) > _per_sample_ce(model, images, labels)).all()
    assert all(parameter.grad is None for parameter in model.parameters())


def test_attack_accepts_a_model_returning_a_model_output(batch):
    images, labels = batch
    mlp = _mlp()

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = mlp

        def forward(self, pixel_values):
            return ImageClassifierOutput(logits=self.mlp(pixel_values))

    torch.manual_seed(0)
    adversarial = PGD(EPS, alpha=0.03, steps=3)(Classifier(), images, labels)
    torch.manual_seed(0)
    expected = PGD(EPS, alpha=0.03, steps=3)(mlp, images, labels)

    torch.testing.assert_close(adversarial, expected, atol=0, rtol=0)
    assert not torch.equal(adversarial, images)


def test_fgsm_on_contrastive_features_the_training_use_case(batch):
    images, labels = batch
    torch.manual_seed(0)
    features = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 8)).train()
    z_clean = features(images)

    def loss_fn(z_adv, y):
        return adversarial_contrastive_loss(z_clean.detach(), z_adv, y, 0.1, reduction="none")

    attack = FGSM(EPS, random_start=True, loss_fn=loss_fn)
    adversarial = attack(lambda x_adv: features(x_adv), images, labels)

    assert (adversarial - images).abs().max() <= EPS + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert all(parameter.grad is None for parameter in features.parameters())
    assert features.training  # a closure is not a module: its mode is the caller's business
    generator = torch.Generator().manual_seed(1)
    noisy = (images + EPS * (2 * torch.rand(images.shape, generator=generator) - 1)).clamp(0, 1)
    with torch.no_grad():
        clean_loss, noisy_loss, adversarial_loss = (
            adversarial_contrastive_loss(z_clean, features(x), labels) for x in (images, noisy, adversarial)
        )
    # Beating a random point of the ball shows that the step climbs the loss, not only the random start.
    assert adversarial_loss > max(clean_loss, noisy_loss) + 0.1
    # The caller's graph through z_clean is untouched and still usable for the training step.
    z_clean.sum().backward()


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (torch.rand(1, 8, 8), torch.tensor([0]), r"shape \(B, C, H, W\)"),
        (torch.rand(1, 1, 1, 8, 8), torch.tensor([0]), r"shape \(B, C, H, W\)"),
        (torch.randint(0, 2, (2, 1, 8, 8)), torch.tensor([0, 1]), "floating tensor"),
        (torch.rand(2, 1, 8, 8) * 255, torch.tensor([0, 1]), r"pixel values in \[0, 1\]"),
        (torch.rand(2, 1, 8, 8) - 0.5, torch.tensor([0, 1]), r"pixel values in \[0, 1\]"),
        (torch.full((2, 1, 8, 8), float("nan")), torch.tensor([0, 1]), "finite"),
        (torch.rand(2, 1, 8, 8), torch.tensor([[0], [1]]), r"labels must have shape \(B,\) = \(2,\)"),
        (torch.rand(2, 1, 8, 8), torch.tensor([0, 1, 2]), r"labels must have shape \(B,\) = \(2,\)"),
        (torch.rand(2, 1, 8, 8), torch.tensor([0.0, 1.0]), "integer class indices"),
        (torch.rand(2, 1, 8, 8), torch.tensor([0, 3]), r"class indices in \[0, 3\)"),
        (torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long), "at least one image"),
    ],
)
def test_bad_inputs_raise_a_clear_value_error(images, labels, message):
    with pytest.raises(ValueError, match=message):
        PGD(EPS, alpha=0.03, steps=2)(_mlp(), images, labels)


def test_inputs_a_hair_outside_the_unit_interval_are_accepted():
    images = torch.tensor([-1e-7, 1 + 1e-7, 0.5, 0.5]).view(1, 1, 2, 2)
    adversarial = FGSM(EPS)(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), images, torch.tensor([0]))
    assert adversarial.min() >= 0 and adversarial.max() <= 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PGD(-0.1, alpha=0.01), r"eps must be in \[0, 1\].*got -0.1"),
        (lambda: FGSM(1.5), r"eps must be in \[0, 1\].*got 1.5"),
        (lambda: PGD(0.1, alpha=0.0), r"alpha must be a finite step size > 0, got 0.0"),
        (lambda: PGD(0.1, alpha=-0.01), r"alpha must be a finite step size > 0"),
        (lambda: PGD(0.1, alpha=0.01, steps=0), r"steps must be an integer >= 1, got 0"),
        (lambda: PGD(0.1, alpha=0.01, steps=2.5), r"steps must be an integer >= 1, got 2.5"),
        (lambda: PGD(0.1, alpha=0.01, restarts=0), r"restarts must be an integer >= 1, got 0"),
    ],
)
def test_bad_arguments_raise_a_clear_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_loss_fn_must_return_per_sample_losses(batch):
    images, labels = batch
    attack = FGSM(EPS, loss_fn=lambda outputs, y: F.cross_entropy(outputs, y))
    with pytest.raises(ValueError, match=r"per-sample losses of shape \(6,\), got \(\)"):
        attack(_mlp(), images, labels)


def test_a_model_without_input_gradient_is_refused(batch):
    images, labels = batch
    model = _mlp()
    with pytest.raises(RuntimeError, match="does not depend differentiably on the images"):
        FGSM(EPS)(lambda x: model(x.detach()), images, labels)


def test_a_model_returning_neither_logits_nor_a_tensor_is_refused(batch):
    images, labels = batch
    with pytest.raises(TypeError, match=r"\.logits"):
        FGSM(EPS)(lambda x: {"scores": x}, images, labels)


# Issue 7: every constructor argument checked by type and range, the message naming argument, value and accepted.


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: FGSM(True), TypeError, r"eps must be in \[0, 1\] .*got True of type bool"),
        (lambda: FGSM("0.1"), TypeError, r"eps must be in \[0, 1\] .*got '0.1' of type str"),
        (lambda: FGSM(None), TypeError, r"eps must be in \[0, 1\] .*got None of type NoneType"),
        (lambda: FGSM("0.1", random_start=True), TypeError, r"eps must be .*got '0.1' of type str"),
        (lambda: FGSM(float("nan")), ValueError, r"eps must be in \[0, 1\] .*got nan"),
        (lambda: FGSM(float("inf")), ValueError, r"eps must be in \[0, 1\] .*got inf"),
        (lambda: FGSM(0.1, alpha="big"), TypeError, r"alpha must be a finite step size > 0, got 'big' of type str"),
        (lambda: PGD(0.1, alpha=None), TypeError, r"alpha must be a finite step size > 0, got None"),
        (lambda: PGD(0.1, alpha=float("inf")), ValueError, r"alpha must be a finite step size > 0, got inf"),
        (lambda: PGD(0.1, alpha=True), TypeError, r"alpha must be .*got True of type bool"),
        (lambda: PGD(0.1, alpha=0.01, steps=True), TypeError, r"steps must be an integer >= 1, got True of type bool"),
        (lambda: PGD(0.1, alpha=0.01, steps="3"), TypeError, r"steps must be an integer >= 1, got '3' of type str"),
        (lambda: PGD(0.1, alpha=0.01, steps=2.0), ValueError, r"steps must be an integer >= 1, got 2.0"),
        (lambda: PGD(0.1, alpha=0.01, restarts=None), TypeError, r"restarts must be an integer >= 1, got None"),
        (lambda: PGD(0.1, alpha=0.01, restarts=-2), ValueError, r"restarts must be an integer >= 1, got -2"),
        (lambda: PGD(0.1, alpha=0.01, random_start="no"), TypeError, r"random_start must be True or False, got 'no'"),
        (lambda: FGSM(0.1, random_start=1), TypeError, r"random_start must be True or False, got 1 of type int"),
        (lambda: FGSM(0.1, loss_fn="ce"), TypeError, r"loss_fn must be None .* or a callable .*got 'ce'"),
        (lambda: PGD(0.1, alpha=0.01, generator=0), TypeError, r"generator must be None .* or a torch.Generator"),
        (lambda: APGD(None), TypeError, r"eps must be in \[0, 1\] .*got None of type NoneType"),
        (lambda: APGD(True), TypeError, r"eps must be .*got True of type bool"),
        (lambda: APGD(0.1, steps=None), TypeError, r"steps must be an integer >= 1, got None"),
        (lambda: APGD(0.1, loss=None), TypeError, r"loss must be 'ce' or 'dlr', got None of type NoneType"),
        (lambda: APGD(0.1, loss="CE"), ValueError, r"loss must be 'ce' or 'dlr', got 'CE'"),
        (lambda: APGD(0.1, loss="dlr", targeted="yes"), TypeError, r"targeted must be True or False, got 'yes'"),
        (lambda: APGD(0.1, targeted=1, loss="dlr"), TypeError, r"targeted must be True or False, got 1 of type int"),
        (lambda: APGD(0.1, n_target_classes=2.5), ValueError, r"n_target_classes must be an integer >= 1, got 2.5"),
        (lambda: APGD(0.1, n_target_classes="9"), TypeError, r"n_target_classes must be an integer >= 1, got '9'"),
        (lambda: APGD(0.1, rho="0.5"), TypeError, r"rho must be in \(0, 1\), got '0.5' of type str"),
        (lambda: APGD(0.1, rho=float("nan")), ValueError, r"rho must be in \(0, 1\), got nan"),
        (lambda: APGD(0.1, momentum=None), TypeError, r"momentum must be in \[0, 1\], got None"),
        (lambda: APGD(0.1, momentum=-0.1), ValueError, r"momentum must be in \[0, 1\], got -0.1"),
        (lambda: APGD(0.1, generator="seed"), TypeError, r"generator must be None .* or a torch.Generator"),
    ],
)
def test_constructor_arguments_are_checked_by_type_and_range(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_numbers_of_any_real_type_are_accepted_and_stored_as_python_numbers():
    attack = PGD(np.float64(0.1), alpha=np.float32(0.5), steps=np.int64(3), restarts=np.int32(2))
    assert attack.settings() == {
        "name": "PGD",
        "eps": 0.1,
        "alpha": 0.5,
        "steps": 3,
        "restarts": 2,
        "random_start": True,
    }
    assert type(attack.eps) is float and type(attack.steps) is int and type(attack.restarts) is int
    assert FGSM(0).eps == 0.0 and type(FGSM(0).alpha) is float
    apgd = APGD(np.float64(0.1), steps=np.int64(4), rho=np.float64(0.5), n_target_classes=np.int64(2))
    assert (apgd.alpha, apgd.steps, apgd.rho, apgd.n_target_classes) == (0.2, 4, 0.5, 2)
