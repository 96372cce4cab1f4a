"""`train.py --dry_run`: a run file end to end in a minute, offline, with nothing taken from the Hub.

The run's own code path, scaled down: the foundation model is built from its config (the same class, input size,
patch size and pooling) with fewer and narrower layers and random weights; a Hub dataset is replaced by synthetic
images with exactly the Hub's features, read by the same `load_dataset` call; both stages run a few steps and the
evaluator attacks a few images. The output folder (`<output_dir>-dry-run` by default), its metrics.json and its model
card say that it is a dry run, so that nobody mistakes its numbers for results.
"""

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from huggingface_hub import ModelCard
from transformers import AutoConfig, AutoModel, PreTrainedConfig, ViTImageProcessorPil, ViTMAEConfig
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from cropd_hf import CRoPDConfig, initialize_vit_mae_embeddings
from cropd_hf.data import HUB_DATASETS, write_synthetic_hub_dataset
from cropd_hf.training.run_config import RunConfig, RunConfigError

# The foundation models the paper presets name, by the shape of their config.json (the rest is ViTMAEConfig's
# default, the base model's): the dry run builds them locally and never asks the Hub.
KNOWN_FOUNDATIONS: dict[str, dict[str, int]] = {
    "facebook/vit-mae-base": {},
    "facebook/vit-mae-large": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
    },
}
# The scaled-down foundation: the encoder fields every ViT-style config has, then the MAE decoder's if it has one.
SCALED_ENCODER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
SCALED_DECODER = {
    "decoder_hidden_size": 16,
    "decoder_num_hidden_layers": 1,
    "decoder_num_attention_heads": 2,
    "decoder_intermediate_size": 32,
}
# A few steps of each stage (2 per epoch, one epoch each) and the evaluator on a few images.
DRY_RUN_SETTINGS = {"batch_size": 8, "max_train_samples": 16, "eval_num_samples": 8, "eval_batch_size": 8}
SYNTHETIC_TRAIN_IMAGES = 32
SYNTHETIC_TEST_IMAGES = 16
DRY_RUN_VALIDATION_SIZE = 8
OUTPUT_SUFFIX = "-dry-run"
CARD_TAG = "dry-run"


def dry_run_settings(run: RunConfig, args: argparse.Namespace) -> RunConfig:
    """The run file's settings scaled down to a dry run: one epoch of each stage it has, on a few images, into an
    output folder whose name says it is a dry run. Refuses what a dry run cannot do, before any work."""
    if args.push_to_hub:
        raise RunConfigError(
            "--push_to_hub refused with --dry_run: a dry run's model has a random foundation model and saw synthetic "
            "data only; it is never uploaded."
        )
    if run.dataset not in HUB_DATASETS:
        raise RunConfigError(
            f"{args.config}: --dry_run stands in for the Hub (its dataset and foundation model), but dataset "
            f"{run.dataset!r} is already offline; accepted with --dry_run: a run file on one of {list(HUB_DATASETS)} "
            "(run this one with a small max_train_samples instead)."
        )
    epochs = {key: min(getattr(run, key), 1) for key in ("reconstruction_epochs", "purifier_epochs", "head_epochs")}
    return dataclasses.replace(
        run,
        **DRY_RUN_SETTINGS,
        **epochs,
        validation_size=min(run.validation_size, DRY_RUN_VALIDATION_SIZE),
        output_dir=(run.output_dir or f"outputs/{args.config.stem}") + OUTPUT_SUFFIX,
        report_to="none",
        model=dict(run.model),
    )


