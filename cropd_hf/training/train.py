"""Train a CRoPD model: stage 1 (purifier), stage 2 (linear head), then evaluation, on one or several processes.

    accelerate launch training/train.py                                   # the embedded default
    accelerate launch training/train.py --config training/configs/embedded-robust-encoder.yaml
    accelerate launch training/train.py --resume_from_checkpoint latest   # after an interruption
    accelerate launch training/train.py --config training/configs/cifar10-vit-mae-large.yaml --dry_run  # offline

Stage 1 trains the purifier g with ||g(x) - x||² + λ·L_con(z(x), z(x_adv)), x_adv = FGSM with random start on
L_con (PGD with model.train_attack_steps > 1). Stage 2 freezes g and trains the head h on f(g(x)), on clean or
adversarial inputs. The evaluation attacks the whole chain (FGSM, PGD-k) at the run's ε. The output folder gets the
checkpoint, metrics.json, a plot and the model card; it appears whole at the end of the run or not at all.
"""

import argparse
import dataclasses
import importlib.metadata
import json
import logging
import math
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from cropd_hf import (
    CRoPDConfig,
    CRoPDForImageClassification,
    CRoPDImageProcessor,
    CRoPDModel,
    RobustImageClassificationPipeline,
)
from cropd_hf.attacks import FGSM, PGD
from cropd_hf.data import label_names, load_image_dataset, pixel_tensors, random_shift, with_pixel_values
from cropd_hf.evaluation import EvaluationSettings, evaluate_model, purifier_fidelity, quick_suite_settings
from cropd_hf.files import (
    InterruptedReplaceError,
    check_no_interrupted_replace,
    replace_folder,
    tensors_sha256,
    weight_checksums,
)
from cropd_hf.losses import CRoPDTrainingObjective, contrastive_adversarial_examples
from cropd_hf.training.checkpoints import (
    STAGES,
    TrainingProgress,
    latest_checkpoint,
    resume_state,
    save_checkpoint,
)
from cropd_hf.training.dry_run import DryRun, dry_run_settings
from cropd_hf.training.frozen_state import leave_frozen_foundation_out
from cropd_hf.training.push import PushError, check_hub_access, push_checkpoint
from cropd_hf.training.report import reproduce_command, write_report
from cropd_hf.training.run_config import (
    DEFAULT_CONFIG,
    RunConfig,
    RunConfigError,
    load_run_config,
    resolve_local_path,
)

logger = get_logger(__name__)
# Where a local foundation model is copied inside a checkpoint.
FOUNDATION_SUBFOLDER = "foundation"
# Held-out digits on which g's PSNR is logged after every purifier epoch.
FIDELITY_SAMPLES = 500


def positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"invalid value {value!r}; accepted: an integer >= 1")
    return int(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="run file (YAML) in training/configs")
    parser.add_argument("--output_dir", type=Path, help="default: the run file's output_dir, or outputs/<run name>")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="replace an existing output folder")
    parser.add_argument(
        "--resume_from_checkpoint", help="a folder written by save_state, or 'latest' for the run's newest one"
    )
    parser.add_argument(
        "--allow_changed_settings",
        action="store_true",
        help="resume even though the run file changed since the checkpoint (recorded in metrics.json and the card)",
    )
    parser.add_argument("--keep_checkpoints", action="store_true", help="keep the per-epoch states after success")
    parser.add_argument(
        "--gradient_accumulation_steps",
        type=positive_int,
        default=None,
        help="one optimizer step every N batches (accelerate's accumulate); default: the environment's "
        "ACCELERATE_GRADIENT_ACCUMULATION_STEPS, else 1",
    )
    parser.add_argument(
        "--push_to_hub", action="store_true", help="upload the output folder to the Hub, as cropd-push does"
    )
    parser.add_argument("--hub_model_id", help="org/name of the Hub repository for --push_to_hub")
    parser.add_argument("--private", action="store_true", help="with --push_to_hub: create the repository private")
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="the run's code path offline in a minute: random scaled-down foundation model, synthetic data, a few "
        "steps (cropd_hf/training/dry_run.py); the output folder, metrics and card say so",
    )
    return parser.parse_args(argv)


