"""Every run file in training/configs (fidelity/ included) resolves as on a fresh clone, and the run settings are
checked as they are set: a run can only start from what git ships, never from a local outputs/ folder."""

import dataclasses
import subprocess
from pathlib import Path

import pytest

from cropd_hf import CRoPDConfig, CRoPDModel
from cropd_hf.training.run_config import CONFIG_DIR, REPOSITORY, RunConfig, RunConfigError, load_run_config

# Read when a run file is listed, so that a run file added while the suite is collected is still covered.
RUN_FILES = sorted(CONFIG_DIR.rglob("*.yaml"))


@pytest.fixture(scope="module")
def tracked() -> set[str]:
    """The repository's files as a fresh clone has them."""
    listing = subprocess.run(["git", "ls-files"], cwd=REPOSITORY, capture_output=True, text=True, check=True)
    return set(listing.stdout.splitlines())


def shipped_folder(value: str, files: tuple[str, ...], tracked: set[str]) -> Path | None:
    """The repository folder `value` names, once git is seen to track `files` in it; None for a Hub id."""
    ignored = subprocess.run(["git", "check-ignore", "-q", value], cwd=REPOSITORY).returncode == 0
    top = value.split("/")[0]
    # org/name is a Hub repository unless it starts in a folder of the repository (tracked, or ignored as outputs/).
    if value.count("/") == 1 and not ignored and not any(name.startswith(f"{top}/") for name in tracked):
        return None
    folder = (REPOSITORY / value).resolve()  # an absolute value stays itself
    assert folder.is_relative_to(REPOSITORY), f"{value} lies outside the repository"
    relative = folder.relative_to(REPOSITORY).as_posix()
    untracked = [name for name in files if f"{relative}/{name}" not in tracked]
    assert not untracked, f"{value}: {untracked} not tracked by git, so missing on a fresh clone"
    return folder


def test_the_run_files_include_the_fidelity_folder():
    assert {path.parent for path in RUN_FILES} >= {CONFIG_DIR, CONFIG_DIR / "fidelity"}


@pytest.mark.parametrize("run_file", RUN_FILES, ids=lambda path: path.relative_to(CONFIG_DIR).as_posix())
def test_every_run_file_resolves_and_builds_its_model_from_tracked_files_only(run_file, tracked):
    run = load_run_config(run_file)
    model = dict(run.model)
    foundation = model.pop("foundation_model_name_or_path", CRoPDConfig().foundation_model_name_or_path)
    folder = shipped_folder(foundation, ("config.json", "model.safetensors"), tracked)
    if folder is None:
        config = CRoPDConfig(foundation_model_name_or_path=foundation, **model)
    else:  # as training builds it: the foundation model's own config sets its input size, channels and mean/std
        config = CRoPDConfig.for_foundation(str(folder), **model)
    if run.purifier_from is not None:
        source = shipped_folder(run.purifier_from, ("config.json", "model.safetensors"), tracked)
        assert source is not None, f"purifier_from={run.purifier_from!r}: a shipped checkpoint, not a Hub download"
        # The model section must rebuild the shipped purifier exactly: its weights load without a missing key.
        CRoPDModel(config).load_state_dict(CRoPDModel.from_pretrained(source).state_dict())


def test_only_shipped_folders_pass_for_a_run_files_paths(tracked):
    # outputs/ is where training writes: a fresh clone has none of it, whatever this checkout holds.
    for untracked in ("outputs/embedded", "training/foundation/missing"):
        with pytest.raises(AssertionError, match="not tracked by git"):
            shipped_folder(untracked, ("config.json",), tracked)
    with pytest.raises(AssertionError, match="outside the repository"):
        shipped_folder("/tmp/foundation", ("config.json",), tracked)
    assert shipped_folder("facebook/vit-mae-large", ("config.json",), tracked) is None
    shipped = shipped_folder("training/checkpoints/embedded", ("config.json", "model.safetensors"), tracked)
    assert shipped == REPOSITORY / "training" / "checkpoints" / "embedded"


@pytest.mark.parametrize(
    ("key", "value", "accepted"),
    [
        ("purifier_weight_decay", float("nan"), "a number >= 0"),
        ("head_learning_rate", float("inf"), "a number > 0"),
        ("batch_size", 0, "an integer >= 1"),
        ("batch_size", True, "an integer >= 1"),
        ("eval_pgd_steps", [10, 10], "distinct integers >= 1"),
        ("report_to", "wandb", "'none', 'tensorboard'"),
    ],
)
def test_a_run_setting_is_checked_whenever_it_is_set(key, value, accepted):
    run = RunConfig()
    # Settings derived from a checked run (a dry run, a resumed one) are checked too, not only the file's.
    for change in (lambda: RunConfig(**{key: value}), lambda: dataclasses.replace(run, **{key: value})):
        with pytest.raises(RunConfigError, match=rf"for key '{key}': .*; accepted: .*{accepted}"):
            change()
    with pytest.raises(RunConfigError, match=rf"for key '{key}'"):
        setattr(run, key, value)


def test_settings_that_contradict_each_other_are_refused_naming_the_key():
    with pytest.raises(RunConfigError, match="key 'eval_split': 'validation'; accepted: 'test', or 'validation' with"):
        RunConfig(eval_split="validation", validation_size=0)
    assert RunConfig(eval_split="validation", validation_size=500).eval_split == "validation"
