"""Robustness evaluation that survives scrutiny: an attack suite, the AutoAttack-style worst case, sanity checks.

Every attack is white-box on the whole model (``model(pixel_values)`` with pixels in [0, 1]). Per ε the suite runs
FGSM, PGD-k (random start, restarts) and AutoAttack's core, APGD-CE and APGD-T (targeted DLR, Croce & Hein 2020),
natively in torch (``cropd_hf.attacks``). A sample counts as robust to an attack only if the model classifies it
correctly both clean and under that attack; the AutoAttack-style worst case counts it as robust only if every attack
of the suite fails. As in AutoAttack, the APGD attacks run only on the samples that are still robust (their own
accuracy is therefore reported cumulatively).

Sanity checks after Carlini et al. 2019 ("On Evaluating Adversarial Robustness") come with every model: accuracy
collapses at a large ε, more PGD steps or restarts do not help beyond sampling noise, the white-box attack is at
least as strong as a transfer attack from a reference (Identity) model, and input gradients are finite and non-zero.
A failed check is printed loudly and recorded in ``eval.json``.

Runs under ``accelerate``: each process takes its share of the batches, and every finished batch is saved to a state
folder, so that ``--resume`` continues a killed run. Each batch draws its random starts from a seed derived from
``--seed``, the batch and the attack, so the numbers do not depend on the number of processes or on interruptions.

Cost: a sample that survives every attack at one ε goes through about 650 forward-backward passes with the
defaults (APGD-T alone 9 × 50, the sanity checks about 120); a broken sample skips the rest of the APGD cascade.

    accelerate launch training/evaluate_robustness.py --model outputs/embedded outputs/embedded-identity \\
        --epsilons 0.1 0.05 0.2 0.3 --transfer_from outputs/embedded-identity --output_dir outputs/eval

Models evaluated one at a time (in parallel, or over several sessions) with the same settings share one table:

    cropd-eval --merge outputs/eval-a outputs/eval-b --output_dir outputs/eval
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .attacks import APGD, FGSM, PGD, Attack, _as_tensor, _eval_mode
from .data import DATASET_NAMES, EMBEDDED_MNIST, load_image_dataset, with_pixel_values
from .metrics import load_robust_accuracy

__all__ = [
    "ATTACK_NAMES",
    "AttackResult",
    "EpsilonResult",
    "EvaluationReport",
    "EvaluationSettings",
    "ModelResult",
    "SanityCheck",
    "SuiteAttack",
    "attack_suite",
    "check_gradient_health",
    "check_large_epsilon_collapse",
    "check_more_effort_does_not_help",
    "check_white_box_beats_transfer",
    "evaluate_model",
    "input_gradient_health",
    "main",
    "markdown_report",
    "noise_margin",
    "plot_accuracies",
    "plot_robustness_curve",
    "print_sanity_report",
    "summarize",
    "write_outputs",
]

ATTACK_NAMES = ("fgsm", "pgd", "apgd-ce", "apgd-t")
CONVENTION = (
    "A sample counts as robust to an attack only if the model classifies it correctly both clean and under that "
    "attack. The AutoAttack-style worst case counts it as robust only if every attack of the suite fails. Attacks "
    "marked cascade run only on the samples still robust to the attacks before them (AutoAttack's practice); their "
    "accuracy is only defined cumulatively. Prediction -1 in the per-batch state marks a sample that was not attacked "
    "because it was already misclassified."
)
NOT_ATTACKED = -1
COLLAPSE_THRESHOLD = 0.01
GRADIENT_THRESHOLD = 0.99


# ----------------------------------------------------------------------------------------------------------------
# Settings and the attack suite


@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
    """Everything that defines the numbers of an evaluation; stored in ``eval.json`` and hashed for resuming.

    The first ε of ``epsilons`` is the reference ε: the accuracy plot, the monotonicity and the transfer checks use
    it. PGD's step is ``pgd_alpha``, or ``2.5·ε/steps`` when it is None (Madry et al.'s rule). ``dataset``,
    ``split``, ``data_seed``, ``validation_size``, ``num_samples`` and ``transfer_from`` describe the data and the
    reference model.
    """

    epsilons: tuple[float, ...] = (0.1,)
    attacks: tuple[str, ...] = ATTACK_NAMES
    pgd_steps: tuple[int, ...] = (10, 20)
    pgd_alpha: float | None = None
    pgd_restarts: int = 1
    apgd_steps: int = 50
    apgd_restarts: int = 1
    apgd_targets: int = 9
    sanity_epsilon: float = 0.5
    batch_size: int = 100
    seed: int = 0
    dataset: str = EMBEDDED_MNIST
    split: str = "test"
    data_seed: int = 0
    validation_size: int = 0
    num_samples: int | None = None
    transfer_from: str | None = None

    def __post_init__(self) -> None:
        for name in ("epsilons", "attacks", "pgd_steps"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.epsilons or any(not 0 < eps <= 1 for eps in self.epsilons):
            raise ValueError(
                f"epsilons must be a non-empty list of L∞ radii in (0, 1] (pixel units; ε = 0 is the clean "
                f"accuracy, always reported), got {list(self.epsilons)}"
            )
        if len(set(self.epsilons)) != len(self.epsilons):
            raise ValueError(f"epsilons must not repeat, got {list(self.epsilons)}")
        if not 0 < self.sanity_epsilon <= 1:
            raise ValueError(f"sanity_epsilon must be in (0, 1], got {self.sanity_epsilon}")
        unknown = [name for name in self.attacks if name not in ATTACK_NAMES]
        if not self.attacks or unknown or len(set(self.attacks)) != len(self.attacks):
            raise ValueError(f"attacks must be distinct names from {list(ATTACK_NAMES)}, got {list(self.attacks)}")
        if not self.pgd_steps or any(not _is_positive_int(steps) for steps in self.pgd_steps):
            raise ValueError(f"pgd_steps must be a non-empty list of integers >= 1, got {list(self.pgd_steps)}")
        if len(set(self.pgd_steps)) != len(self.pgd_steps):
            raise ValueError(f"pgd_steps must not repeat, got {list(self.pgd_steps)}")
        if self.pgd_alpha is not None and not 0 < self.pgd_alpha <= 1:
            raise ValueError(f"pgd_alpha must be in (0, 1] or None (2.5·ε/steps), got {self.pgd_alpha}")
        for name in ("pgd_restarts", "apgd_steps", "apgd_restarts", "apgd_targets", "batch_size"):
            if not _is_positive_int(getattr(self, name)):
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.validation_size, int) or self.validation_size < 0:
            raise ValueError(f"validation_size must be an integer >= 0, got {self.validation_size!r}")
        if self.num_samples is not None and not _is_positive_int(self.num_samples):
            raise ValueError(f"num_samples must be an integer >= 1 or None (the whole split), got {self.num_samples}")

    @property
    def reference_epsilon(self) -> float:
        return self.epsilons[0]

    @property
    def max_pgd_steps(self) -> int:
        return max(self.pgd_steps)

    def pgd(self, epsilon: float, steps: int, restarts: int | None = None, relative_alpha: bool = False) -> PGD:
        """PGD at ``epsilon`` with this evaluation's step rule (``relative_alpha`` forces ``2.5·ε/steps``)."""
        alpha = 2.5 * epsilon / steps if self.pgd_alpha is None or relative_alpha else self.pgd_alpha
        return PGD(epsilon, alpha=alpha, steps=steps, restarts=restarts or self.pgd_restarts)

    def to_dict(self) -> dict[str, Any]:
        return {field.name: _jsonable(getattr(self, field.name)) for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EvaluationSettings:
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class SuiteAttack:
    """One attack of a suite. ``cascade``: run only on the samples still robust to the attacks before it."""

    name: str
    attack: Attack
    cascade: bool = False


def attack_suite(epsilon: float, settings: EvaluationSettings, num_classes: int) -> list[SuiteAttack]:
    """The suite at ``epsilon``, in order: FGSM, PGD-k for each k, APGD-CE, APGD-T (those named in ``settings``)."""
    suite = []
    if "fgsm" in settings.attacks:
        suite.append(SuiteAttack("fgsm", FGSM(epsilon)))
    if "pgd" in settings.attacks:
        suite += [SuiteAttack(f"pgd{steps}", settings.pgd(epsilon, steps)) for steps in sorted(settings.pgd_steps)]
    if "apgd-ce" in settings.attacks:
        apgd_ce = APGD(epsilon, steps=settings.apgd_steps, loss="ce", restarts=settings.apgd_restarts)
        suite.append(SuiteAttack("apgd-ce", apgd_ce, cascade=True))
    if "apgd-t" in settings.attacks:
        if num_classes < 4:
            raise ValueError(
                f"apgd-t (targeted DLR loss) needs at least 4 classes, the model has {num_classes}; "
                "leave it out of the attacks"
            )
        apgd_t = APGD(
            epsilon,
            steps=settings.apgd_steps,
            loss="dlr",
            targeted=True,
            # AutoAttack's 9 targets, or every wrong class when there are fewer.
            n_target_classes=min(settings.apgd_targets, num_classes - 1),
            restarts=settings.apgd_restarts,
        )
        suite.append(SuiteAttack("apgd-t", apgd_t, cascade=True))
    return suite


@dataclasses.dataclass(frozen=True)
class _Chain:
    """Attacks run one after the other on the same samples (a cascade attack sees only the survivors)."""

    key: str
    epsilon: float
    attacks: tuple[SuiteAttack, ...]
    transfer: bool = False  # adversarial examples made on the transfer (reference) model


def _plan(settings: EvaluationSettings, num_classes: int, with_transfer: bool) -> list[_Chain]:
    """Every attack a batch goes through: the suite at each ε, then the attacks of the sanity checks."""
    chains = [
        _Chain(_epsilon_key(eps), eps, tuple(attack_suite(eps, settings, num_classes))) for eps in settings.epsilons
    ]
    reference, steps, restarts = settings.reference_epsilon, settings.max_pgd_steps, settings.pgd_restarts
    effort = [
        SuiteAttack(f"pgd{2 * steps}", settings.pgd(reference, 2 * steps)),
        SuiteAttack(f"pgd{steps}-restarts{2 * restarts}", settings.pgd(reference, steps, restarts=2 * restarts)),
    ]
    if "pgd" not in settings.attacks:
        effort.insert(0, SuiteAttack(f"pgd{steps}", settings.pgd(reference, steps)))
    chains.append(_Chain("effort", reference, tuple(effort)))
    # At a large ε a fixed absolute step could not even reach the ball's border: the step follows ε here.
    sanity = settings.sanity_epsilon
    collapse = (
        SuiteAttack(f"pgd{steps}", settings.pgd(sanity, steps, relative_alpha=True)),
        SuiteAttack("apgd-ce", APGD(sanity, steps=settings.apgd_steps), cascade=True),
    )
    chains.append(_Chain("collapse", sanity, collapse))
    if with_transfer:
        chains.append(
            _Chain("transfer", reference, (SuiteAttack(f"pgd{steps}", settings.pgd(reference, steps)),), True)
        )
    return chains


def _epsilon_key(epsilon: float) -> str:
    return f"eps={epsilon!r}"


# ----------------------------------------------------------------------------------------------------------------
# One batch


def input_gradient_health(model: Callable[[Tensor], Any], images: Tensor, labels: Tensor) -> Tensor:
    """Per sample: is the input gradient of the logit margin ``z_y - max_{i≠y} z_i`` finite and non-zero?

    The margin, unlike cross-entropy, does not saturate on confident predictions, so a zero gradient means masking.
    """
    images = images.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = _as_tensor(model(images))
        true = logits.gather(1, labels[:, None]).squeeze(1)
        wrong = logits.masked_fill(nn.functional.one_hot(labels, logits.shape[1]).bool(), -math.inf)
        margin = true - wrong.amax(dim=1)
        grad = None
        if margin.requires_grad:
            (grad,) = torch.autograd.grad(margin.sum(), images, allow_unused=True)
    if grad is None:
        return torch.zeros(len(images), dtype=torch.bool, device=images.device)
    flat = grad.flatten(1)
    return torch.isfinite(flat).all(dim=1) & (flat != 0).any(dim=1)


def _evaluate_batch(
    model: Callable[[Tensor], Any],
    pixel_values: Tensor,
    labels: Tensor,
    chains: Sequence[_Chain],
    *,
    seed: int,
    batch_index: int,
    transfer_model: Callable[[Tensor], Any] | None = None,
) -> dict[str, list[int]]:
    """Per-sample records of one batch: clean and per-attack predictions (``-1``: not attacked), gradient health."""
    with torch.no_grad():
        clean = _as_tensor(model(pixel_values)).argmax(dim=1)
    records = {
        "labels": labels.tolist(),
        "clean": clean.tolist(),
        "gradient_ok": input_gradient_health(model, pixel_values, labels).long().tolist(),
    }
    correct = clean == labels
    for chain in chains:
        robust = correct.clone()
        source = transfer_model if chain.transfer else model
        for entry in chain.attacks:
            key = f"{chain.key}/{entry.name}"
            attacked = (robust if entry.cascade else correct).nonzero().squeeze(1)
            predictions = torch.full_like(labels, NOT_ATTACKED)
            if len(attacked):
                with _seeded(seed, batch_index, key):
                    adversarial = entry.attack(source, pixel_values[attacked], labels[attacked])
                with torch.no_grad():
                    predictions[attacked] = _as_tensor(model(adversarial)).argmax(dim=1)
            robust &= predictions == labels
            records[key] = predictions.tolist()
    return records


@contextmanager
def _seeded(seed: int, *parts: Any) -> Iterator[None]:
    """The global RNG seeded from ``(seed, *parts)`` inside, restored after: random starts that depend on the batch
    and the attack only, not on what ran before or on which process runs it."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int.from_bytes(digest[:8], "little") % 2**63)
        yield


# ----------------------------------------------------------------------------------------------------------------
# Results and sanity checks


@dataclasses.dataclass
class AttackResult:
    """Accuracy under one attack of the suite at one ε; ``accuracy`` is None for a cascade attack."""

    name: str
    settings: dict[str, Any]
    cascade: bool
    accuracy: float | None
    cumulative_accuracy: float  # worst case over clean and every attack of the suite up to this one
    num_attacked: int


@dataclasses.dataclass
class EpsilonResult:
    epsilon: float
    attacks: list[AttackResult]
    worst_case_accuracy: float  # AutoAttack-style: robust only if every attack fails


@dataclasses.dataclass
class SanityCheck:
    """One sanity check: pass (True), FAIL (False) or not run (None), with what was measured and the threshold."""

    name: str
    passed: bool | None
    measured: dict[str, float]
    threshold: str
    attacks: dict[str, dict[str, Any]]
    note: str = ""

    @property
    def status(self) -> str:
        return "SKIPPED" if self.passed is None else "PASS" if self.passed else "FAILED"


@dataclasses.dataclass
class ModelResult:
    model: str
    num_samples: int
    clean_accuracy: float
    results: list[EpsilonResult]
    sanity_checks: list[SanityCheck]

    @property
    def failed_checks(self) -> list[SanityCheck]:
        return [check for check in self.sanity_checks if check.passed is False]

    def at(self, epsilon: float) -> EpsilonResult:
        return next(result for result in self.results if result.epsilon == epsilon)


@dataclasses.dataclass
class EvaluationReport:
    """The content of ``eval.json``: settings, the convention, and per model every number with its attack."""

    settings: EvaluationSettings
    models: list[ModelResult]
    convention: str = CONVENTION

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings.to_dict(),
            "convention": self.convention,
            "sanity_passed": all(not model.failed_checks for model in self.models),
            "models": [_jsonable(dataclasses.asdict(model)) for model in self.models],
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EvaluationReport:
        models = [
            ModelResult(
                model=model["model"],
                num_samples=model["num_samples"],
                clean_accuracy=model["clean_accuracy"],
                results=[
                    EpsilonResult(
                        epsilon=result["epsilon"],
                        attacks=[AttackResult(**attack) for attack in result["attacks"]],
                        worst_case_accuracy=result["worst_case_accuracy"],
                    )
                    for result in model["results"]
                ],
                sanity_checks=[SanityCheck(**check) for check in model["sanity_checks"]],
            )
            for model in values["models"]
        ]
        return cls(EvaluationSettings.from_dict(values["settings"]), models, values["convention"])

    def save(self, path: str | os.PathLike) -> None:
        _write_atomically(Path(path), json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> EvaluationReport:
        return cls.from_dict(json.loads(Path(path).read_text()))


def merge_reports(reports: Sequence[EvaluationReport]) -> EvaluationReport:
    """One report of the models of several, each evaluated on its own (in its own process, session or machine).

    Their numbers are only comparable under the same settings (attacks, ε, data, seed, transfer model), so every
    report must have exactly the settings of the first; a model may appear once.
    """
    if not reports:
        raise ValueError("nothing to merge: give at least one report")
    settings = reports[0].settings
    for index, report in enumerate(reports[1:], start=1):
        if report.settings != settings:
            differing = {
                key: (value, getattr(report.settings, key))
                for key, value in dataclasses.asdict(settings).items()
                if getattr(report.settings, key) != value
            }
            raise ValueError(
                f"report {index} was made with other settings than report 0 and cannot share its table: "
                + ", ".join(f"{key} {first!r} vs {other!r}" for key, (first, other) in differing.items())
            )
    models = [model for report in reports for model in report.models]
    names = [model.model for model in models]
    if len(set(names)) != len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"a model may appear in one report only; repeated: {repeated}")
    return EvaluationReport(settings, models, reports[0].convention)


def noise_margin(accuracy: float, num_samples: int) -> float:
    """Two binomial standard errors of an accuracy measured on ``num_samples``, and at least one sample."""
    return max(2 * math.sqrt(accuracy * (1 - accuracy) / num_samples), 1 / num_samples)


def check_large_epsilon_collapse(
    accuracy: float, epsilon: float, attacks: dict[str, dict[str, Any]], threshold: float = COLLAPSE_THRESHOLD
) -> SanityCheck:
    """At a large ε (0.5: half the pixel range) any honest attack must drive accuracy to about zero."""
    return SanityCheck(
        name="large-epsilon collapse",
        passed=accuracy <= threshold,
        measured={"epsilon": epsilon, "accuracy": accuracy},
        threshold=f"accuracy <= {threshold:g}",
        attacks=attacks,
        note="worst case of the attacks listed; an accuracy above the threshold points at masked gradients",
    )


def check_more_effort_does_not_help(
    comparisons: Sequence[tuple[str, float, str, float]], num_samples: int, attacks: dict[str, dict[str, Any]]
) -> SanityCheck:
    """Each ``(weaker, accuracy, stronger, accuracy)``: the stronger attack (more steps or restarts) may not leave a
    higher accuracy than the weaker one beyond sampling noise (``noise_margin``)."""
    measured: dict[str, float] = {}
    violations = []
    for weaker, weaker_accuracy, stronger, stronger_accuracy in comparisons:
        measured[weaker], measured[stronger] = weaker_accuracy, stronger_accuracy
        margin = noise_margin(weaker_accuracy, num_samples)
        if stronger_accuracy > weaker_accuracy + margin:
            violations.append(f"{stronger} {stronger_accuracy:.4f} > {weaker} {weaker_accuracy:.4f} + {margin:.4f}")
    pairs = ", ".join(f"{stronger} vs {weaker}" for weaker, _, stronger, _ in comparisons)
    return SanityCheck(
        name="more steps or restarts do not help",
        passed=not violations,
        measured=measured,
        threshold="stronger <= weaker + max(2 binomial standard errors, 1/n)",
        attacks=attacks,
        note="; ".join(violations) if violations else f"compared: {pairs}",
    )


def check_white_box_beats_transfer(
    white_box: float, transfer: float, num_samples: int, attacks: dict[str, dict[str, Any]], source: str
) -> SanityCheck:
    """The white-box attack must be at least as strong as the same attack transferred from ``source``."""
    margin = noise_margin(transfer, num_samples)
    return SanityCheck(
        name="white-box at least as strong as transfer",
        passed=white_box <= transfer + margin,
        measured={"white_box": white_box, "transfer": transfer, "margin": margin},
        threshold="white_box <= transfer + max(2 binomial standard errors, 1/n)",
        attacks=attacks,
        note=f"transfer: adversarial examples made on {source}, evaluated on this model",
    )


def check_gradient_health(fraction: float, threshold: float = GRADIENT_THRESHOLD) -> SanityCheck:
    """Nearly every sample must have a finite, non-zero input gradient, or the attacks are blind (masking)."""
    return SanityCheck(
        name="input gradients finite and non-zero",
        passed=fraction >= threshold,
        measured={"fraction": fraction},
        threshold=f"fraction >= {threshold:g}",
        attacks={},
        note="gradient of the logit margin w.r.t. the clean input, per sample",
    )


def _transfer_skipped() -> SanityCheck:
    return SanityCheck(
        name="white-box at least as strong as transfer",
        passed=None,
        measured={},
        threshold="white_box <= transfer + max(2 binomial standard errors, 1/n)",
        attacks={},
        note="not run: no reference model (--transfer_from)",
    )


def summarize(
    records: dict[str, list[int]],
    settings: EvaluationSettings,
    num_classes: int,
    model_name: str,
    with_transfer: bool,
) -> ModelResult:
    """Accuracies and sanity checks from the per-sample records of every batch (concatenated in sample order)."""
    metric = load_robust_accuracy()
    labels = records["labels"]
    num_samples = len(labels)

    def accuracy(*keys: str) -> float:
        # Per sample the list of predictions [clean, attack, ...]: robust only if all are right (the worst case).
        predictions = [list(row) for row in zip(*(records[key] for key in ("clean", *keys)), strict=True)]
        return metric.compute(predictions=predictions, references=labels)["accuracy"]

    chains = {chain.key: chain for chain in _plan(settings, num_classes, with_transfer)}
    results = []
    for epsilon in settings.epsilons:
        chain = chains[_epsilon_key(epsilon)]
        attacks, keys = [], []
        for entry in chain.attacks:
            key = f"{chain.key}/{entry.name}"
            keys.append(key)
            attacks.append(
                AttackResult(
                    name=entry.name,
                    settings=entry.attack.settings(),
                    cascade=entry.cascade,
                    accuracy=None if entry.cascade else accuracy(key),
                    cumulative_accuracy=accuracy(*keys),
                    num_attacked=sum(prediction != NOT_ATTACKED for prediction in records[key]),
                )
            )
        results.append(EpsilonResult(epsilon, attacks, accuracy(*keys)))

    steps, restarts = settings.max_pgd_steps, settings.pgd_restarts
    collapse = chains["collapse"]
    collapse_keys = [f"collapse/{entry.name}" for entry in collapse.attacks]
    # Every PGD at the reference ε, the suite's first: name -> (record key, attack).
    pgd: dict[str, tuple[str, SuiteAttack]] = {}
    for chain in (chains[_epsilon_key(settings.reference_epsilon)], chains["effort"]):
        for entry in chain.attacks:
            if entry.name.startswith("pgd"):
                pgd.setdefault(entry.name, (f"{chain.key}/{entry.name}", entry))
    by_steps = [f"pgd{k}" for k in sorted(settings.pgd_steps)] if "pgd" in settings.attacks else [f"pgd{steps}"]
    ladder = [
        *itertools.pairwise(by_steps),
        (f"pgd{steps}", f"pgd{2 * steps}"),
        (f"pgd{steps}", f"pgd{steps}-restarts{2 * restarts}"),
    ]
    comparisons = [
        (weaker, accuracy(pgd[weaker][0]), stronger, accuracy(pgd[stronger][0])) for weaker, stronger in ladder
    ]
    checks = [
        check_large_epsilon_collapse(
            accuracy(*collapse_keys),
            collapse.epsilon,
            {entry.name: entry.attack.settings() for entry in collapse.attacks},
        ),
        check_more_effort_does_not_help(
            comparisons, num_samples, {name: entry.attack.settings() for name, (_, entry) in pgd.items()}
        ),
    ]
    if with_transfer:
        transfer = chains["transfer"].attacks[0]
        white_box_key, white_box = pgd[f"pgd{steps}"]
        checks.append(
            check_white_box_beats_transfer(
                accuracy(white_box_key),
                accuracy(f"transfer/{transfer.name}"),
                num_samples,
                {"white_box": white_box.attack.settings(), "transfer": transfer.attack.settings()},
                source=settings.transfer_from or "the reference model",
            )
        )
    else:
        checks.append(_transfer_skipped())
    checks.append(check_gradient_health(sum(records["gradient_ok"]) / num_samples))
    return ModelResult(model_name, num_samples, accuracy(), results, checks)


# ----------------------------------------------------------------------------------------------------------------
# The runner


def evaluate_model(
    model: nn.Module,
    dataset: Any,
    settings: EvaluationSettings,
    *,
    accelerator: Any = None,
    transfer_model: nn.Module | None = None,
    state_dir: str | os.PathLike | None = None,
    resume: bool = False,
    model_name: str = "model",
) -> ModelResult:
    """Evaluate ``model`` on ``dataset`` (``dataset[start:stop]`` gives ``pixel_values`` in [0, 1] and ``labels``,
    as ``cropd_hf.data.with_pixel_values`` makes) with the suite and sanity checks of ``settings``.

    With an ``accelerate.Accelerator`` the batches are shared among its processes and the records gathered; every
    process returns the same result. With ``state_dir`` each finished batch is saved there, and ``resume=True``
    reuses the batches a previous (killed) run finished; without it the folder is emptied first.
    """
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    is_main = rank == 0
    device = accelerator.device if accelerator else next(iter(model.parameters()), torch.empty(0)).device
    num_samples = len(dataset)
    if num_samples == 0:
        raise ValueError("the dataset to evaluate on is empty")
    starts = range(0, num_samples, settings.batch_size)
    batches = [(start, min(start + settings.batch_size, num_samples)) for start in starts]

    with _eval_mode(model), _eval_mode(transfer_model):
        probe = dataset[0:1]["pixel_values"].to(device)
        num_classes = _num_classes(model, probe)
        if transfer_model is not None and _num_classes(transfer_model, probe) != num_classes:
            raise ValueError(
                f"the transfer model has {_num_classes(transfer_model, probe)} classes, the evaluated model "
                f"{num_classes}: they must classify the same labels"
            )
        chains = _plan(settings, num_classes, transfer_model is not None)

        state = Path(state_dir) if state_dir is not None else None
        finished: dict[int, dict[str, list[int]]] = {}
        if state is not None and is_main:
            if not resume:
                shutil.rmtree(state, ignore_errors=True)
            state.mkdir(parents=True, exist_ok=True)
            finished = _load_finished(state, batches)
            if resume:
                print(f"{model_name}: resumed {len(finished)} of {len(batches)} finished batches from {state}")
        finished = _broadcast(finished, world)
        pending = [index for index in range(len(batches)) if index not in finished]
        mine: dict[int, dict[str, list[int]]] = {}
        bar = tqdm(pending[rank::world], desc=model_name, disable=not is_main, unit="batch", leave=False)
        for index in bar:
            start, stop = batches[index]
            batch = dataset[start:stop]
            mine[index] = _evaluate_batch(
                model,
                batch["pixel_values"].to(device),
                batch["labels"].to(device),
                chains,
                seed=settings.seed,
                batch_index=index,
                transfer_model=transfer_model,
            )
            if state is not None:
                _write_atomically(state / f"batch-{index:05d}.json", json.dumps({"batch": index, **mine[index]}))
    everything = {**finished, **_gather(mine, world)}
    records = {
        key: [value for index in sorted(everything) for value in everything[index][key]] for key in everything[0]
    }
    return summarize(records, settings, num_classes, model_name, transfer_model is not None)


def _num_classes(model: Callable[[Tensor], Any], probe: Tensor) -> int:
    with torch.no_grad():
        logits = _as_tensor(model(probe))
    if logits.dim() != 2:
        raise ValueError(f"the model must return logits of shape (batch, num_classes), got {tuple(logits.shape)}")
    return logits.shape[1]


def _load_finished(state: Path, batches: list[tuple[int, int]]) -> dict[int, dict[str, list[int]]]:
    finished = {}
    for index, (start, stop) in enumerate(batches):
        path = state / f"batch-{index:05d}.json"
        if path.is_file():
            record = json.loads(path.read_text())
            record.pop("batch")
            if len(record["labels"]) != stop - start:
                raise ValueError(f"{path} holds {len(record['labels'])} samples, expected {stop - start}")
            finished[index] = record
    return finished


def _broadcast(value: Any, world: int) -> Any:
    if world == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def _gather(mine: dict[int, Any], world: int) -> dict[int, Any]:
    if world == 1:
        return mine
    from accelerate.utils import gather_object

    return dict(gather_object(list(mine.items())))


def _fingerprint(*parts: Any) -> str:
    """A short hash of the settings, the model and its weights: the state folder of exactly this evaluation."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, nn.Module):
            for name, tensor in sorted(part.state_dict().items()):
                digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.double().sum().item()!r}".encode())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# Outputs: eval.json, eval.md, plots, the console report

