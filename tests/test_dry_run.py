"""`train.py --dry_run`: the paper presets end to end offline, with a random scaled-down f and synthetic data."""

import json
import os
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from datasets import load_dataset
from huggingface_hub import ModelCard
from transformers import AutoConfig, AutoModelForImageClassification, ViTMAEModel

import cropd_hf  # noqa: F401  (registers the Auto classes)
from cropd_hf.data import (
    CIFAR10_NAMES,
    CIFAR100_FINE_NAMES,
    DIGIT_NAMES,
    hub_dataset_features,
    label_names,
    load_image_dataset,
    write_synthetic_hub_dataset,
)
from cropd_hf.training.dry_run import (
    SCALED_ENCODER,
    dry_run_settings,
    scaled_foundation_config,
    write_random_foundation,
)
from cropd_hf.training.run_config import CONFIG_DIR, RunConfigError, load_run_config
from cropd_hf.training.train import build_model

REPO = Path(__file__).resolve().parents[1]
PRESETS = {"cifar10": CIFAR10_NAMES, "cifar100": CIFAR100_FINE_NAMES, "svhn": DIGIT_NAMES}
# The dry run is a smoke test of the real code path: it must stay cheap on 2 busy cores.
TIME_LIMIT_SECONDS = 100


def preset(dataset: str) -> Path:
    return CONFIG_DIR / f"{dataset}-vit-mae-large.yaml"


@pytest.mark.slow
@pytest.mark.training
def test_the_cifar10_preset_runs_end_to_end_offline_and_says_it_is_a_dry_run(tmp_path):
    output = tmp_path / "out"
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "training/train.py", "--config", str(preset("cifar10")), "--dry_run"]
    start = time.monotonic()
    result = subprocess.run(
        [*command, "--output_dir", str(output)],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=2 * TIME_LIMIT_SECONDS,
    )
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    assert seconds < TIME_LIMIT_SECONDS, f"the dry run took {seconds:.0f} s"
    assert "purifier epoch 1/1" in result.stderr and "head epoch 1/1" in result.stderr
    assert not output.with_name("out.work").exists()

    metrics = json.loads((output / "metrics.json").read_text())
    assert "DRY RUN" in metrics["dry_run"]["warning"] and "synthetic" in metrics["dry_run"]["data"]
    assert "facebook/vit-mae-large" in metrics["dry_run"]["foundation"]
    assert metrics["num_samples"] == 8 and metrics["epsilon"] == pytest.approx(8 / 255)
    assert set(metrics["attacks"]) == {"fgsm", "pgd10", "pgd20"}
    assert 0 <= metrics["worst_case"] <= metrics["clean"] <= 1

    card = ModelCard.load(output / "README.md")
    assert card.text.lstrip().startswith("> **DRY RUN: random foundation model, synthetic data")
    assert "dry-run" in card.data.tags
    assert not card.data.eval_results, "the Hub must not list a dry run's numbers as results"

    # The preset's model: CIFAR-10's labels, 3x32x32 images, the paper's purifier, f a scaled-down ViT-MAE that
    # travels in the folder (random weights, the large model's image and patch size).
    config = json.loads((output / "config.json").read_text())
    assert list(config["id2label"].values()) == CIFAR10_NAMES
    assert (config["image_size"], config["num_channels"], config["patch_size"]) == (32, 3, 4)
    assert config["foundation_model_name_or_path"] == "./foundation"
    assert config["foundation_image_size"] == 224 and config["foundation_image_mean"] == [0.485, 0.456, 0.406]
    foundation = AutoConfig.from_pretrained(output / "foundation")
    assert foundation.model_type == "vit_mae"
    assert (foundation.image_size, foundation.patch_size) == (224, 16)
    assert {key: getattr(foundation, key) for key in SCALED_ENCODER} == SCALED_ENCODER

    model = AutoModelForImageClassification.from_pretrained(output).eval()
    assert isinstance(model.foundation, ViTMAEModel)
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 32, 32)).logits
    assert logits.shape == (2, 10)


@pytest.mark.parametrize("dataset", list(PRESETS))
def test_every_paper_preset_loads_and_resolves_for_a_dry_run(dataset, tmp_path):
    """Each preset's run file, its dry-run settings, its foundation built locally and its synthetic data with the
    Hub's features, all the way to the model train.py builds."""
    run = dry_run_settings(load_run_config(preset(dataset)), Namespace(config=preset(dataset), push_to_hub=False))
    assert run.output_dir == f"outputs/{dataset}-vit-mae-large-dry-run"
    assert (run.purifier_epochs, run.head_epochs, run.batch_size, run.max_train_samples) == (1, 1, 8, 16)
    assert run.eval_epsilon == pytest.approx(8 / 255) and run.eval_pgd_steps == [10, 20]

    config = scaled_foundation_config(run.model["foundation_model_name_or_path"], None)
    assert config.model_type == "vit_mae" and (config.image_size, config.patch_size) == (224, 16)
    assert config.num_hidden_layers < 24 and config.hidden_size < 1024
    write_random_foundation(config, "facebook/vit-mae-large", tmp_path / "foundation", seed=0)

    data = write_synthetic_hub_dataset(dataset, tmp_path / "data", num_train=12, num_test=4)
    assert load_dataset(str(data))["train"].features == hub_dataset_features(dataset)
    splits = load_image_dataset(dataset, data_dir=data)
    assert {name: len(split) for name, split in splits.items()} == {"train": 12, "test": 4}
    assert splits["train"].column_names == ["image", "label"]
    assert splits["test"][0]["image"].size == (32, 32) and splits["test"][0]["image"].mode == "RGB"
    assert label_names(splits["train"]) == PRESETS[dataset]

    run.model["foundation_model_name_or_path"] = str(tmp_path / "foundation")
    model = build_model(run, label_names(splits["train"]))
    assert model.config.num_labels == len(PRESETS[dataset]) and model.config.foundation_image_size == 224


def test_what_a_dry_run_cannot_do_is_refused_before_any_work():
    embedded = CONFIG_DIR / "embedded.yaml"
    with pytest.raises(RunConfigError, match="dataset 'embedded-mnist' is already offline"):
        dry_run_settings(load_run_config(embedded), Namespace(config=embedded, push_to_hub=False))
    cifar10 = preset("cifar10")
    with pytest.raises(RunConfigError, match="--push_to_hub refused with --dry_run"):
        dry_run_settings(load_run_config(cifar10), Namespace(config=cifar10, push_to_hub=True))
    # A Hub foundation model the dry run does not know is refused, never downloaded.
    with pytest.raises(RunConfigError, match=r"'org/unknown-vit' is not a shape the dry run knows"):
        scaled_foundation_config("org/unknown-vit", None)
    with pytest.raises(RunConfigError, match="at revision 'v2'"):
        scaled_foundation_config("facebook/vit-mae-large", "v2")
    with pytest.raises(ValueError, match=r"data_dir='elsewhere' is invalid for the dataset 'embedded-mnist'"):
        load_image_dataset("embedded-mnist", data_dir="elsewhere")
