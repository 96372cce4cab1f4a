"""Training cost of CRoPD stage 1 against FGSM adversarial fine-tuning of the foundation model (issue 6, figure 2).

    python benchmarks/training_cost.py                 # paper architecture: g at 32x32, vit-mae-large at 224
    python benchmarks/training_cost.py --smoke         # tiny random models: seconds

One step of each method on the same batch of 32x32 images, same architecture:
- "AT": FGSM adversarial fine-tuning of the whole foundation model with a head, `h(f(x))`: FGSM (random start) on
  the cross-entropy, then cross-entropy on x_adv, backward through every weight of f and h, AdamW step.
- "CRoPD foundation" / "CRoPD purifier": one CRoPD stage-1 step for `contrastive_features="foundation"` /
  `"purifier"`: `contrastive_adversarial_examples` (FGSM on L_con), `CRoPDTrainingObjective`, backward, AdamW on g.
  f's weights need no gradients and have no optimizer state.
Variants show the effect of each technique torch and transformers give: eager vs SDPA attention in f, gradient
checkpointing of the frozen f (`CRoPDForImageClassification.train` lets f's layers checkpoint while f itself, and its
dropout, stay in eval mode), bf16 autocast (the CPU has avx512_bf16), and, for contrast, f's weights requiring
gradients as a naive implementation would leave them.

Time: medians of steps run in turns in this process. Peak memory: each variant runs in a fresh subprocess that builds
its models, runs one warm-up step (so optimizer state exists), resets the kernel's peak-RSS mark
(`/proc/self/clear_refs`), runs one step and reads the peak (`VmHWM` in `/proc/self/status`). That is the resident
set the step really needed: torch's CPU allocations, the weights, gradients and optimizer state (tracemalloc does not
see torch's allocations). Targets: "CRoPD foundation" at most 0.6x AT's time and 0.5x its peak memory; "CRoPD
purifier" at most 0.05x AT's time.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import cropd_config, interleaved_medians, peak_rss_kib_of_second_run, save_foundation

from cropd_hf import CRoPDForImageClassification
from cropd_hf.attacks import FGSM
from cropd_hf.losses import CRoPDTrainingObjective, contrastive_adversarial_examples

TARGET_FOUNDATION_TIME = 0.6
TARGET_FOUNDATION_MEMORY = 0.5
TARGET_PURIFIER_TIME = 0.05


@dataclass(frozen=True)
class Variant:
    method: str  # "AT", "foundation" or "purifier"
    attention: str = "sdpa"
    checkpointing: bool = False
    bf16: bool = False
    foundation_weight_grads: bool = False

    @property
    def name(self) -> str:
        method = "AT" if self.method == "AT" else f"CRoPD {self.method}"
        extras = [self.attention] + [
            label
            for label, on in (
                ("checkpointed f", self.checkpointing),
                ("bf16 autocast", self.bf16),
                ("f weights require grad", self.foundation_weight_grads),
            )
            if on
        ]
        return f"{method} ({', '.join(extras)})"


VARIANTS = [
    Variant("AT"),
    Variant("AT", bf16=True),
    Variant("foundation", attention="eager"),
    Variant("foundation", foundation_weight_grads=True),
    Variant("foundation"),
    Variant("foundation", checkpointing=True),
    Variant("foundation", bf16=True),
    Variant("foundation", checkpointing=True, bf16=True),
    Variant("purifier"),
    Variant("purifier", bf16=True),
]


@dataclass
class Trainee:
    """A model, its training objective and optimizer, shared by the variants of one method (f is 1.2 GB)."""

    model: CRoPDForImageClassification
    objective: CRoPDTrainingObjective
    optimizer: torch.optim.Optimizer


def build_trainee(method: str, foundation: str, smoke: bool) -> Trainee:
    """AT trains f and h; CRoPD trains g only (f frozen, no gradients, no optimizer state)."""
    torch.manual_seed(0)
    model = CRoPDForImageClassification(cropd_config(foundation, smoke, use_purifier=method != "AT")).train()
    if method == "AT":
        model.foundation.requires_grad_(True)
    trained = model.parameters() if method == "AT" else model.purifier.parameters()
    optimizer = torch.optim.AdamW([p for p in trained if p.requires_grad], lr=1e-4)
    return Trainee(model, CRoPDTrainingObjective(model), optimizer)


def build_step(variant: Variant, trainee: Trainee, batch_size: int) -> Callable[[], None]:
    """A closure running one training step of `variant` on a fixed batch; it sets the variant's switches each time."""
    model, config = trainee.model, trainee.model.config
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, config.num_channels, config.image_size, config.image_size, generator=generator)
    labels = torch.randint(0, config.num_labels, (batch_size,), generator=generator)
    attack = FGSM(eps=config.train_epsilon, random_start=True)

    def step() -> None:
        model.foundation.set_attn_implementation(variant.attention)
        if variant.checkpointing:
            model.foundation.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.foundation.activation_checkpointing_disable()
        model.train()  # CRoPDForImageClassification.train lets f's layers checkpoint while f stays in eval mode
        if variant.method != "AT":
            config.contrastive_features = variant.method
            model.foundation.requires_grad_(variant.foundation_weight_grads)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.bf16):
            if variant.method == "AT":
                adversarial = attack(model, images, labels)
                loss = model(adversarial, labels=labels).loss
            else:
                adversarial = contrastive_adversarial_examples(model, images, labels)
                loss = trainee.objective(images, labels, adversarial).loss
        loss.backward()
        trainee.optimizer.step()
        trainee.optimizer.zero_grad(set_to_none=True)
        # The naive variant's f gradients were resident at the peak, as AT's are; freed here, not accumulated.
        if variant.foundation_weight_grads:
            model.foundation.zero_grad(set_to_none=True)

    return step


