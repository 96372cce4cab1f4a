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
For a model with a purifier ``g`` the evaluation also measures the purifier's fidelity, from forward passes of ``g``
on images the attacks already made: the clean ``‖g(x) − x‖²`` and PSNR, and per ε ``‖g(x_adv) − x‖²`` against the
perturbation ``‖x_adv − x‖²`` for each sample's worst-case adversarial image (``cropd_hf.evaluation.fidelity``).

Cost: a sample that survives every attack at one ε goes through about 650 forward-backward passes with the
defaults (APGD-T alone 9 × 50, the sanity checks about 120); a broken sample skips the rest of the APGD cascade.

    accelerate launch -m cropd_hf.evaluation --model outputs/embedded outputs/embedded-identity \\
        --epsilons 0.1 0.05 0.2 0.3 --transfer_from outputs/embedded-identity --output_dir outputs/eval

Models evaluated one at a time (in parallel, or over several sessions) with the same settings share one table:

    cropd-eval --merge outputs/eval-a outputs/eval-b --output_dir outputs/eval

The package: ``settings`` (what defines the numbers: settings, suite, plan), ``runner`` (batches, resume state,
``evaluate_model``), ``fidelity`` (the purifier's reconstruction errors), ``sanity`` (the checks, ``summarize``),
``results`` (the result dataclasses), ``report`` (``eval.json``, ``eval.md``, plots, console), ``cli``.
"""

from .cli import main, parse_args
from .fidelity import PSNR_CAP_DB, psnr_from_mse, purifier_fidelity
from .report import (
    EvaluationReport,
    markdown_report,
    merge_reports,
    plot_accuracies,
    plot_robustness_curve,
    print_sanity_report,
    write_outputs,
)
from .results import AttackResult, EpsilonResult, ModelResult, SanityCheck
from .runner import evaluate_model, input_gradient_health
from .sanity import (
    check_gradient_health,
    check_large_epsilon_collapse,
    check_more_effort_does_not_help,
    check_white_box_beats_transfer,
    noise_margin,
    summarize,
)
from .settings import ATTACK_NAMES, EvaluationSettings, SuiteAttack, attack_suite, quick_suite_settings

__all__ = [
    "ATTACK_NAMES",
    "PSNR_CAP_DB",
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
    "merge_reports",
    "noise_margin",
    "parse_args",
    "plot_accuracies",
    "plot_robustness_curve",
    "print_sanity_report",
    "psnr_from_mse",
    "purifier_fidelity",
    "quick_suite_settings",
    "summarize",
    "write_outputs",
]
