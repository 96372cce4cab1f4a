"""Inference overhead of the purifier `g` against the foundation model `f` (issue 6, figure 1).

    python benchmarks/purifier_overhead.py           # paper architecture: g at 32x32, vit-mae-large at 224
    python benchmarks/purifier_overhead.py --smoke   # tiny random models: seconds

`g` is CRoPDConfig's default (the paper's CIFAR-10 purifier) at CIFAR's native 32x32; `f` is a `ViTMAEModel` with
facebook/vit-mae-large's configuration (random weights, mask ratio 0) at 224x224, reached through
`foundation_features` (resize + normalize + f + pooling), exactly as the composed model runs it. For batch 1 and 32,
inference (no gradients) of `g` and of `f` is timed in turns and FLOPs are counted with FlopCounterMode; printed are
the medians and `g` as a fraction of `f`. Target: at most 3 % in both time and FLOPs.
"""

import argparse
import tempfile
from pathlib import Path

import torch
from _common import count_flops, interleaved_medians, paper_model

TARGET_FRACTION = 0.03


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny random models, 2 repetitions")
    args = parser.parse_args(argv)
    repetitions = 2 if args.smoke else args.repetitions

    with tempfile.TemporaryDirectory() as folder:
        model = paper_model(Path(folder), args.smoke)
    config = model.config
    for batch_size in args.batch_sizes:
        images = torch.rand(batch_size, config.num_channels, config.image_size, config.image_size)
        with torch.inference_mode():
            runs = {
                "g": lambda images=images: model.purify(images),
                "f": lambda images=images: model.foundation_features(images),
            }
            flops = {name: count_flops(run) for name, run in runs.items()}
            seconds = interleaved_medians(runs, repetitions)
        time_fraction, flop_fraction = seconds["g"] / seconds["f"], flops["g"] / flops["f"]
        verdict = "meets" if max(time_fraction, flop_fraction) <= TARGET_FRACTION else "MISSES"
        print(
            f"batch {batch_size}: g {seconds['g'] * 1e3:.2f} ms, {flops['g'] / 1e9:.3f} GFLOPs; "
            f"f {seconds['f'] * 1e3:.2f} ms, {flops['f'] / 1e9:.3f} GFLOPs (medians over {repetitions} repetitions)"
        )
        print(
            f"batch {batch_size}: g/f time {time_fraction:.2%}, g/f FLOPs {flop_fraction:.2%}; "
            f"{verdict} the {TARGET_FRACTION:.0%} target"
        )


if __name__ == "__main__":
    main()
