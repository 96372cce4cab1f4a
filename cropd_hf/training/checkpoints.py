"""The per-epoch checkpoints of a training run: accelerate's state plus `training_progress.json` (stages done,
settings, sha256 of the weight files), saved under a temporary name and renamed, checked before resuming."""

import json
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.logging import get_logger

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
