"""Run settings of `train.py`: one YAML file per run, checked completely before any work starts.

A run file holds run settings (data, epochs, batch, the evaluation attack) at the top level and the model's
hyper-parameters under `model:` (fields of `CRoPDConfig`, the one place they live). `base: other.yaml` starts from
another run file of the same folder and overrides it, so a baseline states only what differs.
"""

import dataclasses
from pathlib import Path
from typing import Any, Literal

import yaml
from huggingface_hub.dataclasses import strict

from cropd_hf import CRoPDConfig
from cropd_hf.configuration_cropd import Number, checked_field, checked_number, strict_refusals
from cropd_hf.data import DATASET_NAMES

REPOSITORY = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPOSITORY / "training" / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "embedded.yaml"


class RunConfigError(ValueError):
    """A run file that cannot run: the message names the file, the key, the value and what is accepted."""


def _refusal(
    key: str, value: Any, accepted: str, cause: BaseException | None = None, problem: str | None = None
) -> RunConfigError:
    """The refusal of one key, without the file's name (load_run_config puts it in front)."""
    problem = problem or ("wrong type" if isinstance(cause, TypeError) else "invalid value")
    return RunConfigError(f"{problem} for key '{key}': {value!r}; accepted: {accepted}.")


def _count(default: int | None, accepted: str, low: int) -> Any:
    return checked_field(accepted, lambda value: value is None or value >= low, default=default)


def _rate(default: float) -> Any:
    return checked_number(default, "a number > 0", lambda value: value > 0)


@strict_refusals(_refusal)
@strict
@dataclasses.dataclass
class RunConfig:
    """Settings of one training run (everything that is not a model hyper-parameter). Each key is checked as it is
    set (type, then range, by `@strict`); `validate_*` check keys against each other."""

    dataset: str = checked_field(
        f"one of {list(DATASET_NAMES)}", lambda name: name in DATASET_NAMES, default="embedded-mnist"
    )
    validation_size: int = _count(0, "an integer >= 0", low=0)
    max_train_samples: int | None = _count(None, "null (all) or an integer >= 1", low=1)
    seed: int = checked_field("an integer in [0, 2**32)", lambda seed: 0 <= seed < 2**32, default=0)
    output_dir: str | None = checked_field("null or a folder", default=None)
    # A CRoPD checkpoint (folder or Hub id) whose purifier starts this run; with purifier_epochs 0 it is used as is.
    purifier_from: str | None = checked_field("null or a CRoPD checkpoint (folder or Hub id)", default=None)
    batch_size: int = _count(128, "an integer >= 1", low=1)
    # Random translation of the training images by up to this many pixels (0: none), in both stages.
    augment_max_shift: int = _count(0, "an integer >= 0", low=0)
    # Warm start of g before stage 1: reconstruction only (no attack, no contrastive term), so that stage 1 starts
    # from a g that copies its input. Cheap: g alone, without f.
    reconstruction_epochs: int = _count(0, "an integer >= 0", low=0)
    reconstruction_learning_rate: Number = _rate(3e-3)
    purifier_epochs: int = _count(5, "an integer >= 0", low=0)
    # A purifier epoch whose held-out PSNR of g(x) against x falls below this (dB) is reported loudly; null: never.
    min_purifier_psnr: Number | None = checked_number(20.0, "null (never) or a number (dB)")
    purifier_learning_rate: Number = _rate(1e-3)
    purifier_weight_decay: Number = checked_number(0.05, "a number >= 0", lambda decay: decay >= 0)
    # mixed: half of each batch's loss on clean inputs, half on their attacked copies (keeps clean accuracy).
    head_training: Literal["clean", "adversarial", "mixed"] = checked_field(
        "one of 'clean', 'adversarial', 'mixed'", default="clean"
    )
    head_epochs: int = _count(5, "an integer >= 0", low=0)
    head_learning_rate: Number = _rate(3e-3)
    head_attack_steps: int = _count(1, "an integer >= 1", low=1)
    warmup_ratio: Number = checked_number(0.05, "a number in [0, 1)", lambda ratio: 0 <= ratio < 1)
    max_grad_norm: Number | None = checked_number(1.0, "null (no clipping) or a number > 0", lambda norm: norm > 0)
    eval_split: Literal["test", "validation"] = checked_field("'test' or 'validation'", default="test")
    eval_epsilon: Number = checked_number(0.1, "a number in (0, 1] (pixel units)", lambda eps: 0 < eps <= 1)
    # PGD step of the final evaluation; null: the evaluator's rule, 2.5·ε/steps (Madry et al.).
    eval_alpha: Number | None = checked_number(
        None, "null (2.5·ε/steps) or a number in (0, 1] (pixel units)", lambda alpha: 0 < alpha <= 1
    )
    eval_pgd_steps: list[int] = checked_field(
        "a non-empty list of distinct integers >= 1",
        lambda steps: len(steps) > 0 and min(steps) >= 1 and len(set(steps)) == len(steps),
        default_factory=lambda: [10, 20],
    )
    eval_num_samples: int | None = _count(None, "null (all) or an integer >= 1", low=1)
    # The evaluator's sanity checks (more effort, collapse at ε = 0.5, transfer) after training: about 3x the cost
    # of the suite; a quick look leaves them to `cropd-eval`.
    eval_sanity_checks: bool = checked_field("true or false", default=False)
    eval_batch_size: int = _count(250, "an integer >= 1", low=1)
    report_to: Literal["none", "tensorboard"] = checked_field("one of 'none', 'tensorboard'", default="none")
    model: dict[str, Any] = checked_field("a mapping of CRoPDConfig fields to values", default_factory=dict)

    def validate_eval_split(self) -> None:
        if self.eval_split == "validation" and not self.validation_size:
            raise _refusal("eval_split", self.eval_split, "'test', or 'validation' with validation_size > 0")


