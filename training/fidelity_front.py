"""The fidelity–robustness front: how faithful each purifier is (clean PSNR of g(x) against x) against how robust
its chain is (AutoAttack-style worst case), one point per run, as a table and a plot.

    python training/fidelity_front.py training/results/fidelity-front/*/eval.json \\
        training/results/ablation-validation/best-grid2-head20-pgd2/eval.json \\
        --checkpoint outputs/best-grid2-head20-pgd2=training/checkpoints/embedded-robust-encoder \\
        --run_file outputs/best-grid2-head20-pgd2=training/configs/embedded-robust-encoder.yaml \\
        --output docs/fidelity-front

Every point comes from a `cropd-eval` report (eval.json) made with the same settings (checked); a report written
before the evaluator measured fidelity takes its PSNR from `--checkpoint MODEL=FOLDER` on the report's split. Each
row names the run file that trained the model (`training/configs/fidelity/<name>.yaml` when there is one).
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from cropd_hf import CRoPDForImageClassification, CRoPDImageProcessor
from cropd_hf.data import load_image_dataset, pixel_tensors
from cropd_hf.evaluation import EvaluationReport, merge_reports, purifier_fidelity

REPO = Path(__file__).resolve().parents[1]
RUN_FILES = REPO / "training" / "configs" / "fidelity"
PURIFIER_FLOOR_DB = 20.0


def measured_psnr(checkpoint: Path, report: EvaluationReport) -> float:
    """Clean PSNR of a checkpoint's purifier on the report's samples."""
    settings = report.settings
    split = load_image_dataset(settings.dataset, seed=settings.data_seed, validation_size=settings.validation_size)
    model = CRoPDForImageClassification.from_pretrained(checkpoint).eval()
    size = {"height": model.config.image_size, "width": model.config.image_size}
    processor = CRoPDImageProcessor(size=size, num_channels=model.config.num_channels)
    data = split[settings.split].select(range(settings.num_samples))
    return purifier_fidelity(model, pixel_tensors(data, processor)[0])["psnr_db"]


def front_rows(report: EvaluationReport, checkpoints: dict[str, Path], run_files: dict[str, str]) -> list[dict]:
    epsilon = report.settings.reference_epsilon
    rows = []
    for model in report.models:
        name = model.model.rstrip("/").rsplit("/", 1)[-1]
        fidelity = model.fidelity or {}
        psnr = fidelity.get("clean_psnr_db")
        if psnr is None and model.model in checkpoints:
            psnr = measured_psnr(checkpoints[model.model], report)
        at_epsilon = next((entry for entry in fidelity.get("epsilons", []) if entry["epsilon"] == epsilon), {})
        run_file = REPO / run_files[model.model] if model.model in run_files else RUN_FILES / f"{name}.yaml"
        rows.append(
            {
                "name": name,
                "run_file": str(run_file.relative_to(REPO)) if run_file.is_file() else None,
                "psnr_db": psnr,
                "clean": model.clean_accuracy,
                "worst_case": model.at(epsilon).worst_case_accuracy,
                "purified_mse": at_epsilon.get("purified_mse"),
                "perturbation_mse": at_epsilon.get("perturbation_mse"),
                "sanity": "FAILED" if model.failed_checks else "pass",
            }
        )
    return sorted(rows, key=lambda row: -(row["psnr_db"] or 0))


def markdown(rows: list[dict], report: EvaluationReport) -> str:
    settings = report.settings
    lines = [
        "| run | clean PSNR (dB) | clean | worst case | ‖g(x_adv)−x‖² / ‖x_adv−x‖² | sanity | train with |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        psnr = "—" if row["psnr_db"] is None else f"{row['psnr_db']:.1f}"
        flag = "" if row["psnr_db"] is None or row["psnr_db"] >= PURIFIER_FLOOR_DB else " (not a purifier)"
        ratio = "—" if row["purified_mse"] is None else f"{row['purified_mse']:.4f} / {row['perturbation_mse']:.4f}"
        command = f"`accelerate launch training/train.py --config {row['run_file']}`" if row["run_file"] else "—"
        lines.append(
            f"| {row['name']} | {psnr}{flag} | {100 * row['clean']:.1f} | **{100 * row['worst_case']:.1f}** | "
            f"{ratio} | {row['sanity']} | {command} |"
        )
    lines += [
        "",
        f"{settings.dataset} / {settings.split} (validation_size {settings.validation_size}), first "
        f"{settings.num_samples} samples, ε = {settings.reference_epsilon:g}; worst case = AutoAttack-style "
        f"(FGSM, PGD-{'/'.join(map(str, settings.pgd_steps))}, APGD-CE, APGD-T, {settings.apgd_steps} steps), "
        "white-box on the whole chain. Evaluated with `cropd-eval --model outputs/fidelity/<run> --split validation "
        f"--validation_size {settings.validation_size} --num_samples {settings.num_samples}`.",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4), dpi=120)
    axis = figure.subplots()
    points = [row for row in rows if row["psnr_db"] is not None]
    axis.scatter([row["psnr_db"] for row in points], [100 * row["worst_case"] for row in points])
    for index, row in enumerate(sorted(points, key=lambda row: row["psnr_db"])):
        # Points a few dB apart sit at the same height: stagger their names upwards so each stays readable.
        axis.annotate(row["name"], (row["psnr_db"], 100 * row["worst_case"]), fontsize=6,
                      xytext=(3, 3 + 9 * (index % 4)), textcoords="offset points")  # fmt: skip
    axis.axvline(PURIFIER_FLOOR_DB, color="grey", linestyle="--", linewidth=1)
    axis.text(PURIFIER_FLOOR_DB + 0.3, 94, "purifier ≥ 20 dB →", fontsize=7, color="grey")
    axis.set_xlabel("clean PSNR of g(x) against x (dB)")
    axis.set_ylabel("AutoAttack-style worst case (%)")
    axis.set_ylim(0, 100)
    axis.set_title("fidelity–robustness front (validation)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, help="eval.json files (or their folders) of cropd-eval")
    parser.add_argument(
        "--checkpoint", action="append", default=[], help="MODEL=FOLDER: where to measure the PSNR of a report "
        "written without fidelity figures"
    )  # fmt: skip
    parser.add_argument(
        "--run_file", action="append", default=[], help="MODEL=RUN_FILE: the run file of a model trained outside "
        "training/configs/fidelity/"
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "fidelity-front", help="prefix of .md/.png")
    args = parser.parse_args(argv)
    files = [path / "eval.json" if path.is_dir() else path for path in args.reports]
    try:
        report = merge_reports([EvaluationReport.load(path) for path in files])
        checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
        run_files = dict(item.split("=", 1) for item in args.run_file)
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    torch.set_grad_enabled(False)
    rows = front_rows(report, {name: Path(folder) for name, folder in checkpoints.items()}, run_files)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".md").write_text(markdown(rows, report))
    args.output.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, args.output.with_suffix(".png"))
    print(markdown(rows, report))


if __name__ == "__main__":
    main()
