"""The per-epoch checkpoints of a training run: accelerate's state plus `training_progress.json` (stages done,
settings, sha256 of the weight files), saved under a temporary name and renamed, checked before resuming."""

import json
import pickle
import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import load as accelerate_load
from accelerate.utils.constants import OPTIMIZER_NAME, RNG_STATE_NAME, SCALER_NAME, SCHEDULER_NAME

from cropd_hf.files import replace_folder, verify_weight_checksums, weight_checksums, write_text_atomically
from cropd_hf.training.run_config import RunConfigError

logger = get_logger(__name__)
# reconstruction: g alone learns to copy x (a warm start); purifier: CRoPD's stage 1; head: stage 2.
STAGES = ("reconstruction", "purifier", "head")


class TrainingProgress:
    """Which stage and epoch the run has finished, the settings it runs with and the sha256 of the state's weight
    files; stored as JSON next to accelerate's state (never as a pickle, which would run code on resume)."""

    FILE = "training_progress.json"

    def __init__(self, settings: dict[str, Any]) -> None:
        self.epochs_done = dict.fromkeys(STAGES, 0)
        self.settings = settings

    def save(self, folder: Path) -> None:
        state = {"epochs_done": self.epochs_done, "settings": self.settings, "weights_sha256": weight_checksums(folder)}
        write_text_atomically(folder / self.FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")

    def load(self, folder: Path, allow_changed_settings: bool) -> list[str]:
        """Restore the counters from `folder` after checking its weight files against their recorded sha256; the
        settings that differ from the saved ones are returned, and refused unless `allow_changed_settings`."""
        path = folder / self.FILE
        try:
            state = json.loads(path.read_text())
            epochs_done = {stage: int(state["epochs_done"][stage]) for stage in STAGES}
            saved = dict(state["settings"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise RunConfigError(
                f"--resume_from_checkpoint {folder}: {path.name} is missing or unreadable ({error}); it is not a "
                "checkpoint written by this train.py. Start the run again without --resume_from_checkpoint."
            ) from None
        if "weights_sha256" not in state:  # saved by a train.py that recorded no checksums
            logger.warning(f"{path} records no weight checksums: the weights of {folder} are resumed unchecked")
        else:
            try:
                verify_weight_checksums(folder, state["weights_sha256"])
            except ValueError as error:
                raise RunConfigError(
                    f"--resume_from_checkpoint {folder}: refused, {error}. The state was damaged after it was saved; "
                    "resume from an earlier checkpoint, or start the run again without --resume_from_checkpoint."
                ) from None
        changed = sorted(key for key in {*saved, *self.settings} if saved.get(key) != self.settings.get(key))
        if changed and not allow_changed_settings:
            differences = "; ".join(f"{key}: {saved.get(key)!r} -> {self.settings.get(key)!r}" for key in changed)
            raise RunConfigError(
                f"--resume_from_checkpoint {folder}: the run file changed since that checkpoint ({differences}). "
                "Resume with the same settings, or pass --allow_changed_settings to continue anyway (recorded "
                "in metrics.json and the model card)."
            )
        self.epochs_done = epochs_done
        return changed


def check_checkpoint_files(folder: Path) -> None:
    """Refuse a checkpoint folder with anything that accelerate would unpickle without restrictions."""
    if not folder.is_dir():
        raise RunConfigError(f"--resume_from_checkpoint {folder}: no such checkpoint folder.")
    # accelerate loads custom_checkpoint_*.pkl with weights_only=False; this script never writes one.
    unsafe = sorted(path.name for path in folder.iterdir() if path.name.startswith("custom_checkpoint_"))
    if unsafe:
        raise RunConfigError(
            f"--resume_from_checkpoint {folder}: refused, it holds {', '.join(unsafe)}, a pickle that would run "
            "code when loaded. This train.py never writes such a file; do not resume from a folder you did not make."
        )


def resume_state(
    accelerator: Accelerator,
    folder: Path,
    progress: TrainingProgress,
    allow_changed_settings: bool,
    optimizers: Iterable[Any],
    schedulers: Iterable[Any],
) -> list[str]:
    """Load the per-epoch state `folder` into the prepared run (`optimizers` and `schedulers` in the order they were
    prepared); the settings that changed since it was saved are returned.

    Every file that `accelerator.load_state` reads is checked first, with the same loader and torch's restricted
    unpickler (tensors, numbers and containers only; nothing here unpickles with weights_only=False): a file that is
    missing, cannot be loaded that way, or does not hold what this train.py writes is refused naming it, before any
    training step (accelerate would end in a traceback, or skip the random states silently)."""
    check_checkpoint_files(folder)
    changed = progress.load(folder, allow_changed_settings)
    for index, optimizer in enumerate(optimizers):
        _check_state_file(folder, _numbered(OPTIMIZER_NAME, index) + ".bin", _optimizer_problem, optimizer)
    for index, scheduler in enumerate(schedulers):
        _check_state_file(folder, _numbered(SCHEDULER_NAME, index) + ".bin", _state_dict_problem, scheduler)
    if accelerator.scaler is not None:
        _check_state_file(folder, SCALER_NAME, _state_dict_problem, accelerator.scaler)
    # Every process checks every process's file, so that all of them refuse together.
    random_states = [
        _check_state_file(folder, f"{RNG_STATE_NAME}_{index}.pkl", _random_states_problem, None)
        for index in range(accelerator.num_processes)
    ]
    accelerator.load_state(str(folder), load_kwargs={"weights_only": True})
    # accelerate only logs (at INFO) random states it could not restore: the run would go on with other numbers.
    if not torch.equal(torch.get_rng_state(), random_states[accelerator.process_index]["torch_manual_seed"]):
        raise _refused(folder, f"{RNG_STATE_NAME}_{accelerator.process_index}.pkl", "was not restored by accelerate")
    return changed


def _numbered(name: str, index: int) -> str:
    # accelerate's naming: optimizer.bin, then optimizer_1.bin, ...
    return name if index == 0 else f"{name}_{index}"


def _refused(folder: Path, name: str, problem: str) -> RunConfigError:
    return RunConfigError(
        f"--resume_from_checkpoint {folder}: refused, {name} {problem}: not a state this train.py wrote. Delete "
        f"{folder} and resume from an earlier checkpoint, or start the run again without --resume_from_checkpoint."
    )


def _check_state_file(folder: Path, name: str, problem_of: Any, live: Any) -> Any:
    """The content of `folder / name` loaded as `accelerator.load_state` loads it, refused unless `problem_of(content,
    live)` finds nothing wrong with it."""
    path = folder / name
    if not path.is_file():
        raise _refused(folder, name, "is missing")
    try:
        content = accelerate_load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's advice in this message is to unpickle it unrestricted: not repeated
        raise _refused(
            folder, name, "holds objects other than tensors, numbers and containers, which could run code when loaded"
        ) from None
    except Exception as error:  # whatever stops the loader: a truncated or foreign file
        first_line = (str(error).splitlines() or [""])[0][:200]
        raise _refused(folder, name, f"cannot be read ({type(error).__name__}: {first_line})") from None
    problem = problem_of(content, live)
    if problem:
        raise _refused(folder, name, problem)
    return content


def _same_kind(saved: Any, live: Any) -> bool:
    """Whether `saved` has the structure of `live`: numbers for numbers, the same types, keys and lengths."""
    numbers = (int, float)
    if isinstance(live, numbers) and not isinstance(live, bool):
        return isinstance(saved, numbers) and not isinstance(saved, bool)
    if type(saved) is not type(live):
        return False
    if isinstance(live, dict):
        return set(saved) == set(live) and all(_same_kind(saved[key], live[key]) for key in live)
    if isinstance(live, (list, tuple)):
        return len(saved) == len(live) and all(map(_same_kind, saved, live))
    return True


def _optimizer_problem(saved: Any, optimizer: Any) -> str | None:
    live = optimizer.state_dict()
    if not isinstance(saved, dict) or set(saved) != {"state", "param_groups"}:
        return "is not an optimizer state (a dict of 'state' and 'param_groups')"
    groups = saved["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(live["param_groups"]):
        return "does not have the optimizer's parameter groups"
    shapes: dict[Any, torch.Size] = {}
    for group, live_group, parameters in zip(groups, live["param_groups"], optimizer.param_groups, strict=True):
        if not isinstance(group, dict) or group.get("params") != live_group["params"]:
            return "does not have the optimizer's parameters"
        if not _same_kind({**group, "params": []}, {**live_group, "params": []}):
            return "does not have the optimizer's settings"
        shapes.update(zip(live_group["params"], (parameter.shape for parameter in parameters["params"]), strict=True))
    state = saved["state"]
    if not isinstance(state, dict) or not set(state) <= set(shapes):
        return "holds state for parameters the optimizer does not have"
    for index, values in state.items():
        if not isinstance(values, dict):
            return "is not an optimizer state (a dict of tensors per parameter)"
        for key, value in values.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != shapes[index]:
                return f"holds {key} of shape {tuple(value.shape)} for a parameter of shape {tuple(shapes[index])}"
            if not isinstance(value, (torch.Tensor, int, float)):
                return f"holds {key} of type {type(value).__name__}, not a tensor or a number"
    return None


def _state_dict_problem(saved: Any, live: Any) -> str | None:
    # A scheduler's load_state_dict sets an attribute for whatever key the file holds: exactly the live ones.
    if _same_kind(saved, live.state_dict()):
        return None
    return f"does not hold the entries of the run's {type(live).__name__} (of the same kinds)"


def _random_states_problem(saved: Any, _: None) -> str | None:
    required = {"step", "random_state", "numpy_random_seed", "torch_manual_seed"}
    if not isinstance(saved, dict) or not required <= set(saved):
        return f"is not accelerate's random states (a dict of {', '.join(sorted(required))})"
    device_states = re.compile(r"torch_\w+_manual_seed|xm_seed")
    unknown = sorted(str(key) for key in saved if key not in required and not device_states.fullmatch(str(key)))
    if unknown:
        return f"holds unknown entries {unknown}"
    try:  # restored into fresh generators: the run's own are set by accelerate
        if type(saved["step"]) is not int:
            raise TypeError(f"step is {saved['step']!r}")
        random.Random().setstate(saved["random_state"])
        np.random.RandomState().set_state(saved["numpy_random_seed"])
        torch.Generator().set_state(saved["torch_manual_seed"])
    except Exception as error:  # each generator raises its own kind of error
        return f"holds random states that cannot be restored ({type(error).__name__}: {error})"
    return None


def latest_checkpoint(work_dir: Path) -> Path:
    # A `.partial` folder is a save that a kill interrupted, a `.replaced` one an older save being replaced.
    finished = [path for path in (work_dir / "checkpoints").glob("*-epoch-*") if not path.suffix]
    checkpoints = sorted(finished, key=lambda path: (STAGES.index(path.name.split("-")[0]), path.name))
    if not checkpoints:
        raise RunConfigError(f"--resume_from_checkpoint latest: no checkpoint under {work_dir / 'checkpoints'}.")
    return checkpoints[-1]


def save_checkpoint(
    accelerator: Accelerator, work_dir: Path, stage: str, epoch: int, progress: TrainingProgress
) -> None:
    # Written under a temporary name and renamed, so a kill never leaves a half checkpoint behind.
    final = work_dir / "checkpoints" / f"{stage}-epoch-{epoch:03d}"
    partial = final.with_name(final.name + ".partial")
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        progress.save(partial)
        replace_folder(partial, final)
    accelerator.wait_for_everyone()