_DISPLAY = {"fgsm": "FGSM", "apgd-ce": "APGD-CE", "apgd-t": "APGD-T"}


def _display(name: str) -> str:
    if name in _DISPLAY:
        return _DISPLAY[name]
    return f"PGD-{name[3:]}" if name.startswith("pgd") else name


def _describe(settings: dict[str, Any]) -> str:
    """One line per attack with every setting the number depends on."""
    return ", ".join(
        f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in settings.items()
    )


def _short_name(model: str) -> str:
    """The last part of a folder or Hub id (the table's row label; eval.json keeps the full one)."""
    return model.rstrip("/").rsplit("/", 1)[-1]


def markdown_report(report: EvaluationReport) -> str:
    """Per ε a table (clean, the standalone attacks, the AutoAttack-style worst case), the attacks' settings and the
    sanity report; rendered from the report alone, so ``eval.json`` regenerates it."""
    settings = report.settings
    lines = [
        f"# Robustness evaluation: {settings.dataset} / {settings.split}",
        "",
        f"{report.models[0].num_samples} samples, seed {settings.seed}, accuracies in %. {report.convention}",
        "",
    ]
    for epsilon in settings.epsilons:
        first = report.models[0].at(epsilon)
        columns = [attack.name for attack in first.attacks if not attack.cascade]
        header = ["model", "clean", *(_display(name) for name in columns), "AutoAttack-style", "sanity"]
        lines += [f"## ε = {epsilon:.4g}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for model in report.models:
            result = model.at(epsilon)
            standalone = {attack.name: attack.accuracy for attack in result.attacks if not attack.cascade}
            cells = [_short_name(model.model), f"{100 * model.clean_accuracy:.2f}"]
            cells += [f"{100 * standalone[name]:.2f}" for name in columns]
            cells += [f"**{100 * result.worst_case_accuracy:.2f}**", "FAILED" if model.failed_checks else "pass"]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Attacks (AutoAttack-style = worst case of all):", ""]
        lines += [f"- {_display(attack.name)}: {_describe(attack.settings)}" for attack in first.attacks]
        lines.append("")
    lines += ["## Sanity checks (Carlini et al. 2019)", "", "| model | check | result | measured | threshold |"]
    lines.append("|---|---|---|---|---|")
    for model in report.models:
        for check in model.sanity_checks:
            measured = ", ".join(f"{key} {value:.4g}" for key, value in check.measured.items()) or "—"
            status = f"**{check.status}**" if check.passed is False else check.status
            lines.append(f"| {_short_name(model.model)} | {check.name} | {status} | {measured} | {check.threshold} |")
    return "\n".join(lines) + "\n"


def plot_accuracies(report: EvaluationReport, path: Path) -> None:
    """Grouped bars at the reference ε: clean, each standalone attack and the worst case, per model."""
    from matplotlib.figure import Figure

    epsilon = report.settings.reference_epsilon
    first = report.models[0].at(epsilon)
    names = ["clean", *(attack.name for attack in first.attacks if not attack.cascade), "worst case"]
    figure = Figure(figsize=(max(5, 1.2 * len(report.models) * len(names) / 3), 3.4), dpi=120)
    axis = figure.subplots()
    width = 0.8 / len(names)
    for position, name in enumerate(names):
        values = []
        for model in report.models:
            result = model.at(epsilon)
            standalone = {attack.name: attack.accuracy for attack in result.attacks}
            value = {"clean": model.clean_accuracy, "worst case": result.worst_case_accuracy}.get(name)
            values.append(100 * (standalone[name] if value is None else value))
        offsets = [index + (position - (len(names) - 1) / 2) * width for index in range(len(report.models))]
        axis.bar(offsets, values, width, label=_display(name))
    axis.set_xticks(range(len(report.models)), [_short_name(model.model) for model in report.models], fontsize=7)
    axis.set_ylim(0, 120)  # room for the legend above 100 %
    axis.set_yticks(range(0, 101, 20))
    axis.set_ylabel("accuracy (%)")
    axis.set_title(f"accuracy per attack, ε = {epsilon:.4g}, n = {report.models[0].num_samples}", fontsize=9)
    axis.legend(fontsize=7, ncol=len(names), loc="upper center")
    figure.tight_layout()
    figure.savefig(path)


def plot_robustness_curve(report: EvaluationReport, path: Path) -> None:
    """AutoAttack-style worst-case accuracy against ε, per model, from the clean accuracy at ε = 0."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 3.6), dpi=120)
    axis = figure.subplots()
    epsilons = sorted(report.settings.epsilons)
    for index, model in enumerate(report.models):
        values = [model.clean_accuracy] + [model.at(epsilon).worst_case_accuracy for epsilon in epsilons]
        # The colour cycle has 10 colours; past that a line style keeps every model distinguishable.
        style = {"color": f"C{index % 10}", "linestyle": ("-", "--", ":", "-.")[index // 10 % 4]}
        axis.plot([0.0, *epsilons], [100 * v for v in values], marker="o", label=_short_name(model.model), **style)
    axis.set_xlabel("ε (L∞, pixel units)")
    axis.set_ylabel("accuracy (%)")
    axis.set_ylim(0, 105)
    axis.set_title("robustness vs ε (AutoAttack-style worst case)", fontsize=9)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path)


def write_outputs(report: EvaluationReport, output_dir: str | os.PathLike) -> list[Path]:
    """``eval.json``, ``eval.md``, ``accuracy.png`` and, with several ε, ``robustness_vs_eps.png``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report.save(output_dir / "eval.json")
    _write_atomically(output_dir / "eval.md", markdown_report(report))
    plot_accuracies(report, output_dir / "accuracy.png")
    written = [output_dir / name for name in ("eval.json", "eval.md", "accuracy.png")]
    if len(report.settings.epsilons) > 1:
        plot_robustness_curve(report, output_dir / "robustness_vs_eps.png")
        written.append(output_dir / "robustness_vs_eps.png")
    return written


def print_sanity_report(report: EvaluationReport) -> None:
    """Every check on stdout; each failed one again on stderr under a banner that cannot be missed."""
    for model in report.models:
        for check in model.sanity_checks:
            measured = ", ".join(f"{key} {value:.4g}" for key, value in check.measured.items())
            print(f"[{check.status:7}] {_short_name(model.model)}: {check.name} ({measured}; {check.threshold})")
    failed = [(model, check) for model in report.models for check in model.failed_checks]
    if failed:
        banner = "!" * 100
        lines = [
            banner,
            f"!!! SANITY CHECK FAILED ({len(failed)}): these robustness numbers are not trustworthy",
            banner,
        ]
        for model, check in failed:
            measured = ", ".join(f"{key} {value:.4g}" for key, value in check.measured.items())
            lines.append(f"FAILED {model.model}: {check.name}: {measured} (needs {check.threshold}). {check.note}")
        lines.append(banner)
        print("\n".join(lines), file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------------
# Command line


def _number(text: str) -> float:
    """A float or a fraction such as 8/255."""
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction such as 8/255, got {text!r}") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = EvaluationSettings()
    parser = argparse.ArgumentParser(
        prog="cropd-eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models = parser.add_mutually_exclusive_group(required=True)
    models.add_argument("--model", nargs="+", help="checkpoint folders or Hub ids to evaluate")
    models.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="EVAL",
        help="instead of evaluating, put earlier evaluations (eval.json files or their folders, same settings) "
        "into one table, plots and sanity report in --output_dir",
    )
    parser.add_argument("--dataset", choices=DATASET_NAMES, default=defaults.dataset, help="default: %(default)s")
    parser.add_argument("--split", default=defaults.split, help="default: %(default)s")
    parser.add_argument(
        "--data_seed",
        type=int,
        default=defaults.data_seed,
        help="seed that shuffled the embedded sets into train/test: the training run's seed, or test images leak "
        "from training (default: %(default)s)",
    )
    parser.add_argument(
        "--validation_size",
        type=int,
        default=defaults.validation_size,
        help="hold out this many training images as the `validation` split, as the training run's "
        "validation_size did (default: %(default)s)",
    )
    parser.add_argument("--num_samples", type=int, help="the first N samples of the split (default: all)")
    parser.add_argument(
        "--batch_size", type=int, default=defaults.batch_size, help="also the unit of resuming (default: %(default)s)"
    )
    parser.add_argument(
        "--epsilons",
        nargs="+",
        type=_number,
        default=list(defaults.epsilons),
        help="L∞ radii in pixel units, e.g. 0.1 or 8/255; the first is the reference ε of the plot and the "
        "monotonicity and transfer checks; several give the robustness-vs-ε curve (default: %(default)s)",
    )
    parser.add_argument("--attacks", nargs="+", choices=ATTACK_NAMES, default=list(ATTACK_NAMES), help="default: all")
    parser.add_argument(
        "--pgd_steps", nargs="+", type=int, default=list(defaults.pgd_steps), help="default: %(default)s"
    )
    parser.add_argument("--pgd_alpha", type=_number, help="PGD step, e.g. 2/255 (default: 2.5·ε/steps)")
    parser.add_argument("--pgd_restarts", type=int, default=defaults.pgd_restarts, help="default: %(default)s")
    parser.add_argument(
        "--apgd_steps",
        type=int,
        default=defaults.apgd_steps,
        help="steps per APGD run (AutoAttack uses 100; default: %(default)s, for CPU)",
    )
    parser.add_argument("--apgd_restarts", type=int, default=defaults.apgd_restarts, help="default: %(default)s")
    parser.add_argument(
        "--apgd_targets",
        type=int,
        default=defaults.apgd_targets,
        help="target classes of APGD-T, at most num_classes - 1 (default: %(default)s, as AutoAttack)",
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="seed of the random starts (default: %(default)s)"
    )
    parser.add_argument(
        "--transfer_from", help="reference model (the Identity baseline) for the white-box vs transfer check"
    )
    parser.add_argument(
        "--sanity_epsilon",
        type=_number,
        default=defaults.sanity_epsilon,
        help="large ε of the collapse check (default: %(default)s)",
    )
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/eval"), help="default: %(default)s")
    parser.add_argument(
        "--resume", action="store_true", help="reuse the batches a killed run of the same settings saved"
    )
    return parser.parse_args(argv)


def _load_checkpoint(name_or_path: str, device: torch.device) -> tuple[nn.Module, Any]:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(name_or_path).to(device).eval()
    return model, AutoImageProcessor.from_pretrained(name_or_path)


def main(argv: Sequence[str] | None = None) -> None:
    """`cropd-eval` / `training/evaluate_robustness.py`: evaluate checkpoints; write eval.json, eval.md, plots."""
    args = parse_args(argv)
    if args.merge:
        _merge(args.merge, args.output_dir)
        return
    try:
        settings = EvaluationSettings(
            epsilons=tuple(args.epsilons),
            attacks=tuple(args.attacks),
            pgd_steps=tuple(args.pgd_steps),
            pgd_alpha=args.pgd_alpha,
            pgd_restarts=args.pgd_restarts,
            apgd_steps=args.apgd_steps,
            apgd_restarts=args.apgd_restarts,
            apgd_targets=args.apgd_targets,
            sanity_epsilon=args.sanity_epsilon,
            batch_size=args.batch_size,
            seed=args.seed,
            dataset=args.dataset,
            split=args.split,
            data_seed=args.data_seed,
            validation_size=args.validation_size,
            num_samples=args.num_samples,
            transfer_from=args.transfer_from,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if importlib.util.find_spec("matplotlib") is None:  # the plots come last: fail before hours of attacks
        print("error: the plots need matplotlib: pip install 'cropd-hf[train]'", file=sys.stderr)
        raise SystemExit(2)

    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    splits = load_image_dataset(args.dataset, seed=args.data_seed, validation_size=args.validation_size)
    if args.split not in splits:
        print(f"error: {args.dataset} has no split {args.split!r}; accepted: {list(splits)}", file=sys.stderr)
        raise SystemExit(2)
    data = splits[args.split]
    if args.num_samples is not None:
        data = data.select(range(min(args.num_samples, len(data))))
    settings = dataclasses.replace(settings, num_samples=len(data))  # what was evaluated, not what was asked
    transfer = _load_checkpoint(args.transfer_from, accelerator.device)[0] if args.transfer_from else None

    results = []
    for name in args.model:
        started = time.monotonic()
        model, processor = _load_checkpoint(name, accelerator.device)
        key = _fingerprint(settings.to_dict(), name, model, processor.to_dict(), transfer)
        result = evaluate_model(
            model,
            with_pixel_values(data, processor),
            settings,
            accelerator=accelerator,
            transfer_model=transfer,
            state_dir=args.output_dir / "state" / f"{_short_name(name)}-{key}",
            resume=args.resume,
            model_name=name,
        )
        results.append(result)
        accelerator.print(
            f"{name}: clean {result.clean_accuracy:.4f}, worst case "
            + ", ".join(f"ε={r.epsilon:.4g} {r.worst_case_accuracy:.4f}" for r in result.results)
            + f" ({time.monotonic() - started:.0f} s on {accelerator.num_processes} process(es))"
        )
    if accelerator.is_main_process:
        report = EvaluationReport(settings, results)
        written = write_outputs(report, args.output_dir)
        print(markdown_report(report))
        print_sanity_report(report)
        print("wrote " + ", ".join(str(path) for path in written))
    accelerator.wait_for_everyone()
    accelerator.end_training()


def _merge(paths: Sequence[Path], output_dir: Path) -> None:
    files = [path / "eval.json" if path.is_dir() else path for path in paths]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        accepted = "--merge takes eval.json files or folders holding one"
        print(f"error: no eval.json at {', '.join(missing)}; {accepted}", file=sys.stderr)
        raise SystemExit(2)
    try:
        report = merge_reports([EvaluationReport.load(path) for path in files])
    except (ValueError, KeyError, TypeError) as error:
        print(f"error: cannot merge {', '.join(map(str, files))}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    written = write_outputs(report, output_dir)
    print(markdown_report(report))
    print_sanity_report(report)
    print("wrote " + ", ".join(str(path) for path in written))


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def _write_atomically(path: Path, text: str) -> None:
    """Write to a temporary name and rename: a kill never leaves a half-written file behind."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)
