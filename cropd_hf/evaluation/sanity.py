"""The sanity checks after Carlini et al. 2019 ("On Evaluating Adversarial Robustness") and ``summarize``, which
turns the per-sample records of every batch into a ``ModelResult``: accuracies, worst case, checks, fidelity."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from ..metrics import load_robust_accuracy
from .fidelity import summarize_fidelity
from .results import AttackResult, EpsilonResult, ModelResult, SanityCheck
from .settings import NOT_ATTACKED, EvaluationSettings, SuiteAttack, _epsilon_key, _plan

COLLAPSE_THRESHOLD = 0.01
GRADIENT_THRESHOLD = 0.99


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
    records: dict[str, list[Any]],
    settings: EvaluationSettings,
    num_classes: int,
    model_name: str,
    with_transfer: bool,
) -> ModelResult:
    """Accuracies and sanity checks from the per-sample records of every batch (concatenated in sample order), and
    the purifier's fidelity when the records hold it (``fidelity/...`` keys, floats)."""
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

    checks: list[SanityCheck] = []
    if settings.sanity_checks:
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
        checks += [
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
    epsilon_keys = [_epsilon_key(epsilon) for epsilon in settings.epsilons]
    fidelity = summarize_fidelity(records, settings.epsilons, epsilon_keys)
    return ModelResult(model_name, num_samples, accuracy(), results, checks, fidelity)
