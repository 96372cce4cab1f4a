"""What defines an evaluation's numbers: ``EvaluationSettings``, the attack suite at one ε, and the plan of every
attack a batch goes through (the suite at each ε, then the attacks of the sanity checks)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ..attacks import APGD, FGSM, PGD, Attack
from ..data import EMBEDDED_MNIST
from ._util import _is_positive_int, _jsonable

ATTACK_NAMES = ("fgsm", "pgd", "apgd-ce", "apgd-t")
CONVENTION = (
    "A sample counts as robust to an attack only if the model classifies it correctly both clean and under that "
    "attack. The AutoAttack-style worst case counts it as robust only if every attack of the suite fails. Attacks "
    "marked cascade run only on the samples still robust to the attacks before them (AutoAttack's practice); their "
    "accuracy is only defined cumulatively. Prediction -1 in the per-batch state marks a sample that was not attacked "
    "because it was already misclassified."
)
NOT_ATTACKED = -1


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
    # False: only the suite and the gradient check (a training run's quick look); the full checks cost ~3x the suite.
    sanity_checks: bool = True
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
        values = {field.name: _jsonable(getattr(self, field.name)) for field in dataclasses.fields(self)}
        if values["sanity_checks"]:
            # Reports (and resume states) written before the field existed all ran the checks: same settings.
            del values["sanity_checks"]
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EvaluationSettings:
        return cls(**values)


def quick_suite_settings(epsilon: float, pgd_steps: Sequence[int] = (10, 20), **overrides: Any) -> EvaluationSettings:
    """A cheap suite for a training script: FGSM and PGD-k for each k of ``pgd_steps`` at the single ``epsilon``,
    PGD's step ``2.5·ε/steps`` (Madry et al.'s rule), no APGD. ``overrides`` sets any other field of
    ``EvaluationSettings`` (``batch_size``, ``seed``, ``dataset``, ``split``, ``num_samples``, ...).

    The sanity checks still run: more effort (PGD with twice the steps and twice the restarts), the large-ε collapse
    (PGD, then APGD-CE on the few samples PGD leaves standing: about free for an honest model) and gradient health.
    """
    values = {"epsilons": (epsilon,), "attacks": ("fgsm", "pgd"), "pgd_steps": tuple(pgd_steps), "pgd_alpha": None}
    return EvaluationSettings(**{**values, **overrides})


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
    if not settings.sanity_checks:
        return chains
    reference, steps, restarts = settings.reference_epsilon, settings.max_pgd_steps, settings.pgd_restarts
    effort = [
        SuiteAttack(f"pgd{2 * steps}", settings.pgd(reference, 2 * steps)),
        SuiteAttack(f"pgd{steps}-restarts{2 * restarts}", settings.pgd(reference, steps, restarts=2 * restarts)),
    ]
    if "pgd" not in settings.attacks:
        effort.insert(0, SuiteAttack(f"pgd{steps}", settings.pgd(reference, steps)))
    chains.append(_Chain("effort", reference, tuple(effort)))
    # At a large ε a fixed absolute step could not even reach the ball's border: the step follows ε here.
    # APGD-CE stays in the collapse chain whatever ``settings.attacks`` holds (a suite without APGD too): it runs
    # only on the samples PGD leaves robust, about none for an honest model, and it is the step-size-free attack
    # that still breaks a model whose PGD is stuck. It needs no minimum number of classes (APGD-T would).
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
