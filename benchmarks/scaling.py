"""Scaling of stage-1 training and PGD-20 evaluation with the number of images (issue 6, figure 4).

    python benchmarks/scaling.py           # embedded checkpoint, 1, 8, 32, 128 images; writes benchmarks/scaling.png
    python benchmarks/scaling.py --smoke   # tiny random model, 1, 8, 16 images, 1 repetition, no plot: seconds

Each row puts all its images in one batch and runs, on the embedded checkpoint (`training/checkpoints/embedded`):
- "stage-1": one CRoPD stage-1 step with `contrastive_features="foundation"`: `contrastive_adversarial_examples`
  (FGSM on L_con), `CRoPDTrainingObjective(stage="purifier")`, backward, AdamW on g (f frozen);
- "PGD-20": `cropd_hf.attacks.PGD` (ε = 0.1, α = 0.025, random start: `training/configs/embedded.yaml`'s evaluation),
  white-box on `h(f(g(x)))` in eval mode.
Stage 1 cannot run on 1 image: the checkpoint standardizes the contrastive features with the batch's own mean and
standard deviation (`standardize_contrastive_features`), which raises below 2 samples. Its smallest batch is 2.

Time: medians of runs interleaved across all rows (`_common.interleaved_medians`). Peak memory as in
`training_cost.py`: each row runs in a fresh subprocess that builds its model, runs once as a warm-up (optimizer
state, one-time allocations), resets the kernel's peak-RSS mark (`/proc/self/clear_refs`), runs once more and reads
`VmHWM` from `/proc/self/status`.

Verdict, per kind: time is linear in images when the time per image never rises by more than 25 % from one image
count to the next (constant or falling); memory has a jump when a segment between two image counts adds more than
2x the median per-image increment of the segments, plus 32 MiB of allocator noise.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import torch
from _common import EMBEDDED_CHECKPOINT, cropd_config, interleaved_medians, peak_rss_kib_of_second_run, save_foundation

from cropd_hf import CRoPDForImageClassification
from cropd_hf.attacks import PGD
from cropd_hf.losses import CRoPDTrainingObjective, contrastive_adversarial_examples

STAGE_1 = "stage-1"
PGD_20 = "PGD-20"
KINDS = (STAGE_1, PGD_20)
PGD_STEPS = 20
PGD_EPSILON = 0.1
PGD_ALPHA = 0.025
SMALLEST_TRAINING_BATCH = 2
IMAGE_COUNTS = [1, 8, 32, 128]
SMOKE_IMAGE_COUNTS = [1, 8, 16]
REFERENCE_IMAGES = 8
TIME_TOLERANCE = 1.25
MEMORY_JUMP_FACTOR = 2.0
MEMORY_NOISE_MIB = 32.0
DEFAULT_PLOT = Path(__file__).resolve().parent / "scaling.png"


@dataclass(frozen=True)
class Row:
    kind: str  # STAGE_1 or PGD_20
    images: int  # the batch: all images of the row go through in one call

    @property
    def name(self) -> str:
        return f"{self.kind} x {self.images}"


def rows_for(image_counts: list[int]) -> list[Row]:
    """Stage 1 runs the smallest count it can (2) where the count is below it; duplicates collapse."""
    training_counts = sorted({max(count, SMALLEST_TRAINING_BATCH) for count in image_counts})
    return [Row(STAGE_1, count) for count in training_counts] + [Row(PGD_20, count) for count in image_counts]


def build_run(row: Row, smoke: bool, foundation: str | None) -> Callable[[], None]:
    """A closure running the row once on a fixed batch, with its own model (and optimizer, for stage 1)."""
    torch.manual_seed(0)
    if smoke:
        model = CRoPDForImageClassification(cropd_config(foundation, smoke=True))
    else:
        model = CRoPDForImageClassification.from_pretrained(EMBEDDED_CHECKPOINT)
    config = model.config
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(row.images, config.num_channels, config.image_size, config.image_size, generator=generator)
    labels = torch.randint(0, config.num_labels, (row.images,), generator=generator)

    if row.kind == PGD_20:
        model.eval()
        attack = PGD(eps=PGD_EPSILON, alpha=PGD_ALPHA, steps=PGD_STEPS, random_start=True)
        return lambda: attack(model, images, labels)

    model.train()
    config.contrastive_features = "foundation"  # the figure's mode, whatever the checkpoint was trained with
    objective = CRoPDTrainingObjective(model)
    optimizer = torch.optim.AdamW([p for p in model.purifier.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        adversarial = contrastive_adversarial_examples(model, images, labels)
        objective(images, labels, adversarial, stage="purifier").loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def peak_rss_mib(row: Row, smoke: bool, foundation: str | None) -> float:
    """MiB: peak RSS of one run of `row`, in a fresh subprocess so no other row's memory is counted."""
    command = [sys.executable, __file__, "--memory-of", row.kind, str(row.images)]
    command += ["--smoke", "--foundation", foundation] if smoke else []
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(completed.stdout.strip().splitlines()[-1])