def load_run_config(path: str | Path) -> RunConfig:
    """Read, merge (`base:`), type-check and domain-check a run file; raise `RunConfigError` on any problem."""
    path = Path(path)
    values = _read_with_bases(path, seen=())
    source = str(path)
    fields = {field.name for field in dataclasses.fields(RunConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        _fail(source, unknown[0], values[unknown[0]], f"a known key; run keys are {sorted(fields)}", "unknown key")
    try:
        run = RunConfig(**values)
    except RunConfigError as error:
        raise RunConfigError(f"{source}: {error}") from error
    _check_model_section(source, run.model)
    image_size = run.model.get("image_size", CRoPDConfig().image_size)
    if run.augment_max_shift >= image_size:
        _fail(source, "augment_max_shift", run.augment_max_shift, f"an integer in [0, {image_size}) (model.image_size)")
    return run


def _read_with_bases(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if not path.is_file():
        raise RunConfigError(f"{path}: no such run file; the run files are in {CONFIG_DIR}.")
    if path.resolve() in seen:
        raise RunConfigError(f"{path}: `base:` chain loops back to itself.")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RunConfigError(f"{path}: not valid YAML ({error}).") from error
    if values is None:
        raise RunConfigError(
            f"{path}: the run file is empty; a run file is a YAML mapping of run keys (dataset, epochs, ...) and a "
            "`model:` section (see training/configs/embedded.yaml)."
        )
    if not isinstance(values, dict):
        raise RunConfigError(f"{path}: a run file is a YAML mapping of keys to values; got {type(values).__name__}.")
    if not isinstance(values.get("model", {}), dict):
        _fail(str(path), "model", values["model"], "a mapping of CRoPDConfig fields to values", "wrong type")
    base = values.pop("base", None)
    if base is None:
        return values
    merged = _read_with_bases(path.parent / base, seen=(*seen, path.resolve()))
    model = {**merged.get("model", {}), **values.pop("model", {})}
    return {**merged, **values, "model": model}


def resolve_local_path(value: str) -> str:
    """A relative local path as given, from the working directory, else from the repository root (so the run
    files' `training/...` paths work from any directory); anything else (a Hub id) unchanged."""
    if Path(value).exists() or Path(value).is_absolute():
        return value
    from_repository = REPOSITORY / value
    return str(from_repository) if from_repository.exists() else value


def _check_model_section(source: str, model: dict[str, Any]) -> None:
    foundation = model.get("foundation_model_name_or_path")
    if isinstance(foundation, str):
        model["foundation_model_name_or_path"] = foundation = resolve_local_path(foundation)
        looks_local = foundation.startswith((".", "/", "~")) or foundation.count("/") != 1
        if looks_local and not Path(foundation).is_dir():
            _fail(
                source,
                "model.foundation_model_name_or_path",
                foundation,
                "a Hub id (org/name) or an existing local folder holding config.json",
                "no such folder",
            )
    known = {field.name for field in dataclasses.fields(CRoPDConfig)}
    for key in model:
        if key not in known:
            _fail(source, f"model.{key}", model[key], "a CRoPDConfig field", "unknown key")
    try:
        CRoPDConfig(**model)
    except ValueError as error:
        raise RunConfigError(f"{source}: model: {error}") from error


def _fail(source: str, key: str, value: Any, accepted: str, problem: str = "invalid value") -> None:
    raise RunConfigError(f"{source}: {_refusal(key, value, accepted, problem=problem)}")
