import pytest
import torch
from transformers import ResNetConfig, ResNetModel, ViTMAEModel
from transformers.modeling_outputs import BaseModelOutput

from cropd_hf import CRoPDForImageClassification, CRoPDModel, pool_foundation_outputs


@pytest.fixture
def model(tiny_config):
    torch.manual_seed(0)
    return CRoPDForImageClassification(tiny_config()).eval()


def images(batch=4, channels=1, size=8, seed=0):
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def test_purifier_maps_images_to_images_in_unit_range(tiny_config):
    purifier = CRoPDModel(tiny_config())
    output = purifier(images())
    assert output.reconstruction.shape == (4, 1, 8, 8)
    assert output.reconstruction.min() >= 0.0 and output.reconstruction.max() <= 1.0
    assert output.pooled_latent.shape == (4, 16)
    assert output.last_hidden_state.shape == (4, 1 + 16, 16)


def test_purifier_built_from_config_knows_where_patches_are(tiny_config):
    # transformers 5.23 leaves ViT-MAE position tables and CLS / mask tokens at zero when built from a config.
    purifier = CRoPDModel(tiny_config())
    assert purifier.encoder.embeddings.position_embeddings.abs().sum() > 0
    assert purifier.encoder.embeddings.cls_token.abs().sum() > 0
    assert purifier.decoder.decoder_pos_embed.abs().sum() > 0
    assert purifier.decoder.mask_token.abs().sum() > 0


def test_purifier_pooling_modes(tiny_config):
    torch.manual_seed(0)
    purifier = CRoPDModel(tiny_config(purifier_pooling="cls"))
    output = purifier(images())
    torch.testing.assert_close(output.pooled_latent, output.last_hidden_state[:, 0])


def test_foundation_is_the_referenced_model_with_masking_off(model, foundation_folder):
    reference = ViTMAEModel.from_pretrained(foundation_folder)
    assert model.foundation.config.mask_ratio == 0.0
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.foundation.state_dict()[name], tensor), name


def test_grid_pooling_averages_patch_tokens_over_image_regions(tiny_config):
    torch.manual_seed(0)
    model = CRoPDForImageClassification(tiny_config(foundation_pooling="grid", foundation_pooling_grid_size=2)).eval()
    hidden = model.foundation.config.hidden_size
    assert model.classifier.in_features == 4 * hidden
    captured = {}
    model.foundation.register_forward_hook(lambda module, args, out: captured.update(tokens=out.last_hidden_state))
    x = images()
    features = model.foundation_features(x).view(len(x), hidden, 2, 2)
    # The tiny foundation model sees a 4x4 grid of patches, row by row; cell (0, 1) holds the top-right 2x2 patches.
    patches = captured["tokens"][:, 1:].view(len(x), 4, 4, hidden)
    torch.testing.assert_close(features[..., 0, 1], patches[:, 0:2, 2:4].mean(dim=(1, 2)))
    torch.testing.assert_close(features[..., 1, 0], patches[:, 2:4, 0:2].mean(dim=(1, 2)))
    model.config.foundation_pooling = "mean"
    torch.testing.assert_close(features.mean(dim=(2, 3)), model.foundation_features(x))


def test_grid_pooling_of_a_convolutional_foundation_model(tmp_path, tiny_config):
    torch.manual_seed(0)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    ResNetModel(config).save_pretrained(tmp_path)
    model = CRoPDForImageClassification(
        tiny_config(foundation_model_name_or_path=str(tmp_path), foundation_pooling="grid")
    ).eval()
    logits = model(images()).logits
    assert model.classifier.in_features == 16 * 4 and logits.shape == (4, 3)
    model.config.foundation_pooling_grid_size = 3  # the 16x16 input leaves a 2x2 feature map
    with pytest.raises(ValueError, match="foundation_pooling_grid_size=3 is larger .* use at most 2"):
        model.foundation_features(images())


def test_grid_pooling_refuses_a_token_sequence_that_is_not_a_square_grid():
    outputs = BaseModelOutput(last_hidden_state=torch.zeros(2, 1 + 5, 8))  # a CLS token and 5 patch tokens
    with pytest.raises(ValueError, match="needs a square grid of patch tokens .* returns 5 patch tokens"):
        pool_foundation_outputs(outputs, "grid", 2)
    assert pool_foundation_outputs(outputs, "mean").shape == (2, 8)


def test_two_forwards_of_one_image_give_identical_logits(model):
    x = images()
    assert torch.equal(model(x).logits, model(x).logits)
    # The order of the batch does not leak into the result either (no random patch shuffling).
    assert torch.allclose(model(x.flip(0)).logits.flip(0), model(x).logits, atol=1e-6)


