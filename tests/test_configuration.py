import pytest

from cropd_hf import CRoPDConfig


def test_defaults_are_the_paper_setting():
    config = CRoPDConfig()
    assert config.model_type == "cropd"
    assert config.foundation_model_name_or_path == "facebook/vit-mae-large"
    assert config.contrastive_features == "foundation"
    assert config.train_epsilon == pytest.approx(8 / 255)
    assert config.effective_train_step_size == pytest.approx(1.25 * 8 / 255)


def test_round_trip_through_json(tmp_path):
    config = CRoPDConfig(contrastive_weight=10, contrastive_features="purifier", num_labels=4)
    config.save_pretrained(tmp_path)
    loaded = CRoPDConfig.from_pretrained(tmp_path)
    assert loaded.contrastive_weight == 10
    assert loaded.contrastive_features == "purifier"
    assert loaded.num_labels == 4
    assert loaded.foundation_image_mean == config.foundation_image_mean


@pytest.mark.parametrize(
    ("field", "value", "accepted"),
    [
        ("contrastive_features", "pixels", "'foundation', 'purifier'"),
        ("contrastive_weight", -1.0, ">= 0"),
        ("contrastive_weight", "1", ">= 0"),
        ("contrastive_temperature", 0.0, "> 0"),
        ("train_epsilon", 1.5, "[0, 1]"),
        ("train_step_size", -0.1, "> 0"),
        ("train_attack_steps", 0, "positive integer"),
        ("train_attack_steps", 2.5, "positive integer"),
        ("patch_size", 5, "divisor of image_size=32"),
        ("num_attention_heads", 5, "divisor of hidden_size=192"),
        ("image_size", 0, "positive integer"),
        ("hidden_size", 19.5, "positive integer"),
        ("use_purifier", "yes", "True or False"),
        ("purifier_pooling", "max", "'cls', 'mean'"),
        ("foundation_pooling", "max", "'cls', 'mean', 'pooler', 'grid'"),
        ("foundation_pooling_grid_size", 0, "positive integer"),
        ("foundation_model_name_or_path", "", "Hub id or a local folder"),
        ("foundation_image_std", [0.2, 0.0, 0.2], "positive"),
        ("foundation_image_mean", [0.5, 0.5], "3 numbers"),
        ("num_channels", 2, "1 (repeated"),
        ("hidden_dropout_prob", 1.0, "[0, 1)"),
        ("purifier_architecture", "unet", "'vit', 'conv'"),
        ("conv_channels", [], "non-empty list of positive integers"),
        ("conv_channels", [32, 0], "non-empty list of positive integers"),
    ],
)
def test_invalid_values_name_the_field_the_value_and_what_is_accepted(field, value, accepted):
    with pytest.raises(ValueError) as error:
        CRoPDConfig(**{field: value})
    message = str(error.value)
    assert f"CRoPDConfig.{field}=" in message
    assert repr(value) in message
    assert accepted in message


def test_conv_purifier_needs_an_image_size_it_can_halve():
    CRoPDConfig(purifier_architecture="conv", image_size=28, conv_channels=[8, 16, 16])
    with pytest.raises(
        ValueError, match=r"CRoPDConfig.conv_channels=.*divisible by 2 \*\* \(len\(conv_channels\) - 1\) = 8"
    ):
        CRoPDConfig(purifier_architecture="conv", image_size=28, conv_channels=[8, 16, 16, 16])


def test_a_field_set_after_construction_is_checked_like_an_argument():
    config = CRoPDConfig()
    with pytest.raises(ValueError, match=r"CRoPDConfig\.train_epsilon=2\.0 is invalid; accepted: a number in \[0, 1\]"):
        config.train_epsilon = 2.0
    with pytest.raises(ValueError, match=r"CRoPDConfig\.foundation_pooling='max' is invalid; accepted: one of \["):
        config.foundation_pooling = "max"
    assert (config.train_epsilon, config.foundation_pooling) == (pytest.approx(8 / 255), "mean")
    config.layer_norm_eps, config.foundation_image_std = 1, [1, 1, 1]  # integers are numbers
    assert config.layer_norm_eps == 1


def test_save_pretrained_refuses_fields_that_no_longer_fit_together(tmp_path):
    config = CRoPDConfig()
    config.patch_size = 5  # a positive integer, but no divisor of image_size
    with pytest.raises(ValueError, match=r"CRoPDConfig\.patch_size=5 is invalid; accepted: a divisor of image_size=32"):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()
