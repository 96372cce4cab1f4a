"""A strip of clean / attacked / purified digits for a CRoPD checkpoint: what its purifier does to an attack.

    python training/purification_strip.py --checkpoint training/checkpoints/embedded --output docs/strip.png

Rows: the clean digit x, the adversarial image x_adv (PGD-20 against the whole chain h(f(g(·))), ε = 0.1, random
start), and the purified image g(x_adv); each purified image's PSNR against the clean digit is printed.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cropd_hf import CRoPDForImageClassification, CRoPDImageProcessor
from cropd_hf.attacks import PGD
from cropd_hf.data import load_image_dataset, pixel_tensors
from cropd_hf.evaluation import psnr_from_mse

SCALE = 4  # native digits are 28 pixels a side: shown larger, with visible pixels


def strip(checkpoint: Path, num_digits: int, epsilon: float, steps: int) -> tuple[np.ndarray, list[float]]:
    model = CRoPDForImageClassification.from_pretrained(checkpoint).eval()
    size = {"height": model.config.image_size, "width": model.config.image_size}
    processor = CRoPDImageProcessor(size=size, num_channels=model.config.num_channels)
    digits = load_image_dataset("embedded-mnist")["test"].select(range(num_digits))
    clean, labels = pixel_tensors(digits, processor)
    torch.manual_seed(0)
    adversarial = PGD(eps=epsilon, alpha=2.5 * epsilon / steps, steps=steps)(model, clean, labels)
    with torch.no_grad():
        purified = model.purify(adversarial)
    psnrs = [psnr_from_mse((p - x).pow(2).mean().item()) for p, x in zip(purified, clean, strict=True)]
    rows = [torch.cat(list(images[:, 0]), dim=1) for images in (clean, adversarial, purified)]
    return torch.cat(rows, dim=0).clamp(0, 1).numpy(), psnrs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("training/checkpoints/embedded"))
    parser.add_argument("--output", type=Path, default=Path("docs/purification_strip.png"))
    parser.add_argument("--num_digits", type=int, default=8)
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    pixels, psnrs = strip(args.checkpoint, args.num_digits, args.epsilon, args.steps)
    image = Image.fromarray(np.round(pixels * 255).astype(np.uint8))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    image.resize((image.width * SCALE, image.height * SCALE), Image.Resampling.NEAREST).save(args.output)
    print(
        f"{args.output}: rows x | x_adv | g(x_adv); PSNR of g(x_adv) against x: " + ", ".join(f"{p:.1f}" for p in psnrs)
    )


if __name__ == "__main__":
    main()