def resolve_paths(args: argparse.Namespace, run: RunConfig) -> tuple[Path, Path]:
    """The final output folder and the run's working folder (checkpoints, logs, the output being built)."""
    output_dir = args.output_dir or Path(run.output_dir or Path("outputs") / args.config.stem)
    return output_dir, output_dir.with_name(output_dir.name + ".work")


def check_before_work(args: argparse.Namespace, run: RunConfig, output_dir: Path, work_dir: Path) -> None:
    """Everything that can be refused is refused here, before data or models are touched."""
    if output_dir.exists() and not args.overwrite_output_dir and not args.resume_from_checkpoint:
        raise RunConfigError(
            f"{output_dir} exists; pass --overwrite_output_dir to replace it (it is replaced only once the new "
            "run has finished), or choose another --output_dir."
        )
    try:
        check_no_interrupted_replace(output_dir)
    except InterruptedReplaceError as error:
        staging = work_dir / "output"  # the finished output that run was moving into place
        taken = f" Or take the output that run had finished: `mv {staging} {output_dir}`." if staging.is_dir() else ""
        raise RunConfigError(f"{error}{taken}") from None
    check_writable(work_dir, "the run's working folder (checkpoints, the output being built)")
    check_writable(output_dir.parent, "the folder the output folder goes into")
    if args.push_to_hub:
        if not args.hub_model_id:
            raise RunConfigError("--push_to_hub needs --hub_model_id org/name.")
        # A local foundation model is no reason to refuse: the output carries it as ./foundation, uploaded with it.
        try:  # the login and the repository id, before hours of training rather than after
            check_hub_access(args.hub_model_id)
        except PushError as error:
            raise RunConfigError(f"--push_to_hub refused: {error}") from None


def check_writable(folder: Path, role: str) -> None:
    """Create `folder` if needed and write a probe file into it: an unwritable place is found before any work."""
    probe = folder / f".write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise RunConfigError(
            f"{folder} ({role}) cannot be written: {error.strerror or error}. Choose another --output_dir."
        ) from None


def check_steps_per_epoch(steps: int, num_samples: int, run: RunConfig) -> None:
    if steps == 0:
        raise RunConfigError(
            f"no training step per epoch: {num_samples} training images (max_train_samples: "
            f"{run.max_train_samples}) make no full batch of batch_size: {run.batch_size} (the last, incomplete "
            "batch is dropped). Use a batch_size of at most the number of training images."
        )


def build_model(run: RunConfig, labels: list[str]) -> CRoPDForImageClassification:
    model_settings = dict(run.model)
    foundation = model_settings.pop("foundation_model_name_or_path", CRoPDConfig().foundation_model_name_or_path)
    if os.path.isdir(foundation):
        # A checkpoint that records a relative path only loads from one working directory.
        foundation = str(Path(foundation).resolve())
    config = CRoPDConfig.for_foundation(
        foundation,
        id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)},
        **model_settings,
    )
    model = CRoPDForImageClassification(config)
    if run.purifier_from is not None:
        load_purifier(model, resolve_local_path(run.purifier_from))
    return model


def load_purifier(model: CRoPDForImageClassification, source: str) -> None:
    """Copy the purifier of the CRoPD checkpoint `source` into `model` (cross-dataset transfer, or a new head)."""
    if model.purifier is None:
        raise RunConfigError(
            f"purifier_from={source!r} was given, but the model has no purifier (use_purifier: false)."
        )
    try:
        purifier = CRoPDModel.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise RunConfigError(f"purifier_from={source!r}: not a loadable CRoPD checkpoint ({error}).") from error
    try:
        model.purifier.load_state_dict(purifier.state_dict())
    except RuntimeError as error:
        raise RunConfigError(
            f"purifier_from={source!r}: its purifier does not fit the run's model section (the architecture fields "
            f"must be the same as the checkpoint's config.json): {str(error).splitlines()[0]}"
        ) from error