@dataclasses.dataclass(frozen=True)
class DryRun:
    """What a dry run put in place of the Hub, for the run and for its report."""

    foundation: str  # what the run file names (a Hub id or a folder)
    foundation_folder: Path  # the random, scaled-down stand-in
    foundation_shape: str
    data_dir: Path
    dataset: str

    @classmethod
    def prepare(cls, run: RunConfig, work_dir: Path, accelerator: Accelerator) -> "DryRun":
        """Write the stand-ins under `work_dir` (the main process, once) and point the run's model at the random
        foundation model."""
        foundation = run.model.get("foundation_model_name_or_path", CRoPDConfig().foundation_model_name_or_path)
        revision = run.model.get("foundation_model_revision")
        config = scaled_foundation_config(foundation, revision)
        dry_run = cls(
            foundation=foundation,
            foundation_folder=work_dir / "dry-run" / "foundation",
            foundation_shape=(
                f"{config.model_type}, {config.num_hidden_layers} layers of width {config.hidden_size}, "
                f"image size {getattr(config, 'image_size', '?')}, patch size {getattr(config, 'patch_size', '?')}"
            ),
            data_dir=work_dir / "dry-run" / "data",
            dataset=run.dataset,
        )
        with accelerator.main_process_first():
            if accelerator.is_main_process:
                write_random_foundation(config, foundation, dry_run.foundation_folder, seed=run.seed)
                write_synthetic_hub_dataset(
                    run.dataset, dry_run.data_dir, SYNTHETIC_TRAIN_IMAGES, SYNTHETIC_TEST_IMAGES, seed=run.seed
                )
        run.model["foundation_model_name_or_path"] = str(dry_run.foundation_folder)
        run.model.pop("foundation_model_revision", None)
        return dry_run

    def note(self) -> dict[str, Any]:
        """What metrics.json says about the dry run."""
        return {
            "warning": "DRY RUN: random foundation model, synthetic data; these numbers mean nothing.",
            "foundation": f"random weights, scaled down from {self.foundation}: {self.foundation_shape}",
            "data": f"{SYNTHETIC_TRAIN_IMAGES} train / {SYNTHETIC_TEST_IMAGES} test synthetic random images with "
            f"the features of the Hub dataset {self.dataset!r}",
        }

    def mark(self, folder: Path) -> None:
        """Say in `folder`'s metrics.json and model card that this is a dry run. The card keeps its tables under a
        warning, but loses its model-index: the Hub must not list these numbers as evaluation results."""
        metrics_path = folder / "metrics.json"
        metrics = json.loads(metrics_path.read_text())
        metrics_path.write_text(json.dumps({"dry_run": self.note(), **metrics}, indent=2) + "\n")
        card = ModelCard.load(folder / "README.md")
        card.data.tags = [*(card.data.tags or []), CARD_TAG]
        card.data.eval_results = None
        card.data.model_name = None
        card.data.base_model = None
        note = self.note()
        card.text = (
            f"\n> **{note['warning']}** This folder was written by `train.py --dry_run`, which runs the run file's "
            f"code path offline in a minute. The foundation model `f` has {note['foundation']}; the data are "
            f"{note['data']}. Train without `--dry_run` for a real model.\n" + card.text
        )
        card.save(folder / "README.md")


def scaled_foundation_config(foundation: str, revision: str | None) -> PreTrainedConfig:
    """The foundation model's config with fewer, narrower layers: its class, input size and patch size kept. A Hub
    id is never looked up: it must be one of `KNOWN_FOUNDATIONS`; a local folder is read."""
    if os.path.isdir(foundation):
        config = AutoConfig.from_pretrained(foundation)
    elif foundation in KNOWN_FOUNDATIONS and revision is None:
        config = ViTMAEConfig(**KNOWN_FOUNDATIONS[foundation])
    else:
        raise RunConfigError(
            f"--dry_run: model.foundation_model_name_or_path={foundation!r}"
            + (f" at revision {revision!r}" if revision is not None else "")
            + " is not a shape the dry run knows, and it never downloads one; accepted: a local folder with "
            f"config.json, or one of {list(KNOWN_FOUNDATIONS)} without a revision."
        )
    missing = [key for key in SCALED_ENCODER if not isinstance(getattr(config, key, None), int)]
    if missing:
        raise RunConfigError(
            f"--dry_run: the foundation model {foundation!r} ({type(config).__name__}) has no {', '.join(missing)} "
            "to scale down; accepted: a ViT-style foundation model (hidden_size, num_hidden_layers, "
            "num_attention_heads, intermediate_size)."
        )
    scaled = {**SCALED_ENCODER, **{key: value for key, value in SCALED_DECODER.items() if hasattr(config, key)}}
    for key, value in scaled.items():
        setattr(config, key, value)
    return config


def write_random_foundation(config: PreTrainedConfig, foundation: str, folder: Path, seed: int) -> None:
    """A randomly initialized foundation model of `config`, saved to `folder` with a preprocessor_config.json: the
    original's when it is a local folder, else the ViT-MAE checkpoints' (ImageNet mean and std at its image size)."""
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    initialize_vit_mae_embeddings(model)  # transformers leaves ViT-MAE's position table at zero otherwise
    model.save_pretrained(folder)
    original = Path(foundation) / "preprocessor_config.json"
    if original.is_file():
        (folder / original.name).write_bytes(original.read_bytes())
    else:
        size = {"height": config.image_size, "width": config.image_size}
        processor = ViTImageProcessorPil(size=size, image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD)
        processor.save_pretrained(folder)