def time_verdict(rows: list[Row], seconds: dict[str, float]) -> str:
    per_image = {row: seconds[row.name] / row.images for row in rows}
    rises = [
        f"{before.images}->{after.images} x{per_image[after] / per_image[before]:.2f}"
        for before, after in pairwise(rows)
        if per_image[after] > TIME_TOLERANCE * per_image[before]
    ]
    first, last = rows[0], rows[-1]
    summary = (
        f"time per image {1000 * per_image[first]:.2f} ms at {first.images} -> {1000 * per_image[last]:.2f} ms at "
        f"{last.images} images"
    )
    if rises:
        return f"time SUPERLINEAR: {summary}; per-image time rises more than {TIME_TOLERANCE}x at {', '.join(rises)}"
    return f"time linear: {summary}; never rises more than {TIME_TOLERANCE}x from one count to the next"


def memory_verdict(rows: list[Row], memory: dict[str, float]) -> str:
    segments = [(before, after, memory[after.name] - memory[before.name]) for before, after in pairwise(rows)]
    typical = max(statistics.median(added / (after.images - before.images) for before, after, added in segments), 0.0)
    described = ", ".join(
        f"{before.images}->{after.images} {added / (after.images - before.images):.2f} MiB/image"
        for before, after, added in segments
    )
    jumps = [
        f"{before.images}->{after.images}"
        for before, after, added in segments
        if added > MEMORY_JUMP_FACTOR * typical * (after.images - before.images) + MEMORY_NOISE_MIB
    ]
    if jumps:
        return f"memory JUMP at {', '.join(jumps)}: {described}"
    return (
        f"memory linear, no jump (no segment above {MEMORY_JUMP_FACTOR}x the median + {MEMORY_NOISE_MIB:.0f} MiB): "
        f"{described}"
    )