def make_optimizer(parameters: Any, learning_rate: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(list(parameters), lr=learning_rate, weight_decay=weight_decay)


def train(args: argparse.Namespace) -> None:
    run = load_run_config(args.config)
    if args.dry_run:
        run = dry_run_settings(run, args)
    output_dir, work_dir = resolve_paths(args, run)
    check_before_work(args, run, output_dir, work_dir)

    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        log_with=None if run.report_to == "none" else run.report_to,
        project_dir=str(work_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # Each stage trains one part of the model; DDP must not wait for the other part's gradients.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        # `accelerate launch --gradient_accumulation_steps` sets this only for DeepSpeed: train.py takes its own.
        gradient_accumulation_steps=args.gradient_accumulation_steps or 1,
    )
    set_seed(run.seed)
    if run.report_to != "none":
        # TensorBoard's hparams take scalars only.
        hparams = {**vars(run), **{f"model.{key}": value for key, value in run.model.items()}}
        hparams.pop("model")
        accelerator.init_trackers(
            args.config.stem,
            config={k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()},
        )

    dry_run = DryRun.prepare(run, work_dir, accelerator) if args.dry_run else None
    try:
        data_dir = dry_run.data_dir if dry_run else None
        splits = load_image_dataset(run.dataset, seed=run.seed, validation_size=run.validation_size, data_dir=data_dir)
    except ValueError as error:  # a validation split as large as the training set: said with the key
        raise RunConfigError(f"{args.config}: invalid value for key 'validation_size': {error}") from None
    if run.max_train_samples is not None:
        splits["train"] = splits["train"].select(range(min(run.max_train_samples, len(splits["train"]))))
    model = build_model(run, label_names(splits["train"]))
    config = model.config
    processor = CRoPDImageProcessor(
        size={"height": config.image_size, "width": config.image_size}, num_channels=config.num_channels
    )
    train_loader = torch.utils.data.DataLoader(
        with_pixel_values(splits["train"], processor), batch_size=run.batch_size, shuffle=True, drop_last=True
    )
    stage_epochs = {
        "reconstruction": run.reconstruction_epochs,
        "purifier": run.purifier_epochs,
        "head": run.head_epochs,
    }
    # The Identity baseline has no purifier, hence no stage 1 and no warm start.
    stages = tuple(stage for stage in STAGES if stage_epochs[stage] and (config.use_purifier or stage == "head"))
    optimizers = {"head": make_optimizer(model.classifier.parameters(), run.head_learning_rate, 0.0)}
    if config.use_purifier:
        for stage, learning_rate in (
            ("reconstruction", run.reconstruction_learning_rate),
            ("purifier", run.purifier_learning_rate),
        ):
            optimizers[stage] = make_optimizer(model.purifier.parameters(), learning_rate, run.purifier_weight_decay)
    # Counted on the whole loader: accelerate steps a prepared scheduler once per process per optimizer step, and
    # there is one optimizer step per gradient_accumulation_steps batches (and one at the end of each epoch).
    check_steps_per_epoch(len(train_loader), len(splits["train"]), run)
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.gradient_accumulation_steps)
    schedulers = {
        stage: get_cosine_schedule_with_warmup(
            optimizers[stage],
            num_warmup_steps=int(run.warmup_ratio * stage_epochs[stage] * steps_per_epoch),
            num_training_steps=max(1, stage_epochs[stage] * steps_per_epoch),
        )
        for stage in stages
    }
    objective = CRoPDTrainingObjective(model)
    objective, train_loader, *prepared = accelerator.prepare(
        objective, train_loader, *(optimizers[stage] for stage in stages), *(schedulers[stage] for stage in stages)
    )
    optimizers = dict(zip(stages, prepared[: len(stages)], strict=True))
    schedulers = dict(zip(stages, prepared[len(stages) :], strict=True))
    left_out, saved = leave_frozen_foundation_out(accelerator, objective, model.foundation)
    logger.info(
        f"per-epoch states leave out the frozen foundation model f ({left_out} of {left_out + saved} tensors): it "
        f"never changes and is loaded again from {model.foundation_location()} on resume",
        main_process_only=True,
    )
    precision = {
        "mixed_precision": accelerator.mixed_precision,
        "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
    }
    progress = TrainingProgress({**resolved_settings(run), **precision})
    changed_settings: list[str] = []
    if args.resume_from_checkpoint:
        checkpoint = (
            latest_checkpoint(work_dir)
            if args.resume_from_checkpoint == "latest"
            else Path(args.resume_from_checkpoint)
        )
        # Every state file is checked before it is loaded, through torch's restricted unpickler only.
        changed_settings = resume_state(
            accelerator, checkpoint, progress, args.allow_changed_settings, optimizers.values(), schedulers.values()
        )
        accelerator.print(f"resumed from {checkpoint}: epochs done {progress.epochs_done}")

    unwrapped = accelerator.unwrap_model(objective).model
    # g's fidelity is watched on held-out digits every purifier epoch: the validation split, else the eval split.
    fidelity_split = "validation" if "validation" in splits else run.eval_split
    fidelity_images = pixel_tensors(splits[fidelity_split], processor)[0][:FIDELITY_SAMPLES].to(accelerator.device)
    fidelity_log: list[dict[str, Any]] = []
    for stage in stages:
        for epoch in range(progress.epochs_done[stage], stage_epochs[stage]):
            train_loader.set_epoch(epoch)
            metrics = train_one_epoch(
                accelerator, objective, train_loader, optimizers[stage], schedulers[stage], run, stage, epoch
            )
            progress.epochs_done[stage] = epoch + 1
            if stage != "head":
                fidelity = purifier_fidelity(unwrapped, fidelity_images)
                metrics[f"{fidelity_split}_psnr_db"] = fidelity["psnr_db"]
                fidelity_log.append({"stage": stage, "epoch": epoch + 1, "split": fidelity_split, **metrics})
                if stage == "purifier":  # the warm start begins from a flat grey image, by design
                    warn_if_unfaithful(
                        metrics[f"{fidelity_split}_psnr_db"], run.min_purifier_psnr, f"{stage} epoch {epoch + 1}"
                    )
            logger.info(
                f"{stage} epoch {epoch + 1}/{stage_epochs[stage]}: {format_metrics(metrics)}", main_process_only=True
            )
            accelerator.log({f"{stage}/{key}": value for key, value in metrics.items()}, step=epoch + 1)
            save_checkpoint(accelerator, work_dir, stage, epoch + 1, progress)

    unwrapped.eval()
    # Logged by every process: equal digests mean the gradients were synchronized.
    trained = {name: p for name, p in unwrapped.named_parameters() if not name.startswith("foundation")}
    logger.info(f"trained weights sha256: {tensors_sha256(trained)}", main_process_only=False)
    results = evaluate_trained_model(accelerator, unwrapped, splits[run.eval_split], processor, run)
    results["environment"] = run_environment(accelerator)
    results["training"] = {
        **precision,
        "num_processes": accelerator.num_processes,
        "effective_batch_size": run.batch_size * accelerator.num_processes * accelerator.gradient_accumulation_steps,
    }
    results["purifier_fidelity_per_epoch"] = fidelity_log
    if changed_settings:
        results["resumed_with_changed_settings"] = changed_settings

    if accelerator.is_main_process:
        staging = work_dir / "output"
        shutil.rmtree(staging, ignore_errors=True)
        embed_local_foundation(unwrapped, staging)
        # The checkpoint declares its pipeline, for pipeline(model=..., trust_remote_code=True) without cropd_hf
        # (transformers then asks for trust_remote_code for that pipeline even where cropd_hf is installed).
        RobustImageClassificationPipeline(
            model=unwrapped, image_processor=processor, device=unwrapped.device
        ).save_pretrained(staging)
        # What `--push_to_hub` / `cropd-push` verify before uploading: every weight file, the foundation's too.
        results["weights_sha256"] = weight_checksums(staging)
        write_report(
            staging,
            unwrapped.config,
            run,
            results,
            config_name=args.config.stem,
            command=reproduce_command(
                args.config,
                cpu_threads=torch.get_num_threads() if accelerator.device.type == "cpu" else 1,
                num_processes=accelerator.num_processes,
                mixed_precision=accelerator.mixed_precision,
                gradient_accumulation_steps=accelerator.gradient_accumulation_steps,
            ),
        )
        if dry_run:
            dry_run.mark(staging)
        if (work_dir / args.config.stem).is_dir():  # tensorboard logs belong with the model
            shutil.copytree(work_dir / args.config.stem, staging / "runs")
        replace_folder(staging, output_dir)
        if not args.keep_checkpoints:
            shutil.rmtree(work_dir)
        accuracies = {name: results[name] for name in ("clean", *results["attacks"])}
        accelerator.print(f"accuracy at ε = {run.eval_epsilon}: {format_metrics(accuracies)}; saved to {output_dir}")
        if args.push_to_hub:
            try:
                push_checkpoint(output_dir, args.hub_model_id, private=args.private)
            except PushError as error:  # the trained output stays where it is: say how to push it again
                raise RunConfigError(
                    f"{error}\nThe trained model is saved in {output_dir}; push it with `cropd-push {output_dir} "
                    f"--repo_id {args.hub_model_id}{' --private' * args.private}`."
                ) from None
    accelerator.wait_for_everyone()
    accelerator.end_training()


