"""The per-epoch accelerate states without the frozen foundation model f.

`accelerator.save_state` saves every tensor of the prepared training objective, and most of them are f's (almost all
the bytes for ViT-MAE large), which never change: f is frozen and is loaded again from
`config.foundation_model_name_or_path` whenever the model is built. A save-state pre-hook drops f's
tensors from what accelerate writes; a load-state pre-hook loads the rest itself (safetensors, no pickle), checks
that exactly f's tensors are absent, and takes the model off accelerate's list so that accelerate does not load it
strictly a second time.
"""

from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from cropd_hf.training.run_config import RunConfigError

# accelerate's names for the weight files of the prepared models in a state folder.
STATE_WEIGHTS = "model.safetensors"


def foundation_prefix(wrapped: torch.nn.Module, foundation: torch.nn.Module) -> str | None:
    """The state-dict prefix of `foundation` inside `wrapped` (which DDP may have wrapped again), or None."""
    for name, module in wrapped.named_modules():
        if module is foundation:
            return f"{name}."
    return None


def state_weights_file(folder: Path, index: int) -> Path:
    # accelerate's naming: model.safetensors, then model_1.safetensors, ...
    return folder / (STATE_WEIGHTS if index == 0 else STATE_WEIGHTS.replace(".", f"_{index}."))


def leave_frozen_foundation_out(
    accelerator: Accelerator, prepared: torch.nn.Module, foundation: torch.nn.Module
) -> tuple[int, int]:
    """Make `accelerator.save_state` / `load_state` leave the frozen module `foundation` out of every prepared
    model's weights (see the module docstring); the number of `prepared`'s tensors left out and kept is returned."""

    def drop_foundation(models: list[torch.nn.Module], weights: list[dict[str, Any]], output_dir: str) -> None:
        for model, state in zip(models, weights, strict=True):
            prefix = foundation_prefix(model, foundation)
            if prefix is not None:
                for key in [key for key in state if key.startswith(prefix)]:
                    del state[key]

    def load_without_foundation(models: list[torch.nn.Module], input_dir: str) -> None:
        for index, model in enumerate(models):
            prefix = foundation_prefix(model, foundation)

            def is_foundation(key: str, prefix: str | None = prefix) -> bool:
                return prefix is not None and key.startswith(prefix)

            path = state_weights_file(Path(input_dir), index)
            if not path.is_file():
                raise RunConfigError(f"--resume_from_checkpoint {input_dir}: {path.name} is missing.")
            # A state saved before f was left out still holds f's tensors: the frozen weights, skipped here too.
            state = {key: tensor for key, tensor in load_file(path).items() if not is_foundation(key)}
            missing, unexpected = model.load_state_dict(state, strict=False)
            wrong = unexpected + [key for key in missing if not is_foundation(key)]
            if wrong:
                raise RunConfigError(
                    f"--resume_from_checkpoint {input_dir}: {path.name} does not fit the model "
                    f"({len(wrong)} tensors differ, e.g. {wrong[0]!r}); the run file's model section changed since "
                    "that checkpoint."
                )
        models.clear()  # loaded above

    accelerator.register_save_state_pre_hook(drop_foundation)
    accelerator.register_load_state_pre_hook(load_without_foundation)
    prefix = foundation_prefix(prepared, foundation)
    keys = list(prepared.state_dict())
    left_out = sum(prefix is not None and key.startswith(prefix) for key in keys)
    return left_out, len(keys) - left_out
