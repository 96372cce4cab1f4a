import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModel

from cropd_hf import CRoPDConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.training
def test_pretraining_saves_a_foundation_model_that_cropd_can_reference(tmp_path):
    output = tmp_path / "foundation"
    command = [
        sys.executable, str(REPO / "training" / "pretrain_foundation.py"), "--output_dir", str(output),
        "--epochs", "1", "--warmup_epochs", "1", "--hidden_size", "16", "--num_hidden_layers", "1",
        "--num_attention_heads", "2", "--batch_size", "256", "--validation_size", "500",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "linear_probe.json",
        "pretraining.json",
    } <= {path.name for path in output.iterdir()}
    probe = json.loads((output / "linear_probe.json").read_text())
    assert (
        set(probe["linear_probe_test_accuracy"])
        == set(probe["linear_probe_validation_accuracy"])
        == {
            "mean",
            "cls",
            "grid2",
            "grid4",
        }
    )
    assert (probe["train_images"], probe["validation_images"], probe["test_images"]) == (3500, 500, 1000)
    assert json.loads((output / "pretraining.json").read_text())["train_images"] == 3500, "validation held out"

    encoder = AutoModel.from_pretrained(output)
    assert type(encoder).__name__ == "ViTMAEModel" and encoder.config.mask_ratio == 0.0
    assert encoder.embeddings.position_embeddings.abs().sum() > 0
    config = CRoPDConfig.for_foundation(str(output), image_size=28, num_channels=1)
    assert config.foundation_image_size == 32 and config.foundation_num_channels == 1
    assert len(config.foundation_image_mean) == 1 and 0.05 < config.foundation_image_mean[0] < 0.3


@pytest.mark.slow
def test_a_validation_split_larger_than_the_training_digits_is_refused_clearly():
    command = [sys.executable, str(REPO / "training" / "pretrain_foundation.py"), "--validation_size", "4000"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "--validation_size 4000" in result.stderr and "accepted: 0 or fewer than the 4000" in result.stderr
    assert "Traceback" not in result.stderr
