import math

import pytest
import torch
from conftest import BINARIZING_PURIFIER, make_it_binarize
from hypothesis import given, settings
from hypothesis import strategies as st

from cropd_hf.losses import adversarial_contrastive_loss, reconstruction_loss, supervised_contrastive_loss


def _hand_supcon(features: list[list[list[float]]], labels: list[int], temperature: float):
    """SupCon L_out with plain Python loops: (mean over anchors with positives, per-sample losses)."""
    anchors = []
    for n, views in enumerate(features):
        for view in views:
            norm = math.sqrt(sum(x * x for x in view))
            anchors.append(([x / norm for x in view], labels[n], n))

    def similarity(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True)) / temperature

    anchor_losses = []
    for i, (z_i, label_i, n_i) in enumerate(anchors):
        others = [j for j in range(len(anchors)) if j != i]
        positives = [j for j in others if anchors[j][1] == label_i]
        if not positives:
            anchor_losses.append((n_i, None))
            continue
        denominator = sum(math.exp(similarity(z_i, anchors[j][0])) for j in others)
        log_probs = [math.log(math.exp(similarity(z_i, anchors[p][0])) / denominator) for p in positives]
        anchor_losses.append((n_i, -sum(log_probs) / len(positives)))

    valid = [loss for _, loss in anchor_losses if loss is not None]
    mean = sum(valid) / len(valid) if valid else 0.0
    per_sample = []
    for n in range(len(features)):
        losses = [loss for m, loss in anchor_losses if m == n and loss is not None]
        per_sample.append(sum(losses) / len(losses) if losses else 0.0)
    return mean, per_sample


@pytest.fixture
def two_view_example():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(4, 2, 3, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1])
    return features, labels


def test_reconstruction_loss_matches_hand_mse():
    generator = torch.Generator().manual_seed(0)
    reconstruction = torch.rand(2, 1, 3, 3, generator=generator, dtype=torch.float64)
    pixel_values = torch.rand(2, 1, 3, 3, generator=generator, dtype=torch.float64)
    pairs = list(zip(reconstruction.flatten().tolist(), pixel_values.flatten().tolist(), strict=True))
    expected = sum((a - b) ** 2 for a, b in pairs) / len(pairs)
    loss = reconstruction_loss(reconstruction, pixel_values)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_supervised_contrastive_loss_matches_hand_computation(two_view_example, temperature):
    features, labels = two_view_example
    expected_mean, expected_per_sample = _hand_supcon(features.tolist(), labels.tolist(), temperature)

    mean = supervised_contrastive_loss(features, labels, temperature)
    per_sample = supervised_contrastive_loss(features, labels, temperature, reduction="none")

    assert mean.shape == ()
    assert mean.item() == pytest.approx(expected_mean, rel=1e-10)
    assert per_sample.shape == (4,)
    assert per_sample.tolist() == pytest.approx(expected_per_sample, rel=1e-10)


def test_adversarial_contrastive_loss_matches_hand_computation(two_view_example):
    features, labels = two_view_example
    clean, adversarial = features[:, 0], features[:, 1]
    expected_mean, expected_per_sample = _hand_supcon(features.tolist(), labels.tolist(), 0.1)

    loss = adversarial_contrastive_loss(clean, adversarial, labels, temperature=0.1)
    per_sample = adversarial_contrastive_loss(clean, adversarial, labels, temperature=0.1, reduction="none")

    assert loss.item() == pytest.approx(expected_mean, rel=1e-10)
    assert per_sample.tolist() == pytest.approx(expected_per_sample, rel=1e-10)


def test_anchor_without_positive_is_excluded():
    # One view per sample: the sample of label 2 has no positive.
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 0, 2])
    expected_mean, expected_per_sample = _hand_supcon(features.unsqueeze(1).tolist(), labels.tolist(), 0.2)

    mean = supervised_contrastive_loss(features, labels, temperature=0.2)
    per_sample = supervised_contrastive_loss(features, labels, temperature=0.2, reduction="none")

    assert mean.item() == pytest.approx(expected_mean, rel=1e-10)
    assert per_sample.tolist() == pytest.approx(expected_per_sample, rel=1e-10)
    assert per_sample[2].item() == 0.0


@pytest.mark.parametrize(
    ("shape", "labels"),
    [((4, 2, 3), [0, 1, 0, 1]), ((3, 4), [0, 0, 2]), ((1, 4), [0]), ((2, 3), [0, 1])],
    ids=["two-views", "unique-label", "single-sample", "no-positives"],
)
def test_contrastive_loss_gradient_is_finite(shape, labels):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(*shape, generator=generator).requires_grad_(True)
    loss = supervised_contrastive_loss(features, torch.tensor(labels))
    loss.backward()
    assert torch.isfinite(loss)
    assert features.grad is not None and torch.isfinite(features.grad).all()


