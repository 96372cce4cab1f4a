"""The command line: ``cropd-eval`` / ``python -m cropd_hf.evaluation`` evaluates checkpoints, or merges the
``eval.json`` of evaluations made separately (``--merge``); ``--help`` prints the package's description."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import sys
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DATASET_NAMES, load_image_dataset, with_pixel_values
from .bpda import BPDA_SOURCE, StraightThroughPurifier
from .report import (
    EvaluationReport,
    _short_name,
    fidelity_summary,
    markdown_report,
    merge_reports,
    print_sanity_report,
    write_outputs,
)
from .runner import ResumeStateError, _fingerprint, evaluate_model
from .settings import ATTACK_NAMES, EvaluationSettings


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
        # The package's description, without its last paragraph (the package's modules).
        description=importlib.import_module(__package__).__doc__.split("\n\nThe package: ")[0],
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
    reference = parser.add_mutually_exclusive_group()
    reference.add_argument(
        "--transfer_from", help="reference model (the Identity baseline) for the white-box vs transfer check"
    )
    reference.add_argument(
        "--bpda",
        action="store_true",
        help="instead of a reference model, the evaluated model itself with its purifier's backward pass replaced "
        "by the identity (BPDA): the white-box PGD must be at least as strong as PGD through that gradient",
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
    """`cropd-eval` / `python -m cropd_hf.evaluation`: evaluate checkpoints; write eval.json, eval.md, plots."""
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
            transfer_from=BPDA_SOURCE if args.bpda else args.transfer_from,
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
        if args.bpda:
            try:
                transfer = StraightThroughPurifier(model)
            except ValueError as error:
                print(f"error: {name}: {error}", file=sys.stderr)
                raise SystemExit(2) from None
        key = _fingerprint(settings.to_dict(), name, model, processor.to_dict(), transfer)
        try:
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
        except ResumeStateError as error:
            if accelerator.is_main_process:
                print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        results.append(result)
        fidelity = fidelity_summary(result)
        accelerator.print(
            f"{name}: clean {result.clean_accuracy:.4f}, worst case "
            + ", ".join(f"ε={r.epsilon:.4g} {r.worst_case_accuracy:.4f}" for r in result.results)
            + (f"; {fidelity}" if fidelity else "")
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