def plot(rows: list[Row], seconds: dict[str, float], memory: dict[str, float], path: Path, title: str) -> None:
    # Imported here: the memory subprocesses would otherwise carry matplotlib in the resident set they measure.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(8, 3.2), dpi=100)
    for kind, color in zip(KINDS, ("#4c72b0", "#c44e52"), strict=True):
        kind_rows = [row for row in rows if row.kind == kind]
        images = [row.images for row in kind_rows]
        time_axis.plot(images, [1000 * seconds[row.name] / row.images for row in kind_rows], "o-", color=color)
        baseline = memory[kind_rows[0].name]
        memory_axis.plot(images, [memory[row.name] - baseline for row in kind_rows], "o-", color=color, label=kind)
    image_counts = sorted({row.images for row in rows})
    time_axis.set_xscale("log", base=2)
    time_axis.set_yscale("log")
    time_axis.set_xticks(image_counts, [str(count) for count in image_counts])
    time_axis.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    time_axis.yaxis.set_major_formatter(ScalarFormatter())
    time_axis.yaxis.set_minor_formatter(NullFormatter())
    time_axis.set_xlabel("images (one batch)")
    time_axis.set_ylabel("time per image (ms)")
    time_axis.set_title("flat or falling = linear time", fontsize=9)
    memory_axis.set_xlabel("images (one batch)")
    memory_axis.set_ylabel("peak RSS above smallest batch (MiB)")
    memory_axis.set_title("straight line = no memory jump", fontsize=9)
    memory_axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-counts", type=int, nargs="+", default=IMAGE_COUNTS)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--plot", type=Path, help=f"PNG to write (default: {DEFAULT_PLOT.name}; none with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiny random model, 1, 8, 16 images, 1 repetition")
    parser.add_argument("--foundation", help=argparse.SUPPRESS)  # internal: the subprocess of a memory measurement
    parser.add_argument("--memory-of", nargs=2, metavar=("KIND", "IMAGES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_of:
        row = Row(args.memory_of[0], int(args.memory_of[1]))
        print(peak_rss_kib_of_second_run(build_run(row, args.smoke, args.foundation)) / 1024)
        return
    image_counts = SMOKE_IMAGE_COUNTS if args.smoke else sorted(set(args.image_counts))
    if REFERENCE_IMAGES not in image_counts:
        parser.error(f"--image-counts must include {REFERENCE_IMAGES}, the reference of the per-image time ratios")
    if not args.smoke and not EMBEDDED_CHECKPOINT.is_dir():
        raise SystemExit(f"error: no embedded checkpoint at {EMBEDDED_CHECKPOINT}")
    repetitions = 1 if args.smoke else args.repetitions
    plot_path = args.plot if args.plot or args.smoke else DEFAULT_PLOT
    rows = rows_for(image_counts)

    with tempfile.TemporaryDirectory() as folder:
        foundation = save_foundation(Path(folder), smoke=True) if args.smoke else None
        memory = {row.name: peak_rss_mib(row, args.smoke, foundation) for row in rows}
        seconds = interleaved_medians({row.name: build_run(row, args.smoke, foundation) for row in rows}, repetitions)

    model_name = "tiny random model (--smoke)" if args.smoke else "embedded checkpoint"
    print(f"{model_name}, torch threads {torch.get_num_threads()}, medians over {repetitions} repetitions")
    if min(image_counts) < SMALLEST_TRAINING_BATCH:
        print(
            f"{STAGE_1}: smallest batch {SMALLEST_TRAINING_BATCH}, not 1: the standardized contrastive loss needs "
            f"{SMALLEST_TRAINING_BATCH} samples"
        )
    print(
        f"{'kind':8} {'images':>6} {'time s':>8} {'ms/image':>9} {f'vs {REFERENCE_IMAGES}':>6} "
        f"{'peak MiB':>9} {'+MiB':>7} {'+MiB/image':>10}"
    )
    for kind in KINDS:
        kind_rows = [row for row in rows if row.kind == kind]
        reference = seconds[Row(kind, REFERENCE_IMAGES).name] / REFERENCE_IMAGES
        smallest = kind_rows[0]
        for row in kind_rows:
            per_image = seconds[row.name] / row.images
            added = memory[row.name] - memory[smallest.name]
            added_per_image = f"{added / (row.images - smallest.images):10.2f}" if row != smallest else f"{'-':>10}"
            print(
                f"{kind:8} {row.images:6d} {seconds[row.name]:8.3f} {1000 * per_image:9.2f} "
                f"{per_image / reference:6.2f} {memory[row.name]:9.1f} {added:7.1f} {added_per_image}"
            )
    print("(+MiB: peak RSS above the kind's smallest batch; +MiB/image: that, per image added to it)")
    for kind in KINDS:
        kind_rows = [row for row in rows if row.kind == kind]
        print(f"{kind}: {time_verdict(kind_rows, seconds)}")
        print(f"{kind}: {memory_verdict(kind_rows, memory)}")
    if plot_path:
        plot(rows, seconds, memory, plot_path, f"CRoPD scaling, {model_name}, {torch.get_num_threads()} thread(s)")
        print(f"plot: {plot_path}")


if __name__ == "__main__":
    main()
