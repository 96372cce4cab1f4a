"""The numbers of one evaluated model: per ε the accuracies under each attack and the worst case, the sanity
checks and, for a model with a purifier, the purifier's fidelity (``cropd_hf.evaluation.fidelity``)."""

from __future__ import annotations

import dataclasses
from typing import Any


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
    # Purifier fidelity (``fidelity.summarize_fidelity``): clean MSE and PSNR of g(x) vs x, and per ε the mean
    # ‖g(x_adv) − x‖² and ‖x_adv − x‖² over the attacked samples. None for a model without purifier.
    fidelity: dict[str, Any] | None = None

    @property
    def failed_checks(self) -> list[SanityCheck]:
        return [check for check in self.sanity_checks if check.passed is False]

    def at(self, epsilon: float) -> EpsilonResult:
        return next(result for result in self.results if result.epsilon == epsilon)

    def fidelity_at(self, epsilon: float) -> dict[str, Any] | None:
        """The fidelity summary at ``epsilon`` (purified and perturbation MSE and PSNR), None without purifier."""
        if self.fidelity is None:
            return None
        return next(entry for entry in self.fidelity["epsilons"] if entry["epsilon"] == epsilon)