def test_foundation_stays_frozen_and_in_eval_mode(model):
    model.train()
    assert model.training and model.purifier.training and model.classifier.training
    assert not model.foundation.training
    assert not any(module.training for module in model.foundation.modules())
    assert not any(parameter.requires_grad for parameter in model.foundation.parameters())


def test_optimizer_step_on_g_and_h_leaves_every_foundation_tensor_bit_identical(model):
    before = {name: tensor.clone() for name, tensor in model.foundation.state_dict().items()}
    purifier_before = {name: tensor.clone() for name, tensor in model.purifier.state_dict().items()}
    head_before = model.classifier.weight.clone()
    model.train()
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    output = model(images(), labels=torch.tensor([0, 1, 2, 0]))
    output.loss.backward()
    optimizer.step()
    for name, tensor in model.foundation.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert all(parameter.grad is None for parameter in model.foundation.parameters())
    assert not torch.equal(model.classifier.weight, head_before)
    changed = [
        name for name, tensor in model.purifier.state_dict().items() if not torch.equal(tensor, purifier_before[name])
    ]
    assert changed, "the purifier was not updated"


def test_gradients_reach_the_input_through_h_f_and_g(model):
    x = images().requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 0])
    model(x, labels=labels).loss.backward()
    through_purifier = x.grad.clone()
    assert torch.isfinite(through_purifier).all() and through_purifier.abs().sum() > 0
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0
        for p in model.purifier.encoder.embeddings.parameters()
        if p.requires_grad
    )

    x.grad = None
    model(x, labels=labels, purify=False).loss.backward()
    assert x.grad.abs().sum() > 0
    assert not torch.allclose(x.grad, through_purifier), "the purifier is not on the gradient path"


def test_purify_flag_and_outputs(model):
    x = images()
    purified = model(x)
    assert purified.purified_pixel_values.shape == x.shape
    assert purified.features.shape == (4, 32)
    plain = model(x, purify=False)
    assert plain.purified_pixel_values is None
    torch.testing.assert_close(plain.logits, model.classify(model.foundation_features(x)))
    torch.testing.assert_close(purified.logits, model.classify(model.foundation_features(model.purify(x))))


def test_identity_baseline_has_no_purifier(tiny_config):
    model = CRoPDForImageClassification(tiny_config(use_purifier=False)).eval()
    assert model.purifier is None
    assert not any(name.startswith("purifier.") for name in model.state_dict())
    assert model(images()).logits.shape == (4, 3)
    with pytest.raises(ValueError, match="use_purifier=False"):
        model(images(), purify=True)


@pytest.mark.parametrize(("mode", "size"), [("foundation", 32), ("purifier", 16)])
def test_contrastive_features_modes(tiny_config, mode, size):
    model = CRoPDForImageClassification(tiny_config(contrastive_features=mode))
    features = model.contrastive_features(images())
    assert features.shape == (4, size)
    features.sum().backward()
    assert model.purifier.encoder.embeddings.patch_embeddings.projection.weight.grad is not None


def test_rgb_model_in_front_of_rgb_foundation(tiny_config):
    model = CRoPDForImageClassification(tiny_config(num_channels=3)).eval()
    assert model(images(channels=3)).logits.shape == (4, 3)


@pytest.mark.parametrize(
    ("pixel_values", "message"),
    [
        (torch.rand(2, 3, 8, 8), "got 3 channels"),
        (torch.rand(1, 8, 8), "got rank 3"),
        (torch.rand(2, 1, 16, 16), "spatial size"),
        (torch.rand(2, 1, 8, 8) * 255, "values in"),
        (torch.full((2, 1, 8, 8), float("nan")), "NaN"),
        ((torch.rand(2, 1, 8, 8) * 255).to(torch.uint8), "dtype torch.uint8"),
        (torch.rand(0, 1, 8, 8), "empty batch"),
        ([[0.5]], "got list"),
    ],
)
def test_bad_inputs_raise_clear_errors(model, pixel_values, message):
    with pytest.raises(ValueError, match="pixel_values must be a float tensor of shape") as error:
        model(pixel_values)
    assert message in str(error.value)
    with pytest.raises(ValueError, match="pixel_values must be"):
        model.purifier(pixel_values)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (torch.tensor([0, 1, 5, 0]), r"in \[0, 3\)"),
        (torch.tensor([0, 1]), "shape"),
        (torch.tensor([0.0, 1.0, 1.0, 0.0]), "integer tensor"),
    ],
)
def test_bad_labels_raise_clear_errors(model, labels, message):
    with pytest.raises(ValueError, match=message):
        model(images(), labels=labels)


