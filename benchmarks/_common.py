"""Shared pieces of the benchmarks: the paper's architecture with random weights, tiny stand-ins for `--smoke`,
interleaved timing and FLOP counting."""

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import ViTMAEConfig, ViTMAEModel

from cropd_hf import CRoPDConfig, CRoPDForImageClassification, initialize_vit_mae_embeddings

REPO = Path(__file__).resolve().parents[1]
EMBEDDED_CHECKPOINT = REPO / "training" / "checkpoints" / "embedded"

# facebook/vit-mae-large's encoder (the Hub cannot be reached here: same architecture, random weights).
PAPER_FOUNDATION = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    image_size=224,
    patch_size=16,
    mask_ratio=0.0,
)
TINY_FOUNDATION = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=16, patch_size=4
)
TINY_PURIFIER = dict(
    image_size=8,
    patch_size=2,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    decoder_hidden_size=16,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=2,
    decoder_intermediate_size=32,
)


def save_foundation(folder: Path, smoke: bool) -> str:
    """Save a random `ViTMAEModel` under `folder`: vit-mae-large's architecture, or a tiny one for `--smoke`."""
    torch.manual_seed(0)
    foundation = ViTMAEModel(ViTMAEConfig(**(TINY_FOUNDATION if smoke else PAPER_FOUNDATION)))
    initialize_vit_mae_embeddings(foundation)
    foundation.save_pretrained(folder / "foundation")
    return str(folder / "foundation")


def cropd_config(foundation: str, smoke: bool, **overrides: object) -> CRoPDConfig:
    """The paper's CIFAR-10 purifier (CRoPDConfig's defaults, 32x32) in front of `foundation`; tiny for `--smoke`."""
    foundation_size = TINY_FOUNDATION["image_size"] if smoke else PAPER_FOUNDATION["image_size"]
    purifier = TINY_PURIFIER if smoke else {}
    return CRoPDConfig(
        **purifier,
        foundation_model_name_or_path=foundation,
        foundation_image_size=foundation_size,
        num_labels=10,
        **overrides,
    )


def paper_model(folder: Path, smoke: bool, **overrides: object) -> CRoPDForImageClassification:
    """`h(f(g(x)))` with the paper's `g` and `f` (random weights), in eval mode."""
    torch.manual_seed(0)
    return CRoPDForImageClassification(cropd_config(save_foundation(folder, smoke), smoke, **overrides)).eval()


def interleaved_medians(runs: dict[str, Callable[[], object]], repetitions: int) -> dict[str, float]:
    """Median seconds of each run; every repetition runs all of them in turn, so the machine's load hits each alike."""
    for run in runs.values():
        run()  # warm-up: one-time allocations and kernel selection are not what is measured
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repetitions):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def count_flops(run: Callable[[], object]) -> int:
    """FLOPs of one call of `run`, as torch's FlopCounterMode counts them (matmuls, convolutions, attention)."""
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def peak_rss_kib_of_second_run(run: Callable[[], object]) -> int:
    """KiB: this process's peak resident set during one call of `run`, after a warm-up call (optimizer state and
    one-time allocations then exist, as in a running loop). Linux only; call it in a fresh process per figure."""
    run()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets the peak-RSS mark VmHWM to the current RSS
    run()
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1])