def test_contrastive_loss_is_stable_for_small_temperature():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(6, 2, 8, generator=generator)
    loss = supervised_contrastive_loss(features, torch.tensor([0, 1, 2, 0, 1, 2]), temperature=1e-3)
    assert torch.isfinite(loss)


def test_aligned_views_have_lower_loss_than_shuffled_views():
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    clean = torch.randn(8, 16, generator=generator)
    aligned = clean + 0.05 * torch.randn(8, 16, generator=generator)
    # Rolling by 2 gives every sample the features of a sample of another class.
    permutation = torch.roll(torch.arange(8), 2)
    assert (labels[permutation] != labels).all()
    shuffled = clean[permutation]

    aligned_loss = adversarial_contrastive_loss(clean, aligned, labels)
    shuffled_loss = adversarial_contrastive_loss(clean, shuffled, labels)

    assert aligned_loss < shuffled_loss - 1.0


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    num_samples=st.integers(1, 6),
    num_views=st.integers(1, 3),
    num_classes=st.integers(1, 3),
    scale=st.floats(0.1, 10.0),
)
def test_contrastive_loss_is_nonnegative_and_invariant(seed, num_samples, num_views, num_classes, scale):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(num_samples, num_views, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(num_classes, (num_samples,), generator=generator)
    permutation = torch.randperm(num_samples, generator=generator)

    per_sample = supervised_contrastive_loss(features, labels, reduction="none")
    scaled = supervised_contrastive_loss(scale * features, labels, reduction="none")
    permuted = supervised_contrastive_loss(features[permutation], labels[permutation], reduction="none")

    assert (per_sample >= 0).all()
    torch.testing.assert_close(scaled, per_sample)
    torch.testing.assert_close(permuted, per_sample[permutation])


@pytest.mark.parametrize("temperature", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_temperature_raises(temperature):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        supervised_contrastive_loss(torch.randn(2, 3), torch.tensor([0, 0]), temperature=temperature)


def test_bad_reduction_raises():
    with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'none'\), got 'sum'"):
        supervised_contrastive_loss(torch.randn(2, 3), torch.tensor([0, 0]), reduction="sum")


@pytest.mark.parametrize(
    ("features", "labels", "message"),
    [
        (torch.randn(3), torch.tensor([0, 0, 0]), "rank 2 or 3"),
        (torch.randn(2, 2, 2, 2), torch.tensor([0, 0]), "rank 2 or 3"),
        (torch.randn(0, 3), torch.zeros(0, dtype=torch.long), "at least one sample"),
        (torch.randn(2, 3), torch.tensor([0, 0, 1]), r"labels must have shape \(N,\) = \(2,\)"),
        (torch.randn(2, 3), torch.tensor([[0], [0]]), r"labels must have shape \(N,\) = \(2,\)"),
    ],
)
def test_bad_shapes_raise(features, labels, message):
    with pytest.raises(ValueError, match=message):
        supervised_contrastive_loss(features, labels)


@pytest.mark.parametrize(
    ("clean", "adversarial"),
    [
        (torch.randn(2, 3), torch.randn(2, 4)),
        (torch.randn(2, 3), torch.randn(3, 3)),
        (torch.randn(2), torch.randn(2)),
    ],
)
def test_adversarial_contrastive_loss_shape_mismatch_raises(clean, adversarial):
    with pytest.raises(ValueError, match=r"must both have the same shape \(N, D\)"):
        adversarial_contrastive_loss(clean, adversarial, torch.tensor([0, 1]))


def test_reconstruction_loss_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        reconstruction_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


def test_standardized_contrastive_loss_uses_the_clean_batch_statistics():
    generator = torch.Generator().manual_seed(0)
    # A large shared component puts every cosine similarity near 1; standardizing removes it.
    common = 50 * torch.randn(1, 6, generator=generator)
    clean = common + torch.randn(8, 6, generator=generator)
    adversarial = clean + 0.1 * torch.randn(8, 6, generator=generator)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    mean, std = clean.mean(dim=0), clean.std(dim=0)
    expected = adversarial_contrastive_loss((clean - mean) / std, (adversarial - mean) / std, labels)
    got = adversarial_contrastive_loss(clean, adversarial, labels, standardize=True)
    torch.testing.assert_close(got, expected)
    # Without it the loss sits at log(2N - 1), every view equally similar, and gives almost no gradient.
    adversarial.requires_grad_(True)
    raw = adversarial_contrastive_loss(clean, adversarial, labels)
    assert raw.item() == pytest.approx(math.log(2 * 8 - 1), abs=0.01)
    (raw_gradient,) = torch.autograd.grad(raw, adversarial)
    standardized = adversarial_contrastive_loss(clean, adversarial, labels, standardize=True)
    (standardized_gradient,) = torch.autograd.grad(standardized, adversarial)
    assert raw_gradient.norm() < 0.01 * standardized_gradient.norm()
    with pytest.raises(ValueError, match="at least 2 samples"):
        adversarial_contrastive_loss(clean[:1], adversarial[:1], labels[:1], standardize=True)


def test_the_purifier_objective_weighs_both_reconstructions_and_the_contrastive_term(tiny_config):
    from cropd_hf import CRoPDForImageClassification
    from cropd_hf.losses import CRoPDTrainingObjective

    torch.manual_seed(0)
    weights = {"reconstruction_weight": 3.0, "adversarial_reconstruction_weight": 5.0, "contrastive_weight": 0.5}
    model = CRoPDForImageClassification(tiny_config(purifier_architecture="conv", conv_channels=[4, 8], **weights))
    images, labels = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    adversarial = (images + 0.1 * torch.randn_like(images).sign()).clamp(0, 1)
    output = CRoPDTrainingObjective(model)(images, labels, adversarial_pixel_values=adversarial)
    purified = model.purify(adversarial)
    torch.testing.assert_close(output.adversarial_reconstruction_loss, reconstruction_loss(purified, images))
    expected = 3.0 * output.reconstruction_loss + 5.0 * output.adversarial_reconstruction_loss
    torch.testing.assert_close(output.loss, expected + 0.5 * output.contrastive_loss)


@pytest.mark.parametrize("architecture", ["conv", "vit"])
def test_a_bounded_residual_purifier_starts_as_the_identity_and_never_moves_a_pixel_further_than_its_bound(
    tiny_config, architecture
):
    from cropd_hf import CRoPDModel

    torch.manual_seed(0)
    purifier = CRoPDModel(
        tiny_config(purifier_architecture=architecture, conv_channels=[4, 8], purifier_residual_bound=0.1)
    )
    images = torch.rand(4, 1, 8, 8)
    if architecture == "conv":  # the zero output layer: g is exactly the identity before training
        torch.testing.assert_close(purifier(images).reconstruction, images)
    with torch.no_grad():
        for parameter in purifier.parameters():
            parameter.add_(torch.randn_like(parameter))  # any weights at all
    purified = purifier(images).reconstruction
    assert (purified - images).abs().max() <= 0.1 + 1e-6
    assert purified.min() >= 0 and purified.max() <= 1


def test_the_input_skip_lets_a_purifier_with_a_high_gain_push_each_pixel_back_by_its_own_value(tiny_config):
    from cropd_hf import CRoPDModel

    purifier = CRoPDModel(tiny_config(**BINARIZING_PURIFIER))
    images = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(purifier(images).reconstruction, images)  # the identity before training
    assert purifier.autoencoder.decoder[-1].in_channels == 4 + 1  # the decoder's features and the input image
    make_it_binarize(purifier)  # weights that read the pixel itself: a soft binarization around 0.5
    attacked = torch.tensor([0.0, 0.08, 0.92, 1.0, 0.3, 0.7]).view(1, 1, 1, 6).expand(1, 1, 8, 6)
    attacked = torch.nn.functional.pad(attacked, (0, 2))
    purified = purifier(attacked).reconstruction[0, 0, 0, :6]
    torch.testing.assert_close(purified, torch.tensor([0.0, 0.0, 1.0, 1.0, 0.2, 0.8]))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"reconstruction_weight": -1.0}, "reconstruction_weight"),
        ({"adversarial_reconstruction_weight": "1"}, "adversarial_reconstruction_weight"),
        ({"purifier_residual_bound": 0.0}, "purifier_residual_bound"),
        ({"purifier_residual_bound": 0.1, "purifier_residual": True}, "purifier_residual"),
        ({"purifier_residual_gain": 10.0}, "purifier_residual_gain"),  # a gain without a bound
        ({"purifier_residual_bound": 0.1, "purifier_residual_gain": 0.0}, "purifier_residual_gain"),
        ({"purifier_input_skip": True}, "purifier_input_skip"),  # the ViT purifier has no such layer
    ],
)
def test_bad_fidelity_settings_are_refused_naming_the_field(tiny_config, overrides, field):
    with pytest.raises(ValueError, match=f"CRoPDConfig.{field}="):
        tiny_config(**overrides)
