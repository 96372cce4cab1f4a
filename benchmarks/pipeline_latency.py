"""Latency of one Space request: PGD-10 against both chains and the three predictions, on CPU.

    python benchmarks/pipeline_latency.py                  # the embedded checkpoint (the Space's default)
    python benchmarks/pipeline_latency.py --model FOLDER   # any CRoPD checkpoint, Hub id or folder
    python benchmarks/pipeline_latency.py --smoke          # a tiny random model built here: seconds

The request is what the Space sends: one image, `attack="pgd"`, 10 steps, the images returned. Each repetition
times it, in turns, with torch's default number of threads and with one thread, each next to a clean-only request
(one forward pass), so that the machine's load hits every setting alike; medians and ratios are printed. The
target is a request under 2 s on CPU.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import cropd_config, save_foundation
from transformers import AutoImageProcessor, AutoModelForImageClassification, Pipeline, pipeline

from cropd_hf import CRoPDForImageClassification, CRoPDImageProcessor

EMBEDDED_CHECKPOINT = Path(__file__).resolve().parents[1] / "training" / "checkpoints" / "embedded"


def load_pipeline(model: str) -> Pipeline:
    """The robust pipeline of a CRoPD checkpoint, built from the model object (no remote code with cropd_hf)."""
    classifier = AutoModelForImageClassification.from_pretrained(model)
    return pipeline(
        "robust-image-classification", model=classifier, image_processor=AutoImageProcessor.from_pretrained(model)
    )


TARGET_SECONDS = 2.0


def tiny_checkpoint(folder: Path) -> str:
    """A tiny random CRoPD model (8x8 grayscale) and its foundation model, saved under `folder`."""
    torch.manual_seed(0)
    config = cropd_config(save_foundation(folder, smoke=True), smoke=True, num_channels=1)
    CRoPDForImageClassification(config).save_pretrained(folder / "cropd")
    CRoPDImageProcessor(size={"height": 8, "width": 8}, num_channels=1).save_pretrained(folder / "cropd")
    return str(folder / "cropd")


def median_seconds(
    robust: Pipeline, image: np.ndarray, repetitions: int, thread_counts: list[int]
) -> dict[int, tuple[float, float]]:
    """Per thread count, the medians of the attacked request and of the clean-only one, all timed in turns."""
    times: dict[int, tuple[list[float], list[float]]] = {threads: ([], []) for threads in thread_counts}
    for _ in range(repetitions):
        for threads in thread_counts:
            torch.set_num_threads(threads)
            attacked, clean = times[threads]
            start = time.perf_counter()
            result = robust(image, attack="pgd", steps=10, return_images=True)
            attacked.append(time.perf_counter() - start)
            assert result["attacked_without_purifier"] is not None  # the work timed is the work asked for
            start = time.perf_counter()
            robust(image)
            clean.append(time.perf_counter() - start)
    return {threads: (statistics.median(a), statistics.median(c)) for threads, (a, c) in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(EMBEDDED_CHECKPOINT), help="CRoPD checkpoint (Hub id or folder)")
    parser.add_argument("--repetitions", type=int, default=7)
    parser.add_argument("--smoke", action="store_true", help="a tiny random model and 3 repetitions")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        model = tiny_checkpoint(Path(folder)) if args.smoke else args.model
        if not args.smoke and Path(model).resolve() == EMBEDDED_CHECKPOINT and not EMBEDDED_CHECKPOINT.is_dir():
            raise SystemExit(f"error: no embedded checkpoint at {EMBEDDED_CHECKPOINT}; pass --model or --smoke.")
        robust = load_pipeline(model)
        repetitions = 3 if args.smoke else args.repetitions
        config = robust.model.config
        image = np.random.default_rng(0).random((config.image_size, config.image_size, config.num_channels))
        robust(image, attack="pgd", steps=10)  # warm-up
        thread_counts = sorted({torch.get_num_threads(), 1}, reverse=True)
        medians = median_seconds(robust, image, repetitions, thread_counts)

    name = "tiny random (--smoke)" if args.smoke else model
    for threads, (attacked, clean) in medians.items():
        verdict = "under" if attacked < TARGET_SECONDS else "OVER"
        print(
            f"PGD-10 request (2 attacks + 3 predictions), {threads} torch thread{'s' if threads > 1 else ''}: "
            f"median {attacked:.3f} s over {repetitions} repetitions, {verdict} the {TARGET_SECONDS:.0f} s target; "
            f"clean-only request {clean:.3f} s; ratio {attacked / clean:.1f}x (model {name})"
        )


if __name__ == "__main__":
    main()
