"""accelerate in training/train.py: gradient accumulation and mixed precision honoured and recorded, and the
per-epoch states without the frozen foundation model f."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate import Accelerator
from conftest import TINY_PURIFIER
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

from cropd_hf.training.frozen_state import leave_frozen_foundation_out
from cropd_hf.training.run_config import RunConfigError

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "training" / "train.py"


class Chain(torch.nn.Module):
    """A frozen part and a trained part, as the training objective holds f and g / h."""

    def __init__(self) -> None:
        super().__init__()
        self.foundation = torch.nn.Linear(4, 4).requires_grad_(False)
        self.head = torch.nn.Linear(4, 2)


def test_the_states_leave_the_frozen_module_out_and_resume_the_rest_exactly(tmp_path):
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    chain = Chain()
    prepared = accelerator.prepare(chain)
    assert leave_frozen_foundation_out(accelerator, prepared, chain.foundation) == (2, 2)
    accelerator.save_state(str(tmp_path / "state"))
    saved = load_file(tmp_path / "state" / "model.safetensors")
    assert sorted(saved) == ["head.bias", "head.weight"]

    head = {name: tensor.clone() for name, tensor in chain.head.state_dict().items()}
    foundation = {name: tensor.clone() for name, tensor in chain.foundation.state_dict().items()}
    with torch.no_grad():
        for parameter in chain.parameters():
            parameter.add_(1.0)
    accelerator.load_state(str(tmp_path / "state"))
    for name, tensor in head.items():
        assert torch.equal(chain.head.state_dict()[name], tensor), name
    # f is not in the state: the load leaves it as the model has it (built again from its own files on resume).
    for name, tensor in foundation.items():
        assert torch.equal(chain.foundation.state_dict()[name], tensor + 1.0), name

    # A state saved before f was left out still resumes; one that lacks a trained tensor is refused.
    save_file({**saved, "foundation.weight": torch.zeros(4, 4)}, tmp_path / "state" / "model.safetensors")
    accelerator.load_state(str(tmp_path / "state"))
    save_file({"head.weight": saved["head.weight"]}, tmp_path / "state" / "model.safetensors")
    with pytest.raises(RunConfigError, match=r"does not fit the model \(1 tensors differ, e.g. 'head.bias'\)"):
        accelerator.load_state(str(tmp_path / "state"))


@pytest.mark.slow
@pytest.mark.training
def test_accumulation_and_precision_are_honoured_recorded_and_the_states_hold_no_foundation(
    foundation_folder, tmp_path
):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "base": str(REPO / "training" / "configs" / "embedded.yaml"),
                "purifier_epochs": 1,
                "head_epochs": 1,
                "batch_size": 64,
                "max_train_samples": 256,  # 4 batches an epoch
                "eval_num_samples": 16,
                "eval_batch_size": 8,
                "eval_pgd_steps": [1],
                "model": {
                    "foundation_model_name_or_path": foundation_folder,
                    **TINY_PURIFIER,
                },
            }
        )
    )
    output = tmp_path / "out"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_MIXED_PRECISION": "bf16",  # what `accelerate launch --mixed_precision bf16` sets
    }
    completed = subprocess.run(
        [sys.executable, str(TRAIN), "--config", str(config), "--output_dir", str(output), "--keep_checkpoints",
         "--gradient_accumulation_steps", "3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]

    state = tmp_path / "out.work" / "checkpoints" / "purifier-epoch-001"
    weights = load_file(state / "model.safetensors")
    assert weights and not [name for name in weights if ".foundation." in name]
    assert "leave out the frozen foundation model f (" in completed.stderr
    left_out = int(completed.stderr.split("leave out the frozen foundation model f (")[1].split(" of ")[0])
    assert left_out > len(weights) > 0
    # 4 batches, accumulated 3 at a time: an optimizer step after batch 3, and one at the end of the epoch.
    steps = math.ceil(4 / 3)
    optimizer = torch.load(state / "optimizer.bin", weights_only=True)
    assert {int(entry["step"]) for entry in optimizer["state"].values()} == {steps}
    assert torch.load(state / "scheduler.bin", weights_only=True)["last_epoch"] == steps
    progress = json.loads((state / "training_progress.json").read_text())
    assert progress["settings"]["gradient_accumulation_steps"] == 3
    assert progress["settings"]["mixed_precision"] == "bf16"

    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["training"] == {
        "mixed_precision": "bf16",
        "gradient_accumulation_steps": 3,
        "num_processes": 1,
        "effective_batch_size": 192,
    }
    card = ModelCard.load(output / "README.md").text
    assert "| mixed precision | bf16 |" in card and "| gradient accumulation steps | 3 |" in card
    command = f"accelerate launch --mixed_precision bf16 training/train.py --config {config} "
    assert f"Reproduce with `{command}--gradient_accumulation_steps 3`." in card


@pytest.mark.slow
def test_a_bad_accumulation_count_is_refused_naming_the_argument():
    completed = subprocess.run(
        [sys.executable, str(TRAIN), "--gradient_accumulation_steps", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 2
    assert "--gradient_accumulation_steps: invalid value '0'; accepted: an integer >= 1" in completed.stderr
