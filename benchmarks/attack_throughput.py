"""Attack evaluation throughput: PGD-20 on the embedded model and on the paper architecture (issue 6, figure 3).

    python benchmarks/attack_throughput.py           # embedded checkpoint and paper architecture, batch 8 each
    python benchmarks/attack_throughput.py --smoke   # embedded checkpoint at batch 2, tiny random paper stand-in

PGD-20 (ε = 8/255, α = 2/255, random start, `cropd_hf.attacks.PGD`) runs white-box on the whole chain
`h(f(g(x)))` in eval mode. Timed in turns with it: 21 plain forward+backward passes of the same chain (cross-entropy,
gradient w.r.t. the input only), which is the least any 20-step attack must do (20 gradient steps + the final
evaluation). Printed are images per second of PGD-20 and the ratio PGD-20 / 21 passes; target: at most 1.10.
"""

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import EMBEDDED_CHECKPOINT, interleaved_medians, paper_model

from cropd_hf import CRoPDForImageClassification
from cropd_hf.attacks import PGD

STEPS = 20
TARGET_RATIO = 1.10


def forward_backward(model: CRoPDForImageClassification, images: torch.Tensor, labels: torch.Tensor) -> None:
    """One plain pass of the attack's kind: logits, cross-entropy, gradient w.r.t. the input."""
    inputs = images.detach().requires_grad_(True)
    loss = F.cross_entropy(model(inputs).logits, labels)
    torch.autograd.grad(loss, inputs)


def measure(name: str, model: CRoPDForImageClassification, batch_size: int, repetitions: int) -> None:
    config = model.config
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, config.num_channels, config.image_size, config.image_size, generator=generator)
    labels = torch.randint(0, config.num_labels, (batch_size,), generator=generator)
    attack = PGD(eps=8 / 255, alpha=2 / 255, steps=STEPS, random_start=True)

    def passes() -> None:
        for _ in range(STEPS + 1):
            forward_backward(model, images, labels)

    seconds = interleaved_medians({"pgd": lambda: attack(model, images, labels), "passes": passes}, repetitions)
    ratio = seconds["pgd"] / seconds["passes"]
    verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
    print(
        f"{name}, batch {batch_size}: PGD-{STEPS} {seconds['pgd']:.3f} s = {batch_size / seconds['pgd']:.3f} images/s; "
        f"{STEPS + 1} forward+backward passes {seconds['passes']:.3f} s (medians over {repetitions} repetitions)"
    )
    print(f"{name}, batch {batch_size}: PGD-{STEPS} / {STEPS + 1} passes = {ratio:.3f}; {verdict} the 1.10 target")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedded-batch-size", type=int, default=8)
    parser.add_argument("--paper-batch-size", type=int, default=8)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--skip-paper", action="store_true", help="only the embedded model")
    parser.add_argument("--smoke", action="store_true", help="batch 2, 1 repetition, a tiny random paper stand-in")
    args = parser.parse_args(argv)
    if not EMBEDDED_CHECKPOINT.is_dir():
        raise SystemExit(f"error: no embedded checkpoint at {EMBEDDED_CHECKPOINT}")
    repetitions = 1 if args.smoke else args.repetitions

    embedded = CRoPDForImageClassification.from_pretrained(EMBEDDED_CHECKPOINT).eval()
    measure("embedded", embedded, 2 if args.smoke else args.embedded_batch_size, repetitions)
    if args.skip_paper:
        return
    with tempfile.TemporaryDirectory() as folder:
        paper = paper_model(Path(folder), args.smoke)
    name = "paper architecture (tiny random, --smoke)" if args.smoke else "paper architecture (vit-mae-large, 224)"
    measure(name, paper, 2 if args.smoke else args.paper_batch_size, repetitions)


if __name__ == "__main__":
    main()