def peak_memory_in_this_process(variant: Variant, foundation: str, smoke: bool, batch_size: int) -> float:
    """GiB: the peak resident set of one step, after a warm-up step."""
    trainee = build_trainee("AT" if variant.method == "AT" else "CRoPD", foundation, smoke)
    step = build_step(variant, trainee, batch_size)
    return peak_rss_kib_of_second_run(step) / 2**20


def peak_memory(variant: Variant, foundation: str, smoke: bool, batch_size: int) -> float:
    """GiB: peak RSS of one step of `variant`, in a fresh subprocess so no other variant's memory is counted."""
    command = [sys.executable, __file__, "--foundation", foundation, "--memory-of", json.dumps(variant.__dict__)]
    command += ["--batch-size", str(batch_size)] + (["--smoke"] if smoke else [])
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(completed.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny random models, batch 2, 1 repetition")
    parser.add_argument("--foundation", help=argparse.SUPPRESS)  # internal: the subprocess of a memory measurement
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_of:
        variant = Variant(**json.loads(args.memory_of))
        print(peak_memory_in_this_process(variant, args.foundation, args.smoke, args.batch_size))
        return
    repetitions = 1 if args.smoke else args.repetitions
    batch = 2 if args.smoke else args.batch_size

    with tempfile.TemporaryDirectory() as folder:
        foundation = save_foundation(Path(folder), args.smoke)
        memory = {variant: peak_memory(variant, foundation, args.smoke, batch) for variant in VARIANTS}
        trainees = {method: build_trainee(method, foundation, args.smoke) for method in ("AT", "CRoPD")}
        steps = {
            variant.name: build_step(variant, trainees["AT" if variant.method == "AT" else "CRoPD"], batch)
            for variant in VARIANTS
        }
        seconds = interleaved_medians(steps, repetitions)

    print(f"one training step, batch {batch}, medians over {repetitions} repetitions; peak RSS of the step")
    print(f"{'variant':58} {'time s':>8} {'peak GiB':>9} {'time/AT':>8} {'peak/AT':>8}")
    for variant in VARIANTS:
        # Ratios against AT (SDPA) with the same precision: bf16's effect on both sides is shown.
        reference = Variant("AT", bf16=variant.bf16)
        time_ratio = seconds[variant.name] / seconds[reference.name]
        memory_ratio = memory[variant] / memory[reference]
        print(
            f"{variant.name:58} {seconds[variant.name]:8.3f} {memory[variant]:9.2f} "
            f"{time_ratio:8.3f} {memory_ratio:8.3f}"
        )
    best_at = min(seconds[v.name] for v in VARIANTS if v.method == "AT")
    best_at_memory = min(memory[v] for v in VARIANTS if v.method == "AT")
    for method, time_target, memory_target in (
        ("foundation", TARGET_FOUNDATION_TIME, TARGET_FOUNDATION_MEMORY),
        ("purifier", TARGET_PURIFIER_TIME, None),
    ):
        candidates = [v for v in VARIANTS if v.method == method and not v.foundation_weight_grads]
        fastest = min(candidates, key=lambda v: seconds[v.name])
        leanest = min(candidates, key=lambda v: memory[v])
        time_ratio = seconds[fastest.name] / best_at
        met = time_ratio <= time_target
        line = f"CRoPD {method}: fastest {fastest.name} at {time_ratio:.3f}x the fastest AT (target {time_target})"
        if memory_target is not None:
            memory_ratio = memory[leanest] / best_at_memory
            met = met and memory_ratio <= memory_target
            line += f"; leanest {leanest.name} at {memory_ratio:.3f}x the leanest AT's peak (target {memory_target})"
        print(f"{line}; {'meets' if met else 'MISSES'} the target")


if __name__ == "__main__":
    main()
