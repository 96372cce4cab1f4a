"""Run settings of `train.py`: one YAML file per run, checked completely before any work starts.

A run file holds run settings (data, epochs, batch, the evaluation attack) at the top level and the model's
hyper-parameters under `model:` (fields of `CRoPDConfig`, the one place they live). `base: other.yaml` starts from
another run file of the same folder and overrides it, so a baseline states only what differs.
"""

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from cropd_hf import CRoPDConfig
from cropd_hf.data import DATASET_NAMES

REPOSITORY = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPOSITORY / "training" / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "embedded.yaml"


class RunConfigError(ValueError):
    """A run file that cannot run: the message names the file, the key, the value and what is accepted."""


@dataclasses.dataclass
class RunConfig:
    """Settings of one training run (everything that is not a model hyper-parameter)."""

    dataset: str = "embedded-mnist"
    validation_size: int = 0
    max_train_samples: int | None = None
    seed: int = 0
    output_dir: str | None = None
    # A CRoPD checkpoint (folder or Hub id) whose purifier starts this run; with purifier_epochs 0 it is used as is.
    purifier_from: str | None = None
    batch_size: int = 128
    # Random translation of the training images by up to this many pixels (0: none), in both stages.
    augment_max_shift: int = 0
    # Warm start of g before stage 1: reconstruction only (no attack, no contrastive term), so that stage 1 starts
    # from a g that copies its input. Cheap: g alone, without f.
    reconstruction_epochs: int = 0
    reconstruction_learning_rate: float = 3e-3
    purifier_epochs: int = 5
    # A purifier epoch whose held-out PSNR of g(x) against x falls below this (dB) is reported loudly; null: never.
    min_purifier_psnr: float | None = 20.0
    purifier_learning_rate: float = 1e-3
    purifier_weight_decay: float = 0.05
    head_training: Literal["clean", "adversarial"] = "clean"
    head_epochs: int = 5
    head_learning_rate: float = 3e-3
    head_attack_steps: int = 1
    warmup_ratio: float = 0.05
    max_grad_norm: float | None = 1.0
    eval_split: str = "test"
    eval_epsilon: float = 0.1
    # PGD step of the final evaluation; null: the evaluator's rule, 2.5·ε/steps (Madry et al.).
    eval_alpha: float | None = None
    eval_pgd_steps: list[int] = dataclasses.field(default_factory=lambda: [10, 20])
    eval_num_samples: int | None = None
    # The evaluator's sanity checks (more effort, collapse at ε = 0.5, transfer) after training: about 3x the cost
    # of the suite; a quick look leaves them to `cropd-eval`.
    eval_sanity_checks: bool = False
    eval_batch_size: int = 250
    report_to: Literal["none", "tensorboard"] = "none"
    model: dict[str, Any] = dataclasses.field(default_factory=dict)

    def check(self, source: str) -> None:
        """Domain checks on top of the types: each failure names the key and what is accepted."""
        if not 0 <= self.seed < 2**32:
            _fail(source, "seed", self.seed, "an integer in [0, 2**32)")
        if self.dataset not in DATASET_NAMES:
            _fail(source, "dataset", self.dataset, f"one of {list(DATASET_NAMES)}")
        for key in ("batch_size", "eval_batch_size", "head_attack_steps"):
            if getattr(self, key) < 1:
                _fail(source, key, getattr(self, key), "an integer >= 1")
        for key in ("validation_size", "purifier_epochs", "reconstruction_epochs", "head_epochs", "augment_max_shift"):
            if getattr(self, key) < 0:
                _fail(source, key, getattr(self, key), "an integer >= 0")
        for key in ("reconstruction_learning_rate", "purifier_learning_rate", "head_learning_rate"):
            if not getattr(self, key) > 0:
                _fail(source, key, getattr(self, key), "a number > 0")
        if self.purifier_weight_decay < 0:
            _fail(source, "purifier_weight_decay", self.purifier_weight_decay, "a number >= 0")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            _fail(source, "max_grad_norm", self.max_grad_norm, "null (no clipping) or a number > 0")
        if not 0 <= self.warmup_ratio < 1:
            _fail(source, "warmup_ratio", self.warmup_ratio, "a number in [0, 1)")
        if not 0 < self.eval_epsilon <= 1:
            _fail(source, "eval_epsilon", self.eval_epsilon, "a number in (0, 1] (pixel units)")
        if self.eval_alpha is not None and not 0 < self.eval_alpha <= 1:
            _fail(source, "eval_alpha", self.eval_alpha, "null (2.5·ε/steps) or a number in (0, 1] (pixel units)")
        steps = self.eval_pgd_steps
        if not steps or any(step < 1 for step in steps) or len(set(steps)) != len(steps):
            _fail(source, "eval_pgd_steps", steps, "a non-empty list of distinct integers >= 1")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            _fail(source, "max_train_samples", self.max_train_samples, "null (all) or an integer >= 1")
        if self.eval_num_samples is not None and self.eval_num_samples < 1:
            _fail(source, "eval_num_samples", self.eval_num_samples, "null (all) or an integer >= 1")
        if self.eval_split not in ("test", "validation"):
            _fail(source, "eval_split", self.eval_split, "'test' or 'validation'")
        if self.eval_split == "validation" and not self.validation_size:
            _fail(source, "eval_split", self.eval_split, "'test', or 'validation' with validation_size > 0")


def load_run_config(path: str | Path) -> RunConfig:
    """Read, merge (`base:`), type-check and domain-check a run file; raise `RunConfigError` on any problem."""
    path = Path(path)
    values = _read_with_bases(path, seen=())
    source = str(path)
    fields = {field.name: field for field in dataclasses.fields(RunConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        _fail(source, unknown[0], values[unknown[0]], f"a known key; run keys are {sorted(fields)}", "unknown key")
    hints = typing.get_type_hints(RunConfig)
    for key, value in values.items():
        if not _has_type(value, hints[key]):
            _fail(source, key, value, _describe(hints[key]), "wrong type")
    run = RunConfig(**values)
    run.check(source)
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


def _has_type(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, option) for option in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_has_type(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(hint))
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    if hint is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", dict: "a mapping"}.get(origin or hint, str(hint))


def _fail(source: str, key: str, value: Any, accepted: str, problem: str = "invalid value") -> None:
    raise RunConfigError(f"{source}: {problem} for key '{key}': {value!r}; accepted: {accepted}.")
