"""Stage 1's training attack: FGSM with random start, or PGD with `train_attack_steps` > 1."""

import pytest
import torch

from cropd_hf import CRoPDForImageClassification
from cropd_hf.losses import adversarial_contrastive_loss, contrastive_adversarial_examples


def _contrastive_loss(model: CRoPDForImageClassification, images: torch.Tensor, adversarial, labels) -> float:
    with torch.no_grad():
        return adversarial_contrastive_loss(
            model.contrastive_features(images),
            model.contrastive_features(adversarial),
            labels,
            model.config.contrastive_temperature,
        ).item()


def _model(tiny_config, steps: int) -> CRoPDForImageClassification:
    # A residual purifier: the fresh purifier's output layer starts at zero, so g(x) = x and z depends on x.
    torch.manual_seed(0)
    return CRoPDForImageClassification(tiny_config(train_epsilon=0.1, train_attack_steps=steps, purifier_residual=True))


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    return torch.rand(12, 1, 8, 8, generator=generator), torch.arange(12) % 3


@pytest.mark.parametrize("steps", [1, 3])
def test_training_attack_stays_in_the_ball_and_raises_the_contrastive_loss(tiny_config, batch, steps):
    model = _model(tiny_config, steps)
    images, labels = batch
    adversarial = contrastive_adversarial_examples(model, images, labels)
    assert (adversarial - images).abs().max() <= 0.1 + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert _contrastive_loss(model, images, adversarial, labels) > _contrastive_loss(model, images, images, labels)


def test_train_attack_steps_selects_the_attack(tiny_config, batch):
    images, labels = batch
    adversarial = {}
    for steps in (1, 3):
        model = _model(tiny_config, steps)
        torch.manual_seed(1)
        adversarial[steps] = contrastive_adversarial_examples(model, images, labels)
    assert not torch.equal(adversarial[1], adversarial[3])


def test_training_step_size_follows_the_attack(tiny_config):
    assert tiny_config(train_epsilon=0.1).effective_train_step_size == pytest.approx(0.125)
    assert tiny_config(train_epsilon=0.1, train_attack_steps=4).effective_train_step_size == pytest.approx(0.0625)
    explicit = tiny_config(train_epsilon=0.1, train_attack_steps=4, train_step_size=0.03)
    assert explicit.effective_train_step_size == pytest.approx(0.03)
    assert explicit.train_step_size_for(1) == pytest.approx(0.03)