def test_head_is_a_parameter_free_batch_norm_then_a_linear_layer(tiny_config):
    model = CRoPDForImageClassification(tiny_config())
    assert not list(model.feature_norm.parameters())
    model.train()
    model(images(batch=8, seed=3))  # training mode: the running statistics follow the batches
    assert model.feature_norm.num_batches_tracked == 1
    model.eval()
    features = model(images()).features
    expected = (features - model.feature_norm.running_mean) / torch.sqrt(model.feature_norm.running_var + 1e-5)
    torch.testing.assert_close(model(images()).logits, model.classifier(expected))

    plain = CRoPDForImageClassification(tiny_config(head_batch_norm=False)).eval()
    output = plain(images())
    torch.testing.assert_close(output.logits, plain.classifier(output.features))


def test_residual_purifier_starts_close_to_the_identity(tiny_config):
    torch.manual_seed(0)
    purifier = CRoPDModel(tiny_config(purifier_residual=True)).eval()
    x = images()
    with torch.no_grad():
        # The decoder's last layer is initialized small: the correction is small, not zero.
        reconstruction = purifier(x).reconstruction
        assert (reconstruction - x).abs().max() < 0.1
        purifier.decoder.decoder_pred.weight.zero_()
        purifier.decoder.decoder_pred.bias.zero_()
        torch.testing.assert_close(purifier(x).reconstruction, x.clamp(1e-3, 1 - 1e-3))
    plain = CRoPDModel(tiny_config()).eval()
    assert (plain(x).reconstruction - x).abs().max() > 0.1


def test_conv_purifier_maps_images_to_images_and_passes_gradients(tiny_config, tmp_path):
    config = tiny_config(purifier_architecture="conv", conv_channels=[4, 8])
    model = CRoPDForImageClassification(config).eval()
    assert not hasattr(model.purifier, "encoder"), "a conv purifier carries no ViT"
    x = images().requires_grad_(True)
    output = model.purifier(x)
    assert output.reconstruction.shape == x.shape
    assert output.reconstruction.min() >= 0.0 and output.reconstruction.max() <= 1.0
    assert output.last_hidden_state.shape == (4, 4 * 4, 8)  # 8x8 halved once, 8 channels
    assert output.pooled_latent.shape == (4, 8)
    # He initialization: the first layer's weights are not the ViT default N(0, 0.02).
    assert model.purifier.autoencoder.encoder[0].weight.std() > 0.1

    # The output layer starts at zero: a flat grey image, no saturated sigmoid.
    torch.testing.assert_close(output.reconstruction, torch.full_like(x, 0.5))

    with torch.no_grad():  # as after some training: the output now depends on the input
        model.purifier.autoencoder.decoder[-1].weight.normal_()
    model(x, labels=torch.tensor([0, 1, 2, 0])).loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert model.purifier.autoencoder.decoder[-1].weight.grad.abs().sum() > 0

    model.save_pretrained(tmp_path)
    loaded = CRoPDForImageClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(images()).logits, model(images()).logits, rtol=0, atol=0)


def test_residual_conv_purifier_starts_as_the_identity(tiny_config):
    purifier = CRoPDModel(tiny_config(purifier_architecture="conv", conv_channels=[4, 8], purifier_residual=True))
    x = images().clamp(0.01, 0.99)
    torch.testing.assert_close(purifier(x).reconstruction, x)


def test_checkpointing_the_frozen_foundation_saves_activations_and_changes_nothing(tiny_config):
    torch.manual_seed(0)
    model = CRoPDForImageClassification(tiny_config())
    x, labels = images(), torch.tensor([0, 1, 2, 0])

    def input_gradient_and_saved_numbers() -> tuple[torch.Tensor, int]:
        model.train()
        saved: list[int] = []
        pixels = x.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            loss = model(pixels, labels=labels).loss
        loss.backward()
        return pixels.grad, sum(saved)

    plain, plain_saved = input_gradient_and_saved_numbers()
    model.foundation.activation_checkpointing_enable({"use_reentrant": False})
    checkpointed, checkpointed_saved = input_gradient_and_saved_numbers()
    assert checkpointed_saved < plain_saved, "f's layers were not checkpointed"
    torch.testing.assert_close(checkpointed, plain)
    # Only the layers' checkpointing flag moved: f and every leaf module (dropout) stay in eval mode.
    assert not model.foundation.training
    assert not any(module.training for module in model.foundation.modules() if not list(module.children()))
