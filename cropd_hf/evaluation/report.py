"""The outputs of an evaluation: ``eval.json`` (``EvaluationReport``), merged reports, ``eval.md``, the plots and
the console report of the sanity checks."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import write_text_atomically
from ._util import _jsonable
from .results import AttackResult, EpsilonResult, ModelResult, SanityCheck
from .settings import CONVENTION, EvaluationSettings


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
                # eval.json files written before the purifier fidelity was measured have no such field.
                fidelity=model.get("fidelity"),
            )
            for model in values["models"]
        ]
        return cls(EvaluationSettings.from_dict(values["settings"]), models, values["convention"])

    def save(self, path: str | os.PathLike) -> None:
        write_text_atomically(Path(path), json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

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
    # The fidelity columns only when some model has a purifier: a report of Identity models stays as it was.
    with_fidelity = any(model.fidelity is not None for model in report.models)
    for epsilon in settings.epsilons:
        first = report.models[0].at(epsilon)
        columns = [attack.name for attack in first.attacks if not attack.cascade]
        header = ["model", "clean", *(_display(name) for name in columns), "AutoAttack-style"]
        header += [*FIDELITY_COLUMNS, "sanity"] if with_fidelity else ["sanity"]
        lines += [f"## ε = {epsilon:.4g}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for model in report.models:
            result = model.at(epsilon)
            standalone = {attack.name: attack.accuracy for attack in result.attacks if not attack.cascade}
            cells = [_short_name(model.model), f"{100 * model.clean_accuracy:.2f}"]
            cells += [f"{100 * standalone[name]:.2f}" for name in columns]
            cells.append(f"**{100 * result.worst_case_accuracy:.2f}**")
            if with_fidelity:
                cells += _fidelity_cells(model, epsilon)
            cells.append("FAILED" if model.failed_checks else "pass")
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Attacks (AutoAttack-style = worst case of all):", ""]
        lines += [f"- {_display(attack.name)}: {_describe(attack.settings)}" for attack in first.attacks]
        lines.append("")
    if with_fidelity:
        lines += [FIDELITY_NOTE, ""]
    lines += ["## Sanity checks (Carlini et al. 2019)", "", "| model | check | result | measured | threshold |"]
    lines.append("|---|---|---|---|---|")
    for model in report.models:
        for check in model.sanity_checks:
            measured = ", ".join(f"{key} {value:.4g}" for key, value in check.measured.items()) or "—"
            status = f"**{check.status}**" if check.passed is False else check.status
            lines.append(f"| {_short_name(model.model)} | {check.name} | {status} | {measured} | {check.threshold} |")
    return "\n".join(lines) + "\n"


FIDELITY_COLUMNS = ("clean PSNR (dB)", "‖g(x_adv)−x‖² / ‖x_adv−x‖²")
FIDELITY_NOTE = (
    "Purifier fidelity (— without purifier): PSNR of g(x) against the clean x; mean squared error per pixel of the "
    "purified worst-case adversarial image, ‖g(x_adv)−x‖², and of the perturbation, ‖x_adv−x‖², over the samples "
    "attacked (correct clean). x_adv: the adversarial example of the last attack of the suite that broke the "
    "prediction, else of the last attack run. A first number below the second: g pulls attacked images back toward "
    "the clean ones."
)


def _fidelity_cells(model: ModelResult, epsilon: float) -> list[str]:
    at = model.fidelity_at(epsilon)
    if model.fidelity is None or at is None:
        return ["—", "—"]
    return [
        _format(model.fidelity["clean_psnr_db"], ".2f"),
        f"{_format(at['purified_mse'])} / {_format(at['perturbation_mse'])}",
    ]


def _format(value: float | None, spec: str = ".4g") -> str:
    return "—" if value is None else format(value, spec)


def fidelity_summary(model: ModelResult) -> str:
    """The purifier's fidelity in one line for the console ('' without purifier)."""
    if model.fidelity is None:
        return ""
    per_epsilon = ", ".join(
        f"ε={entry['epsilon']:.4g} {_format(entry['purified_mse'])} / {_format(entry['perturbation_mse'])}"
        for entry in model.fidelity["epsilons"]
    )
    return (
        f"purifier: clean PSNR {_format(model.fidelity['clean_psnr_db'], '.2f')} dB, "
        f"‖g(x_adv)−x‖² / ‖x_adv−x‖² {per_epsilon}"
    )


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
    write_text_atomically(output_dir / "eval.md", markdown_report(report))
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