def train_one_epoch(
    accelerator: Accelerator,
    objective: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    run: RunConfig,
    stage: str,
    epoch: int,
) -> dict[str, float]:
    model = accelerator.unwrap_model(objective).model
    model.train()
    totals: dict[str, float] = {}
    bar = tqdm(loader, desc=f"{stage} epoch {epoch + 1}", disable=not accelerator.is_local_main_process, leave=False)
    for batch in bar:
        pixel_values, labels = random_shift(batch["pixel_values"], run.augment_max_shift), batch["labels"]
        adversarial = make_training_attack(model, pixel_values, labels, run, stage)
        if stage == "head" and run.head_training == "mixed":
            # Goodfellow et al.'s mixed objective: h sees each digit clean and attacked, with equal weight.
            pixel_values, labels, adversarial = torch.cat([pixel_values, adversarial]), labels.repeat(2), None
        # The warm start is stage 1 without its attack: reconstruction only.
        objective_stage = "head" if stage == "head" else "purifier"
        # Gradients add up over gradient_accumulation_steps batches (the loss is divided by that number); the
        # prepared optimizer and scheduler step, and DDP synchronizes, only on the last of them.
        with accelerator.accumulate(objective):
            output = objective(pixel_values, labels, adversarial_pixel_values=adversarial, stage=objective_stage)
            accelerator.backward(output.loss)
            if run.max_grad_norm is not None and accelerator.sync_gradients:
                # The contrastive loss at a low temperature has rare huge gradients that can saturate g's output.
                accelerator.clip_grad_norm_(objective.parameters(), run.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        for key, value in output.items():
            totals[key] = totals.get(key, 0.0) + value.detach().item()
        bar.set_postfix(loss=f"{output.loss.item():.4f}")
    averages = torch.tensor([totals[key] / len(loader) for key in sorted(totals)], device=accelerator.device)
    averages = accelerator.reduce(averages, reduction="mean")
    return dict(zip(sorted(totals), averages.tolist(), strict=True))


def make_training_attack(
    model: CRoPDForImageClassification,
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    run: RunConfig,
    stage: str,
) -> torch.Tensor | None:
    """The adversarial inputs a stage trains on, or None when it trains on clean inputs only."""
    config = model.config
    if stage == "reconstruction":
        return None
    if stage == "purifier":
        if config.contrastive_weight == 0 and config.adversarial_reconstruction_weight == 0:
            return None  # the plain auto-encoder baseline needs no attack
        return contrastive_adversarial_examples(model, pixel_values, labels)
    if run.head_training == "clean":
        return None
    alpha = config.train_step_size_for(run.head_attack_steps)
    if run.head_attack_steps == 1:
        attack = FGSM(eps=config.train_epsilon, alpha=alpha, random_start=True)
    else:
        attack = PGD(eps=config.train_epsilon, alpha=alpha, steps=run.head_attack_steps)
    return attack(model, pixel_values, labels)


def evaluation_settings(run: RunConfig, num_samples: int) -> EvaluationSettings:
    """The final evaluation's settings: `cropd_hf.evaluation`'s cheap suite at the run's ε (FGSM, PGD-k for each k of
    eval_pgd_steps with step 2.5·ε/k or eval_alpha, no APGD), its random starts seeded by the run's seed."""
    return quick_suite_settings(
        run.eval_epsilon,
        pgd_steps=tuple(run.eval_pgd_steps),
        pgd_alpha=run.eval_alpha,
        sanity_checks=run.eval_sanity_checks,
        batch_size=run.eval_batch_size,
        seed=run.seed,
        dataset=run.dataset,
        split=run.eval_split,
        data_seed=run.seed,
        validation_size=run.validation_size,
        num_samples=num_samples,
    )


def evaluate_trained_model(
    accelerator: Accelerator,
    model: CRoPDForImageClassification,
    dataset: Any,
    processor: CRoPDImageProcessor,
    run: RunConfig,
) -> dict[str, Any]:
    """Clean and robust accuracy, the suite's worst case, the sanity checks and the purifier's fidelity on the
    evaluation split, by `cropd_hf.evaluation.evaluate_model` (each process attacks its share of the batches, every
    process gets every number); keyed as in metrics.json."""
    if run.eval_num_samples is not None:
        dataset = dataset.select(range(min(run.eval_num_samples, len(dataset))))
    settings = evaluation_settings(run, len(dataset))
    result = evaluate_model(
        model, with_pixel_values(dataset, processor), settings, accelerator=accelerator, model_name="evaluation"
    )
    for check in result.failed_checks:
        logger.warning(
            f"!!! SANITY CHECK FAILED: {check.name}: {check.measured} (needs {check.threshold}). {check.note}",
            main_process_only=True,
        )
    at_epsilon = result.at(settings.reference_epsilon)
    return {
        "clean": result.clean_accuracy,
        **{attack.name: attack.accuracy for attack in at_epsilon.attacks},
        "worst_case": at_epsilon.worst_case_accuracy,
        "epsilon": run.eval_epsilon,
        "num_samples": result.num_samples,
        "split": run.eval_split,
        "dataset": run.dataset,
        "attacks": {attack.name: attack.settings for attack in at_epsilon.attacks},
        "fidelity": result.fidelity,
        "sanity_checks": [dataclasses.asdict(check) for check in result.sanity_checks],
    }


def embed_local_foundation(model: CRoPDForImageClassification, staging: Path) -> None:
    """A foundation model that is only a local folder travels inside the checkpoint, as `./foundation`: the
    checkpoint then loads wherever it is copied (a Hub id stays a reference)."""
    location = model.foundation_location()
    if not os.path.isdir(location):
        return
    target = staging / FOUNDATION_SUBFOLDER
    target.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        if (Path(location) / name).is_file():
            shutil.copyfile(Path(location) / name, target / name)
    model.config.foundation_model_name_or_path = f"./{FOUNDATION_SUBFOLDER}"


def warn_if_unfaithful(psnr: float, floor: float | None, where: str) -> None:
    if floor is not None and psnr < floor:
        logger.warning(
            f"!!! {where}: g(x) is {psnr:.1f} dB from x, below min_purifier_psnr = {floor} dB: g no "
            "longer reconstructs its input (a learned encoder, not a purifier). Raise model.reconstruction_weight or "
            "lower model.contrastive_weight.",
            main_process_only=True,
        )


def resolved_settings(run: RunConfig) -> dict[str, Any]:
    """Every setting of the run after `base:` inheritance and defaults, as plain JSON values."""
    return json.loads(json.dumps(dataclasses.asdict(run)))


def run_environment(accelerator: Accelerator) -> dict[str, Any]:
    """What a bit-for-bit re-run has to match: float rounding depends on the library versions, the CPU's vector
    instructions and the thread count, and the differences compound over training (README, "Reproducing")."""
    return {
        "python": platform.python_version(),
        **{name: importlib.metadata.version(name) for name in ("torch", "transformers", "accelerate", "datasets")},
        "device": accelerator.device.type,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "processes": accelerator.num_processes,
        "threads_per_process": torch.get_num_threads(),
    }


def format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{key} {value:.4f}" for key, value in metrics.items())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Our per-epoch lines at INFO; accelerate's per-file checkpoint chatter only when something is wrong.
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", level=logging.WARNING)
    logger.logger.setLevel(logging.INFO)
    logging.getLogger("cropd_hf.files").setLevel(logging.INFO)  # where a replaced output is kept meanwhile
    try:
        train(args)
    except RunConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
